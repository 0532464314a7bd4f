"""The methods registry (awqkit.quant_methods) in the pipeline: GPTQ, AWQ+GPTQ and the imatrix
range search on stories260K, each writing a checkpoint that loads, with GPTQ's codes equal to
the numpy API's on the captured inputs."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import awqkit
from awqkit.gptq import gptq_quantize
from awqkit.model import load_quantized, method_stages, quantize_model, quantize_to_checkpoint, save_quantized
from awqkit.quant_methods import METHODS, QuantMethod, method_named, register_method
from model_helpers import STORIES, checkpoint_tensors, stories_config

pytestmark = pytest.mark.shared_data

_QUANTIZING = [m for m, spec in METHODS.items() if spec.quantizes]


@pytest.fixture(scope="module")
def stories(data_dir):
    from awqkit.model import load_model

    model, tok = load_model(data_dir / STORIES)
    return model, tok


def _run(stories, method, **cfg_kw):
    import copy

    model, tok = stories
    cfg = stories_config(n_samples=8, seqlen=128, **cfg_kw)
    return quantize_model(copy.deepcopy(model), cfg, tokenizer=tok, method=method)


@pytest.mark.parametrize("method", _QUANTIZING)
def test_every_method_writes_a_checkpoint_that_reloads_to_the_same_logits(stories, method, tmp_path):
    model, report = _run(stories, method)
    assert report.method == method and report.quantized_layers > 0
    save_quantized(model, tmp_path / "q")
    ids = torch.arange(1, 33).view(1, -1)
    with torch.no_grad():
        want = model(ids).logits
        got = load_quantized(tmp_path / "q")(ids).logits
    assert torch.allclose(got, want, atol=2e-3, rtol=2e-3)
    if METHODS[method].calibrated:
        assert all(b["method"] == method for b in report.block_errors)


def test_gptq_lowers_every_block_error_below_plain_rounding(stories):
    for method in ("gptq", "awq+gptq"):
        _, report = _run(stories, method)
        assert report.summary()["block_error_over_rtn"] < 0.8
        assert len(report.gptq) == report.quantized_layers
        assert all(g["damp"] == 0.01 and g["loss"] >= 0 for g in report.gptq)


def test_pipeline_gptq_rounds_what_the_numpy_api_rounds(stories):
    """Block 0's q_proj (the first stage, so the same inputs with or without true-sequential):
    the stored codes are gptq_quantize's on the q_proj inputs of the calibration tokens."""
    from awqkit.model.calibration import get_calib_blocks

    model, tok = stories
    cfg = stories_config(n_samples=8, seqlen=128)
    tokens = get_calib_blocks(tok, None, cfg.n_samples, cfg.seqlen, cfg.seed)
    lin = model.model.layers[0].self_attn.q_proj
    seen = []
    h = lin.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        model(tokens)
    h.remove()
    res = gptq_quantize(lin.weight.detach().numpy(), torch.cat(seen).numpy(), group_size=32)
    qmodel, _ = _run(stories, "gptq", block_fallback=False)
    deq = qmodel.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    np.testing.assert_array_equal(deq, res.quantized.dequantize())


def test_true_sequential_recaptures_the_later_inputs(stories):
    _, seq = _run(stories, "gptq", block_fallback=False)
    _, flat = _run(stories, "gptq", block_fallback=False, gptq_true_sequential=False)
    q = [g["loss"] for g in seq.gptq if g["layer"].endswith("q_proj")]
    assert q == [g["loss"] for g in flat.gptq if g["layer"].endswith("q_proj")]  # first stage: same inputs
    o_seq = [g["loss"] for g in seq.gptq if g["layer"].endswith("o_proj")]
    o_flat = [g["loss"] for g in flat.gptq if g["layer"].endswith("o_proj")]
    assert o_seq != o_flat  # o_proj's inputs came from the rounded q/k/v
    assert seq.stages["capture"]["calls"] > flat.stages["capture"]["calls"]


def test_act_order_and_static_groups_reload(stories, tmp_path):
    model, report = _run(stories, "gptq", gptq_act_order=True)
    save_quantized(model, tmp_path / "q")
    ids = torch.arange(1, 17).view(1, -1)
    with torch.no_grad():
        assert torch.allclose(load_quantized(tmp_path / "q")(ids).logits, model(ids).logits, atol=2e-3, rtol=2e-3)


def test_gptq_streams_to_the_bytes_of_the_in_memory_path(data_dir, tmp_path):
    cfg = stories_config(n_samples=8, seqlen=128)
    model, _ = quantize_model(data_dir / STORIES, cfg, method="awq+gptq")
    save_quantized(model, tmp_path / "mem")
    quantize_to_checkpoint(data_dir / STORIES, tmp_path / "disk", cfg, method="awq+gptq", activations="disk")
    a, b = checkpoint_tensors(tmp_path / "mem"), checkpoint_tensors(tmp_path / "disk")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_method_that_cannot_round_for_the_format_is_refused_before_any_work(data_dir):
    cfg = stories_config(format="gguf", group_size=32, zero_point=False)
    for method in ("gptq", "awq+gptq", "imatrix"):
        with pytest.raises(ValueError, match=re.escape(f"method '{method}' cannot round for the gguf format's q4_0")):
            quantize_model(data_dir / STORIES, cfg, method=method)
    with pytest.raises(ValueError, match="method must be one of 'rtn', 'awq', 'gptq'"):
        quantize_model(data_dir / STORIES, stories_config(), method="gptq2")


def test_the_registry_and_the_stage_tables_agree():
    assert set(method_stages.RANGE_SEARCHES) == set(awqkit.quant_methods.RANGE_SEARCHES)
    assert set(method_stages.ROUNDINGS) == set(awqkit.quant_methods.ROUNDINGS)
    for spec in METHODS.values():
        assert spec.ranges in method_stages.RANGE_SEARCHES and spec.rounding in method_stages.ROUNDINGS
    assert method_named("awq+gptq").calibrated and not method_named("rtn").calibrated
    with pytest.raises(ValueError, match="already registered"):
        register_method(QuantMethod("gptq", "again"))
    with pytest.raises(ValueError, match="unknown stage"):
        register_method(QuantMethod("x", "typo", ranges="clips"))
    assert "x" not in METHODS


def test_config_checks_the_gptq_settings():
    for bad in ({"gptq_damp": 0.0}, {"gptq_damp": 2.0}, {"gptq_damp": True}, {"gptq_block_size": 0},
                {"gptq_act_order": "yes"}, {"gptq_true_sequential": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            awqkit.AWQConfig(**bad)
