"""The native decode runtime (awqkit.model.decode_runtime): logits and greedy tokens against
the transformers path on the same reloaded model, for every architecture in its table, on
every ISA and thread count; the quantized output heads against their numpy definition."""

import numpy as np
import pytest
import torch

import awqkit
from awqkit.isa import amx_int8_active
from awqkit.model import load_quantized, save_quantized
from awqkit.model.decode_runtime import (
    DECODER_ARCHITECTURES,
    NativeDecoder,
    QuantizedHead,
    quantize_head,
    quantize_output_head,
)
from model_helpers import STORIES, stories_config

PROMPT = [1, 403, 407, 261, 378, 429, 50, 300, 11, 77, 5, 90, 111]


@pytest.fixture(scope="module")
def stories_ckpt(data_dir, tmp_path_factory):
    """stories260K, RTN 4-bit g32, reloaded on the fused kernel (its 172-wide MLP stays float)."""
    model, _ = awqkit.rtn_quantize_model(str(data_dir / STORIES), stories_config())
    out = tmp_path_factory.mktemp("decode") / "stories-rtn"
    save_quantized(model, out)
    return out


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        return model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0].tolist()


def test_logits_match_transformers(stories_ckpt, isa):
    model = load_quantized(stories_ckpt)
    ref = _hf_logits(model, PROMPT)
    dec = NativeDecoder(model, head="float", prefill="exact")
    got = dec.forward(PROMPT, all_logits=True)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # The same positions run incrementally (prefill, then one token at a time) give the same logits.
    dec.reset()
    rows = [dec.forward(PROMPT[:5], all_logits=True)] + [dec.forward([t]) for t in PROMPT[5:]]
    np.testing.assert_allclose(np.concatenate(rows), got, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert dec.length == len(PROMPT)


@pytest.mark.parametrize("head", ["float", "int8", "int4"])
def test_greedy_tokens_match_transformers(stories_ckpt, head):
    model = quantize_output_head(load_quantized(stories_ckpt), head)
    want = _hf_greedy(model, PROMPT[:3], 100)
    got = NativeDecoder(model, head=head).generate(PROMPT[:3], 100)
    assert got == want


def test_weights_are_held_once(stories_ckpt):
    """The model's INT4 layers move onto the decoder's buffer: the same bytes, shared, and the
    transformers path returns the same bits afterwards."""
    model = load_quantized(stories_ckpt)
    before = _hf_logits(model, PROMPT)
    q = model.model.layers[2].self_attn.q_proj.lin
    packed = q.packed.copy()
    dec = NativeDecoder(model)
    assert np.shares_memory(q.packed, dec._arena) and np.array_equal(q.packed[:-64], packed[:-64])
    np.testing.assert_array_equal(_hf_logits(model, PROMPT), before)


def test_results_do_not_depend_on_threads(stories_ckpt):
    model = load_quantized(stories_ckpt)
    dec = NativeDecoder(model)
    out = []
    for n in (1, 2, 3):
        with awqkit.use_threads(n):
            dec.reset()
            out.append(dec.forward(PROMPT * 4, all_logits=True))
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])


def test_isas_agree(stories_ckpt):
    model = load_quantized(stories_ckpt)
    dec = NativeDecoder(model)
    by_isa = {}
    for name in awqkit.available_isas():
        with awqkit.use_isa(name):
            dec.reset()
            by_isa[name] = dec.forward(PROMPT * 4, all_logits=True)
    ref = by_isa["scalar"]
    for name, got in by_isa.items():
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max(), err_msg=name)


