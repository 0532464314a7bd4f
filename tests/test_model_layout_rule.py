"""One layout rule (awqkit.layout) for the config, the pipeline, the writer, the loader and
the kernels: every group size either fails before any work or gives a checkpoint that
loads, a run that would quantize nothing is an error, and reports never hold NaN."""

import json

import numpy as np
import pytest

import awqkit
from awqkit.cli import main
from awqkit.model import load_quantized
from awqkit.model.report import QuantizationReport
from model_helpers import STORIES


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("n, k", [(16, 64), (12, 64), (16, 172), (8, 24), (24, 40)])
@pytest.mark.parametrize("group_size", [-1, 4, 7, 8, 16, 32, 64])
def test_the_rule_is_what_packing_and_the_kernels_accept(n, k, group_size):
    from awqkit.layout import gemm_layout_problem

    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32)
    try:
        packed = awqkit.pack_awq(awqkit.quantize(w, bits=4, group_size=group_size))
        awqkit.PackedLinear.from_awq(packed["qweight"], packed["qzeros"], packed["scales"], group_size)
        runs = True
    except ValueError:
        runs = False
    assert runs == (gemm_layout_problem(n, k, group_size) is None), gemm_layout_problem(n, k, group_size)


@pytest.mark.parametrize("group_size", [4, 7, 12, 0, -2])
def test_config_refuses_group_sizes_that_never_fit(group_size):
    with pytest.raises(ValueError, match="group_size must be -1 .* or a positive multiple of 8"):
        awqkit.AWQConfig(group_size=group_size)


# stories260K: q/k/v/o are [64|32, 64], gate/up [172, 64], down [64, 172].
@pytest.mark.parametrize("group_size, quantized", [(-1, 20), (4, None), (7, None), (32, 20), (128, None)])
def test_every_group_size_fails_early_or_loads(data_dir, tmp_path, capsys, group_size, quantized):
    out = tmp_path / "q"
    rc = None
    try:
        rc = main(["quantize", str(data_dir / STORIES), "--out", str(out), "--group-size", str(group_size), "--method", "rtn"])
    except SystemExit as e:  # argparse refuses the value
        rc = e.code
    stdout, err = capsys.readouterr()
    if quantized is None:
        assert rc == 2 and "group_size" in err and not out.exists(), (rc, err)
        return
    assert rc == 0, err
    summary = _strict_json(stdout)
    assert summary["quantized_layers"] == quantized
    report = _strict_json((out / "awq_report.json").read_text())
    assert report["quantized_layers"] == quantized
    model = load_quantized(out)
    assert sum(type(m).__name__ == "AWQLinear" for m in model.modules()) == quantized


def test_a_run_that_quantizes_nothing_is_an_error(data_dir):
    model, _ = awqkit.model.load_model(data_dir / STORIES)
    cfg = awqkit.AWQConfig(bits=4, group_size=32, modules_to_not_convert=["proj"])
    with pytest.raises(ValueError, match="none of the 35 linears"):
        awqkit.rtn_quantize_model(model, cfg)


def test_reports_never_hold_nan():
    report = QuantizationReport(method="rtn", config=awqkit.AWQConfig().to_dict())
    assert report.summary() == {"block_error_over_rtn": None, "blocks_kept_rtn": None, "mean_awq_over_rtn": None,
                                "mean_clip_after_over_before": None}
    report.clip.append({"block": 0, "layer": "mlp.up_proj", "loss_before": float("nan"), "loss_after": 1.0})
    with pytest.raises(ValueError, match=r"report\['clip'\]\[0\]\['loss_before'\] = nan is not a finite number"):
        report.to_json()


def test_loader_applies_the_rule(data_dir, tmp_path):
    model, _ = awqkit.model.load_model(data_dir / STORIES)
    q, _ = awqkit.rtn_quantize_model(model, awqkit.AWQConfig(bits=4, group_size=32))
    out = tmp_path / "q"
    awqkit.save_quantized(q, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"]["group_size"] = 4
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quantization_config: group_size must be -1"):
        load_quantized(out)
