"""Smoke tests of `awqkit quantize`, `awqkit eval` and `awqkit footprint`."""

import json
import re
import subprocess
import sys

from awqkit.cli import main


def _run(capsys, *argv):
    rc = main(list(map(str, argv)))
    return rc, capsys.readouterr().out


def test_footprint_from_headers_and_config(data_dir, capsys):
    model = data_dir / "stories260K-hf"
    rc, out = _run(capsys, "footprint", model, "--bits", "4", "--group-size", "32", "--json")
    fp = json.loads(out)
    assert rc == 0 and fp["source"] == "safetensors headers" and fp["params"] == 260_032
    # q/k/v/o of 5 blocks: 5 * (64*64*2 + 32*64*2) = 61,440 parameters are quantizable
    assert fp["quantized_params"] == 61_440 and fp["bytes_after"] < fp["bytes_before"]
    rc, out2 = _run(capsys, "footprint", model / "config.json", "--bits", "4", "--group-size", "32", "--json")
    assert json.loads(out2)["params"] == 260_032 and json.loads(out2)["source"] == "config.json"
    rc, out = _run(capsys, "footprint", model, "--group-size", "32", "--memory", "100KB")
    assert rc == 1 and "fits in" in out and ": no" in out
    rc, out = _run(capsys, "footprint", model, "--group-size", "32", "--memory", "8GB")
    assert rc == 0 and ": yes" in out


def test_quantize_then_eval(data_dir, tmp_path, capsys):
    out_dir = tmp_path / "q"
    rc, out = _run(capsys, "quantize", data_dir / "stories260K-hf", "--out", out_dir, "--group-size", "32",
                   "--n-samples", "16", "--seqlen", "128", "--calib", data_dir / "c4-validation" / "c4_validation_2k.jsonl")
    assert rc == 0, out
    summary = json.loads(out)
    assert summary["quantized_layers"] == 20 and summary["not_converted"] == 15
    assert (out_dir / "config.json").is_file() and (out_dir / "awq_report.json").is_file()
    rc, out = _run(capsys, "eval", out_dir, "--text", data_dir / "tinystories" / "tinystories_sample.txt", "--seqlen", "128")
    assert rc == 0 and 1.0 < json.loads(out)["perplexity"] < 20


def test_bad_input_is_a_clean_error(tmp_path, capsys):
    rc = main(["footprint", str(tmp_path / "nothing")])
    assert rc == 2 and "awqkit: error" in capsys.readouterr().err


def test_python_m_awqkit_lists_the_model_commands():
    out = subprocess.run([sys.executable, "-m", "awqkit", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("quantize", "eval", "footprint"):
        assert cmd in out


def test_demo_is_the_whole_pipeline(data_dir, tmp_path, capsys):
    """`make demo`'s command: footprint, AWQ, checkpoint, reload, generation, perplexity."""
    out = tmp_path / "demo-ckpt"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "footprint:" in text and "quantized 20 linears" in text
    assert "Once upon a time, there was" in text  # the reloaded 4-bit model still tells the story
    rows = re.findall(r"^  (full|RTN|AWQ) .*?([0-9.]+)$", text, flags=re.M)
    ppl = {name: float(v) for name, v in rows}
    assert len(ppl) == 3
    assert ppl["full"] < ppl["AWQ"] < ppl["RTN"]
    assert (out / "config.json").is_file() and (out / "awq_report.json").is_file()


def test_demo_layers_only_needs_no_torch_path(capsys):
    assert main(["demo", "--layers-only"]) == 0
    assert "rel. RMS err" in capsys.readouterr().out