def _tiny(model_type: str, tmp_path, **extra):
    """A random 2-layer model of a family (float), RTN-quantized, saved and reloaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
                               max_position_embeddings=256, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.2)
    q, _ = awqkit.rtn_quantize_model(model, awqkit.AWQConfig(bits=4, group_size=32))
    save_quantized(q, tmp_path / model_type)
    return load_quantized(tmp_path / model_type)


@pytest.mark.parametrize("model_type,extra", [
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 64}}),
    ("mistral", {}),
    ("qwen2", {}),  # q/k/v biases
    ("qwen3", {}),  # per-head q/k norms
])
def test_architectures(model_type, extra, tmp_path):
    assert model_type in DECODER_ARCHITECTURES
    model = _tiny(model_type, tmp_path, **extra)
    if model_type == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.lin.bias is not None
    ids = list(range(3, 200, 3))
    ref = _hf_logits(model, ids)
    dec = NativeDecoder(model, head="float", prefill="exact")
    got = dec.forward(ids, all_logits=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    assert dec.generate(ids[:20], 40) == _hf_greedy(model, ids[:20], 40)


def test_unfused_parts(tmp_path):
    """q/k whose widths are not whole 16-channel blocks run as separate calls, same result."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=96, intermediate_size=128, num_hidden_layers=1, num_attention_heads=12,
                      num_key_value_heads=3, head_dim=8, vocab_size=64, max_position_embeddings=64)  # k, v: 24 wide
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    q, _ = awqkit.rtn_quantize_model(model, awqkit.AWQConfig(bits=4, group_size=32))
    save_quantized(q, tmp_path / "m")
    model = load_quantized(tmp_path / "m")
    ids = list(range(1, 40))
    ref = _hf_logits(model, ids)
    dec = NativeDecoder(model, head="float", prefill="exact")
    assert [call[1] for call in dec.linear_calls] == [96, 24, 24, 96, 256, 96]  # q, k, v apart; gate|up fused
    np.testing.assert_allclose(dec.forward(ids, all_logits=True), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_in_memory_quantized_model(data_dir):
    """The pipeline's own output (QuantizedLinear, dequantized weights) runs as float linears."""
    model, _ = awqkit.rtn_quantize_model(str(data_dir / STORIES), stories_config())
    ref = _hf_logits(model, PROMPT)
    got = NativeDecoder(model, head="float").forward(PROMPT, all_logits=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("prefill,tol", [("int16", 2e-3), ("int8", 0.1), ("auto", 2e-3)])
def test_prefill_modes(stories_ckpt, prefill, tol):
    """Prompts of 16 tokens or more may take 16- or 8-bit activations; decode steps stay exact."""
    model = load_quantized(stories_ckpt)
    ids = PROMPT * 3
    # The int8 head runs on the INT4 kernel, whose rows do not depend on the batch (torch's float head's do).
    exact = NativeDecoder(model, head="int8", prefill="exact").forward(ids, all_logits=True)
    dec = NativeDecoder(model, head="int8", prefill=prefill)
    got = dec.forward(ids, all_logits=True)
    np.testing.assert_allclose(got, exact, rtol=0, atol=tol * np.abs(exact).max())
    dec.reset()
    dec.forward(ids[:15])  # fewer than 16 rows: exact
    np.testing.assert_array_equal(dec.forward([ids[15]]), exact[15:16])
    # With AMX tiles, or without VNNI, "auto" is exact.
    if prefill == "auto" and (amx_int8_active() or awqkit.active_isa() != "avx512_vnni"):
        np.testing.assert_array_equal(got, exact)


def test_int8_head_is_per_channel_int8():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 64)).astype(np.float32) * rng.uniform(0.01, 3, (96, 1)).astype(np.float32)
    w[5] = 0.0
    head = quantize_head(w, "int8")
    s = (np.abs(w).max(axis=1) / 127).astype(np.float16).astype(np.float64)
    s[5] = 1.0
    q = np.clip(np.rint(w / s.astype(np.float32)[:, None]), -127, 127)
    wq = q * s[:, None]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    got = head.logits(x)
    ref = x.astype(np.float64) @ wq.T
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(x).max() * np.abs(wq).sum(axis=1).max())
    # And it is close to the float head: int8 per channel loses at most half a step per weight.
    np.testing.assert_allclose(got, x @ w.T, rtol=0, atol=0.5 * (s[:, None] * np.abs(x).sum(axis=1)).max())


def test_int4_head_and_torch_module():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    head = quantize_head(torch.from_numpy(w), "int4")
    assert isinstance(head, QuantizedHead) and head.lin.group_size == 32
    qt = awqkit.quantize(w, bits=4, group_size=32)
    x = rng.standard_normal((2, 5, 96)).astype(np.float32)
    out = head(torch.from_numpy(x))
    assert out.shape == (2, 5, 64)
    np.testing.assert_allclose(out.numpy(), x @ awqkit.dequantize(qt).T, rtol=1e-5, atol=1e-4)


def test_load_quantized_head_option(stories_ckpt):
    model = load_quantized(stories_ckpt, head="int8")
    assert isinstance(model.lm_head, QuantizedHead)
    # The tied input embedding is untouched.
    ref = load_quantized(stories_ckpt)
    assert torch.equal(model.get_input_embeddings().weight, ref.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="head must be one of"):
        load_quantized(stories_ckpt, head="int3")


def test_refusals(stories_ckpt, data_dir):
    model = load_quantized(stories_ckpt)
    with pytest.raises(ValueError, match="head must be one of"):
        NativeDecoder(model, head="bf16")
    with pytest.raises(ValueError, match="prefill must be one of"):
        NativeDecoder(model, prefill="fp8")
    dec = NativeDecoder(model, context=16)
    with pytest.raises(ValueError, match="do not fit"):
        dec.forward(list(range(1, 18)))
    with pytest.raises(ValueError, match="exceed the context"):
        dec.generate([1, 2], 15)
    with pytest.raises(ValueError, match="token ids"):
        dec.forward([600])
    with pytest.raises(ValueError, match="context must be"):
        NativeDecoder(model, context=100000)
    model.config.hidden_act = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        NativeDecoder(model)
    model.config.hidden_act = "silu"
    model.config.model_type = "gemma"
    with pytest.raises(ValueError, match="no native decoder"):
        NativeDecoder(model)


def test_cli_generate(stories_ckpt, capsys):
    import json

    from awqkit.cli import main

    assert main(["generate", str(stories_ckpt), "Once upon a time", "--max-new-tokens", "12", "--ignore-eos", "--threads", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    stats = json.loads(out[-1])
    assert stats["new_tokens"] == 12 and stats["head"] == "int8" and stats["decode_tok_s"] > 0
    assert out[0].startswith("Once upon a time")
