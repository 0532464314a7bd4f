"""awqkit's methods (RTN, AWQ, GPTQ, AWQ+GPTQ, imatrix) against llm-compressor's AWQ and GPTQ on
the same calibration tokens: one ``awqkit compare`` run.

    python3 benchmarks/bench_methods.py texts --work build/compare        # C4 evaluation text
    # llm-compressor's reference checkpoints, in their own venv (benchmarks/bench_llmcompressor.py):
    #   build/compare/llmc-{awq,gptq}-w{4,3}g64, on build/compare/smollm2_calib_8192.npy
    flock /tmp/awqkit-bench.lock python3 benchmarks/bench_methods.py compare --work build/compare \\
        --model build/real-models/smollm2-135m --json benchmarks/results/bench_methods.json
    python3 benchmarks/bench_methods.py table benchmarks/results/bench_methods.json   # markdown for benchmarks/README.md
    python3 benchmarks/bench_methods.py profile --method gptq --blocks 8   # resident memory per block, stage times

The calibration is the 8,192 tokens ``bench_llmcompressor.py calib-tokens`` writes (16 blocks of
512 from C4 documents 0-999, awqkit's own ``get_calib_blocks``); evaluation: WikiText-2 test and C4
documents 1000-1999 (never in the calibration), ``--eval-tokens`` each, windows of 512.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))


def texts(args) -> None:
    from awqkit.data import data_dir

    src = data_dir() / "c4-validation" / "c4_validation_2k.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()
    out = Path(args.work) / "c4_eval_1000-1999.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(json.loads(line)["text"] for line in lines[1000:]), encoding="utf-8")
    print(out)


def compare(args) -> None:
    from awqkit.data import data_dir

    work = Path(args.work)
    wiki = data_dir() / "wikitext-2-raw" / "wiki.test.raw"
    extras = []
    for name in [] if args.no_extras else sorted(p.name for p in work.glob("llmc-*") if (p / "config.json").exists()):
        extras += ["--extra", f"{name}={work / name}"]
    cmd = [sys.executable, "-m", "awqkit", "compare", args.model, "--methods", args.methods, "--bits", args.bits,
           "--group-size", "64", "--format", "compressed-tensors", "--calib", str(work / "smollm2_calib_8192.npy"),
           "--eval-text", f"{wiki},{work / 'c4_eval_1000-1999.txt'}", "--seqlen", "512",
           "--eval-tokens", str(args.eval_tokens), "--prompts", str(HERE / "compare_prompts.jsonl"),
           "--max-new-tokens", "24", "--json", args.json, *extras]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**__import__("os").environ, "PYTHONPATH": str(HERE.parent / "python")})


def profile(args) -> None:
    """One method on the first ``--blocks`` decoder blocks: resident memory after each block and
    the pipeline's stage times (what the README's profile figures are)."""
    import copy

    import numpy as np
    import torch

    from awqkit import AWQConfig
    from awqkit.model import load_model, pipeline, quantize_model
    from awqkit.model.report import _proc_status_mb

    model, _ = load_model(args.model)
    model.model.layers = model.model.layers[: args.blocks]
    model.config.num_hidden_layers = args.blocks
    tokens = torch.from_numpy(np.load(Path(args.work) / "smollm2_calib_8192.npy"))
    quantize_block = pipeline.quantize_block

    def measured(run, i, *a, **kw):
        out = quantize_block(run, i, *a, **kw)
        print(f"block {i}: resident {_proc_status_mb('VmRSS'):.0f} MiB", flush=True)
        return out

    pipeline.quantize_block = measured
    _, report = quantize_model(copy.deepcopy(model), AWQConfig(bits=4, group_size=64), calib=tokens, method=args.method)
    print(json.dumps({k: round(v["seconds"], 1) for k, v in report.stages.items()}))


def table(args) -> None:
    d = json.loads(Path(args.json).read_text())
    labels = [t["label"] for t in d["eval_texts"]]
    head = ["row", "bits"] + [f"{l} ppl" for l in labels] + [f"{l} gap closed" for l in labels] + \
        ["KLD", "top-1", "size MiB", "seconds", "peak MiB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def f(v, fmt, scale=1.0, suffix=""):
        return "n/a" if v is None else format(v * scale, fmt) + suffix

    import re

    by = {(r["method"], r.get("bits")): r for r in d["rows"]}
    fp = next((r for r in d["rows"] if r["kind"] == "fp"), None)
    for r in d["rows"]:
        m = re.search(r"-w(\d)g", r["name"])
        if r["kind"] == "extra" and fp and (r.get("bits") or m):
            # llm-compressor's rows: their gap against awqkit's RTN at their width
            r["bits"] = r.get("bits") or int(m.group(1))
            rtn = by.get(("rtn", r["bits"]))
            if rtn:
                r["gap_closed"] = {l: (rtn["ppl"][l] - r["ppl"][l]) / (rtn["ppl"][l] - fp["ppl"][l])
                                   for l in labels if rtn["ppl"][l] > fp["ppl"][l]}
        run = r.get("run_json") or {}
        secs = r.get("seconds") if r.get("seconds") is not None else run.get("oneshot_seconds")
        peak = r.get("peak_rss_mb") if r.get("peak_rss_mb") is not None else run.get("peak_rss_mb")
        gap = r.get("gap_closed") or {}
        cells = [r["name"], str(r.get("bits") or "")] + [f(r["ppl"].get(l), ".2f") for l in labels] + \
            [f(gap.get(l), ".0f", 100, "%") for l in labels] + \
            [f(r.get("kld"), ".4f"), f(r.get("top1"), ".1f", 100, "%"),
             f(None if r.get("size_bytes") is None else r["size_bytes"] / 2**20, ".1f"), f(secs, ".0f"), f(peak, ".0f")]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("texts")
    t.add_argument("--work", default="build/compare")
    c = sub.add_parser("compare")
    c.add_argument("--work", default="build/compare")
    c.add_argument("--model", default="build/real-models/smollm2-135m")
    c.add_argument("--methods", default="rtn,awq,gptq,awq+gptq,imatrix")
    c.add_argument("--bits", default="4,3")
    c.add_argument("--eval-tokens", type=int, default=16384)
    c.add_argument("--json", default="benchmarks/results/bench_methods.json")
    c.add_argument("--no-extras", action="store_true", help="leave out llm-compressor's checkpoints")
    pr = sub.add_parser("profile")
    pr.add_argument("--work", default="build/compare")
    pr.add_argument("--model", default="build/real-models/smollm2-135m")
    pr.add_argument("--method", default="gptq")
    pr.add_argument("--blocks", type=int, default=8)
    tb = sub.add_parser("table")
    tb.add_argument("json")
    args = p.parse_args()
    {"texts": texts, "compare": compare, "profile": profile, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
