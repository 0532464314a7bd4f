"""`awqkit compare` (awqkit.model.method_comparison) end to end on stories260K: one CLI run with
RTN and AWQ at 4 and 3 bits, an existing checkpoint as an extra row, two prompts; its numbers
checked against evaluate_perplexity, and its argument errors checked to come before any work."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import awqkit
from awqkit.cli import main
from model_helpers import STORIES

GROUP, N_SAMPLES, CALIB_SEQLEN = 32, 16, 128  # 12 calibration blocks of 128 tokens
SEQLEN, EVAL_TOKENS = 128, 256  # two windows per text
TEXTS = ("tinystories/tinystories_sample.txt", "general-english/frankenstein.txt")
PROMPTS = ["Once upon a time", "The little dog"]


@contextlib.contextmanager
def _one_thread():
    """One torch thread: a 260K-parameter model gains nothing from a second one, and torch's
    thread pool slows its one-token decode steps many times over on a machine shared with other
    jobs. The reference numbers below are computed the same way (same thread count, same bits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cfg(bits: int) -> awqkit.AWQConfig:
    return awqkit.AWQConfig(bits=bits, group_size=GROUP, n_samples=N_SAMPLES, seqlen=CALIB_SEQLEN)


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """The CLI run every test below reads: its stdout, its JSON, and the files it was given."""
    from awqkit.model import load_model, quantize_model, save_quantized

    tmp = tmp_path_factory.mktemp("compare")
    model, tok = load_model(data_dir / STORIES)
    qmodel, report = quantize_model(model, _cfg(4), method="rtn")
    extra = tmp / "rtn-ckpt"
    save_quantized(qmodel, str(extra), tokenizer=tok, report=report)
    (extra / "run.json").write_text(json.dumps({"oneshot_seconds": 1.5, "peak_rss_mb": 321.0}))
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    texts = [data_dir / t for t in TEXTS]
    out_json, calib_npy = tmp / "cmp.json", tmp / "calib.npy"
    argv = ["compare", data_dir / STORIES, "--methods", "rtn,awq", "--bits", "4,3", "--group-size", GROUP,
            "--calib", data_dir / "c4-validation" / "c4_validation_2k.jsonl", "--n-samples", N_SAMPLES,
            "--calib-seqlen", CALIB_SEQLEN, "--eval-text", ",".join(map(str, texts)), "--seqlen", SEQLEN,
            "--eval-tokens", EVAL_TOKENS, "--prompts", prompts, "--max-new-tokens", 6, "--extra", f"mine={extra}",
            "--json", out_json, "--save-calib", calib_npy]
    stdout = io.StringIO()
    with _one_thread(), contextlib.redirect_stdout(stdout):
        rc = main([str(a) for a in argv])
    return {"rc": rc, "out": stdout.getvalue(), "json": json.loads(out_json.read_text()), "texts": texts,
            "calib": calib_npy, "extra": extra}


def _rows(run) -> dict[str, dict]:
    return {r["name"]: r for r in run["json"]["rows"]}


def test_every_row_and_metric_is_in_the_json(run):
    assert run["rc"] == 0, run["out"]
    rows = _rows(run)
    assert list(rows) == ["fp", "rtn w4", "awq w4", "rtn w3", "awq w3", "mine"]
    labels = [Path(t).stem for t in TEXTS]
    for r in rows.values():
        assert r["error"] is None
        assert set(r["ppl"]) == set(r["kld_per_text"]) == set(r["top1_per_text"]) == set(labels)
        assert all(math.isfinite(v) and v > 1 for v in r["ppl"].values())
        assert len(r["outputs"]) == len(PROMPTS) and all(isinstance(o, str) for o in r["outputs"])
    d = run["json"]
    assert d["prompts"] == PROMPTS and d["config"]["methods"] == ["rtn", "awq"] and d["config"]["bits"] == [4, 3]
    assert d["environment"]["cpu"] and d["environment"]["torch_threads"] >= 1
    assert [t["windows"] for t in d["eval_texts"]] == [EVAL_TOKENS // SEQLEN] * 2
    assert all(t["positions_scored"] == 2 * (SEQLEN - 1) for t in d["eval_texts"])
    assert d["calib"]["tokens"] == d["calib"]["shape"][0] * CALIB_SEQLEN > 0
    for name in ("rtn w4", "awq w4", "rtn w3", "awq w3"):
        r = rows[name]
        assert r["kld"] > 0 and 0.5 < r["top1"] < 1 and r["seconds"] >= 0 and r["peak_rss_mb"] > 0
        assert r["rss_before_mb"] > 0 and r["peak_delta_mb"] is not None and r["ru_maxrss_mb"] > 0
        assert r["quantized_layers"] == 20
        assert set(r["gap_closed"]) == set(labels)
    # RTN is the reference of its width (a text where it is not worse than fp has no gap: None).
    assert all(v in (0, None) for v in rows["rtn w4"]["gap_closed"].values())
    assert rows["rtn w4"]["gap_closed"]["tinystories_sample"] == 0
    ppl = {n: rows[n]["ppl"]["tinystories_sample"] for n in ("fp", "rtn w3", "awq w3")}
    assert rows["awq w3"]["gap_closed"]["tinystories_sample"] == pytest.approx(
        (ppl["rtn w3"] - ppl["awq w3"]) / (ppl["rtn w3"] - ppl["fp"]))
    # Size as saved: the AWQ gemm format holds 4-bit only, so 3-bit rows say why there is none.
    assert rows["rtn w4"]["size_bytes"] == rows["awq w4"]["size_bytes"] < rows["fp"]["size_bytes"]
    assert rows["rtn w3"]["size_bytes"] is None and "4-bit" in rows["rtn w3"]["size_note"]
    # More bits, closer to full precision.
    for m in ("rtn", "awq"):
        assert rows[f"{m} w4"]["kld"] < rows[f"{m} w3"]["kld"]


def test_fp_row_is_the_reference(run, data_dir):
    from awqkit.model import load_model

    fp = _rows(run)["fp"]
    assert fp["kld"] == 0 and fp["top1"] == 1.0 and fp["bits"] == 32
    assert all(v == 0 for v in fp["kld_per_text"].values()) and all(v == 1 for v in fp["top1_per_text"].values())
    model, tok = load_model(data_dir / STORIES)
    with _one_thread():
        for text in run["texts"]:
            assert fp["ppl"][text.stem] == awqkit.evaluate_perplexity(model, tok, text, seqlen=SEQLEN, max_tokens=EVAL_TOKENS)
        # The float model's greedy outputs, continuation only.
        ids = tok(PROMPTS[0], return_tensors="pt").input_ids
        full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    assert fp["outputs"][0] == tok.decode(full[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_quantized_ppl_equals_evaluate_perplexity(run, data_dir, method):
    """The same quantization (the saved calibration tokens) evaluated by evaluate_perplexity."""
    from awqkit.model import load_model, quantize_model

    tokens = np.load(run["calib"])
    assert tokens.dtype == np.int64 and tokens.shape[1] == CALIB_SEQLEN
    model, tok = load_model(data_dir / STORIES)
    row = _rows(run)[f"{method} w4"]
    with _one_thread():
        qmodel, _ = quantize_model(model, _cfg(4), calib=torch.from_numpy(tokens), tokenizer=tok, method=method)
        for text in run["texts"]:
            assert row["ppl"][text.stem] == awqkit.evaluate_perplexity(qmodel, tok, text, seqlen=SEQLEN, max_tokens=EVAL_TOKENS)


def test_extra_checkpoint_row(run):
    """An awqkit RTN checkpoint reloaded on the fused kernel: the RTN row's weights, size and
    (within the kernel's float error) numbers; time and memory from its run.json."""
    rows = _rows(run)
    mine, rtn = rows["mine"], rows["rtn w4"]
    assert mine["kind"] == "extra" and mine["bits"] == 4 and mine["source"] == str(run["extra"])
    assert mine["seconds"] == 1.5 and mine["peak_rss_mb"] == 321.0 and mine["run_json"]["oneshot_seconds"] == 1.5
    assert mine["size_bytes"] == rtn["size_bytes"]
    for label, v in rtn["ppl"].items():
        assert mine["ppl"][label] == pytest.approx(v, rel=1e-3)
    assert mine["kld"] == pytest.approx(rtn["kld"], rel=0.05, abs=1e-4) and mine["kld"] > 0
    assert abs(mine["gap_closed"]["tinystories_sample"]) < 0.05


def test_cli_prints_the_table_and_the_outputs(run):
    out = run["out"]
    lines = out.splitlines()
    header = lines[0].split()
    assert header[:2] == ["method", "bits"] and "KLD" in header and "top-1" in header and "gap" in header
    names = [l.split()[:2] for l in lines[1:7]]
    assert names == [["fp", "32"], ["rtn", "4"], ["awq", "4"], ["rtn", "3"], ["awq", "3"], ["mine", "4"]]
    assert "size n/a" in out
    for i, p in enumerate(PROMPTS):
        assert f"prompt {i + 1}: {p!r}" in out
    assert out.count("  awq w4 | ") == len(PROMPTS)


def _user_error(capsys, monkeypatch, *argv) -> str:
    """A one-line error with exit code 2, before the model is loaded."""
    import awqkit.model.pipeline as pipeline
    from test_cli_errors import _user_error as one_line_error

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(pipeline, "load_model", no_load)
    return one_line_error(capsys, *argv)


@pytest.mark.parametrize("args, expected", [
    (["--methods", "rtn,nope"], "unknown method 'nope'"),
    (["--methods", ","], "one or more method names"),
    (["--methods", "rtn,fold"], "keeps full precision"),
    (["--methods", "rtn,gptq", "--format", "gguf"], "cannot round for the gguf format"),
    (["--bits", "4,9"], "out of range"),
    (["--bits", "four"], "not an integer"),
    (["--eval-text", "/missing/eval.txt"], "/missing/eval.txt: no such file"),
    (["--prompts", "/missing/prompts.jsonl"], "no such file"),
    (["--calib", "/missing/calib.jsonl"], "no such file"),
    (["--extra", "mine=/missing/ckpt"], "does not exist"),
    (["--extra", "fp=MODEL"], "taken by the full-precision row"),
    (["--extra", "no-equals-sign"], "NAME=CHECKPOINT_DIR"),
    (["--json", "/missing/dir/out.json"], "its folder does not exist"),
    (["--group-size", "0"], "argument --group-size"),
])
def test_argument_errors_come_before_any_work(capsys, monkeypatch, data_dir, args, expected):
    base = {"--methods": "rtn,awq", "--bits": "4", "--eval-text": str(data_dir / TEXTS[0])}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value.replace("MODEL", str(data_dir / STORIES))
    argv = ["compare", data_dir / STORIES, *[x for kv in base.items() for x in kv]]
    assert expected in _user_error(capsys, monkeypatch, *argv)


def test_bad_prompts_file(capsys, monkeypatch, data_dir, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "no prompt key"}\n')
    msg = _user_error(capsys, monkeypatch, "compare", data_dir / STORIES, "--methods", "rtn",
                      "--eval-text", data_dir / TEXTS[0], "--prompts", bad)
    assert "p.jsonl:1" in msg and '"prompt"' in msg


def test_methods_come_from_the_registry():
    from awqkit.model.method_comparison import available_methods, check_methods
    from awqkit.quant_methods import METHODS

    assert set(available_methods()) == {name for name, m in METHODS.items() if m.quantizes} >= {"rtn", "awq"}
    assert check_methods(["awq", "rtn", "awq"]) == ["awq", "rtn"]
    with pytest.raises(ValueError, match="unknown method 'definitely-not-a-method'"):
        check_methods(["definitely-not-a-method"])
    with pytest.raises(ValueError, match="keeps full precision"):
        check_methods(["fold"])
