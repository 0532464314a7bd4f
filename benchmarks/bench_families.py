"""Full precision / RTN / AWQ perplexity on real models of several families (issue 15).

The models come from PyPI packages as GGUF files (see ``real_models.py``); their "full
precision" is the float32 dequantization of the GGUF, which is itself a 4-6-bit model. Every
(model, method) cell runs on its own: a method the pipeline cannot do yet for an architecture
(no built-in AWQ mappings) is recorded with its error and the run goes on.

    AWQKIT_DATA_DIR=../shared/data PYTHONPATH=python python3 benchmarks/bench_families.py
    ... --models gemma3-270m --methods rtn,awq      # fill in cells later; other cells are kept
    ... --render                                    # the markdown table from the JSON only

Defaults: 4-bit, group 64 (divides every linear's input of the three models), AWQ with
``n_samples=64`` C4 documents (validation documents 0-999), ``seqlen=512``, clip search on, the
defaults of ``AWQConfig`` otherwise; evaluation on the first ``--eval-tokens`` (8192) tokens of
WikiText-2 test in 512-token windows (and of C4 documents 1000-1999 with ``--c4``). Writes
``benchmarks/results/bench_families.json`` (merged cell by cell) and ``bench_families.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import real_models  # noqa: E402

log = logging.getLogger("bench_families")
METHODS = ("fp", "rtn", "awq")


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def c4_split(work: Path) -> tuple[str, str]:
    """(calibration jsonl = C4 validation documents 0-999, evaluation text = documents 1000-1999)."""
    from awqkit.data import data_dir

    lines = (data_dir() / "c4-validation" / "c4_validation_2k.jsonl").read_text(encoding="utf-8").splitlines()
    work.mkdir(parents=True, exist_ok=True)
    calib = work / "c4_calib_0-999.jsonl"
    calib.write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    return str(calib), "\n\n".join(json.loads(l)["text"] for l in lines[1000:])


def run_cell(path: Path, method: str, texts: dict[str, str], calib: str, args) -> dict:
    import torch

    import awqkit
    from awqkit.model import evaluate_perplexity, load_model

    t0 = time.perf_counter()
    model, tok = load_model(str(path))
    cell: dict = {"load_seconds": round(time.perf_counter() - t0, 1)}
    if method != "fp":
        extra: dict = {}
        from awqkit.model import FAMILIES

        if method == "rtn" and model.config.model_type not in FAMILIES:
            # Plain rounding uses no mappings, only the decoder-block list: an architecture
            # without a family can still get its RTN baseline (the mapping given is not used).
            extra = dict(layers_path="model.layers", mappings=[{"prev_op": "self_attn.v_proj", "layers": ["self_attn.o_proj"]}])
            cell["note"] = "no family: RTN run with layers_path='model.layers' (RTN uses no mappings)"
        cfg = awqkit.AWQConfig(bits=args.bits, group_size=args.group_size, n_samples=args.n_samples, seqlen=512, **extra)
        t0 = time.perf_counter()
        if method == "rtn":
            model, report = awqkit.rtn_quantize_model(model, cfg)
        else:
            model, report = awqkit.quantize_model(model, cfg, calib=calib, tokenizer=tok)
        cell.update(quantize_seconds=round(time.perf_counter() - t0, 1), quantized_layers=report.quantized_layers,
                    not_converted=len(report.not_converted), calib_tokens=getattr(report, "calib_tokens", None),
                    summary=report.summary())
        if report.block_errors:  # AWQ's block-output error against plain rounding's, per block
            cell["block_errors"] = [{k: b[k] for k in ("block", "awq", "rtn")} for b in report.block_errors]
    with torch.no_grad():
        for tname, text in texts.items():
            t0 = time.perf_counter()
            cell[tname] = evaluate_perplexity(model, tok, text, seqlen=512, max_tokens=args.eval_tokens)
            cell[f"{tname}_eval_seconds"] = round(time.perf_counter() - t0, 1)
    return cell


def render(res: dict) -> str:
    meta = res.get("meta", {})
    texts = meta.get("texts", ["wikitext2"])
    out = [f"Machine: {meta.get('cpu', '?')}, {meta.get('threads', '?')} torch threads; commit {meta.get('commit', '?')}; "
           f"{meta.get('bits', 4)}-bit, group {meta.get('group_size', 64)}; AWQ calibration {meta.get('n_samples', 64)} C4 "
           f"documents, seqlen 512; perplexity on the first {meta.get('eval_tokens', 8192)} tokens, 512-token windows. "
           "FP = the float32 dequantization of the GGUF (itself a 4-6-bit model).", ""]
    head = "| model | architecture | GGUF | params | " + " | ".join(
        f"{t} {m.upper()}" for t in texts for m in METHODS) + " | RTN / AWQ quantize time (s) | pending (error) / notes |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in res.get("models", {}).items():
        info = r.get("info", {})
        cells = r.get("cells", {})
        row = [name, f"{info.get('model_type', '?')} ({info.get('family', '')})", info.get("gguf_type", "?").split(" ")[0],
               f"{info.get('parameters', 0) / 1e6:.0f}M"]
        errs = []
        for t in texts:
            for m in METHODS:
                c = cells.get(m, {})
                row.append(f"{c[t]:.2f}" if t in c else "-")
        for m in METHODS:
            if "error" in cells.get(m, {}):
                errs.append(f"{m.upper()}: {cells[m]['error']}")
        row.append(" / ".join(str(cells.get(m, {}).get("quantize_seconds", "-")) for m in ("rtn", "awq")))
        notes = [f"{m.upper()}: {cells[m]['note']}" for m in METHODS if "note" in cells.get(m, {})]
        row.append("; ".join(errs + notes))
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="FP / RTN / AWQ perplexity on real models of several families")
    ap.add_argument("--models", default=",".join(real_models.MODELS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--c4", action="store_true", help="also evaluate on C4 validation documents 1000-1999")
    ap.add_argument("--cache", default=str(real_models.DEFAULT_CACHE))
    ap.add_argument("--out", default=str(HERE / "results" / "bench_families.json"))
    ap.add_argument("--render", action="store_true", help="only print the table from --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    if args.render:
        print(render(res), end="")
        return 0

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    cpu = cpu_model()
    print(f"CPU: {cpu} ({os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads)", flush=True)
    texts = {"wikitext2": real_models.wiki_text()}
    calib, c4_text = c4_split(Path(args.cache) / "_text")
    if args.c4:
        texts["c4"] = c4_text
    meta = res.setdefault("meta", {})
    meta.update(cpu=cpu, threads=torch.get_num_threads(), commit=git_commit(), bits=args.bits, group_size=args.group_size,
                n_samples=args.n_samples, eval_tokens=args.eval_tokens, texts=list(texts),
                full_precision="float32 dequantization of each GGUF")

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        out.with_suffix(".md").write_text(render(res))

    for name in args.models.split(","):
        r = res.setdefault("models", {}).setdefault(name, {"info": {}, "cells": {}})
        try:
            path = real_models.prepare(name, args.cache)
        except Exception as e:  # noqa: BLE001 -- report and go on with the next model
            log.error("%s: preparing the model failed: %s", name, e)
            r["cells"] = {m: {"error": f"prepare: {type(e).__name__}: {e}"} for m in METHODS}
            save()
            continue
        r["info"] = json.loads((path / "gguf_source.json").read_text())
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            try:
                cell = run_cell(path, method, texts, calib, args)
            except Exception as e:  # noqa: BLE001 -- e.g. no built-in AWQ mappings for this architecture yet
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                log.error("%s %s failed: %s", name, method, msg)
                log.debug("%s", traceback.format_exc())
                cell = {"error": f"{type(e).__name__}: {msg}"}
            cell["wall_seconds"] = round(time.perf_counter() - t0, 1)
            r["cells"][method] = cell
            print(f"{name} {method}: {json.dumps(cell)}", flush=True)
            save()
    print(render(res), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
