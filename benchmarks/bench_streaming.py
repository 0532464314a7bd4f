"""Models larger than RAM (issue 16): a synthetic Llama-2-7B-shaped model quantized from disk
block by block, reloaded and run; SmolLM2-135M streamed vs in memory.

    PYTHONPATH=python python3 benchmarks/bench_streaming.py make-7b            # ~13.5 GB of bf16 safetensors
    PYTHONPATH=python python3 benchmarks/bench_streaming.py quantize --method rtn        # every block
    PYTHONPATH=python python3 benchmarks/bench_streaming.py quantize --blocks 1          # AWQ, default calibration, block 0
    PYTHONPATH=python python3 benchmarks/bench_streaming.py quantize --blocks 1 --activations disk
    PYTHONPATH=python python3 benchmarks/bench_streaming.py reload --tokens 8
    PYTHONPATH=python python3 benchmarks/bench_streaming.py identity --model smollm2-135m

Every step runs the work in a child process and reports its peak resident memory as the
kernel counts it (``ru_maxrss`` of the child) with the wall time; ``quantize`` also prints
the per-stage times and peaks of the report and the memory plan. ``--blocks N`` stops the
CLI (SIGINT) once N blocks are committed: the per-block figures are read from the resume
state, and the run can be finished later by the same command without ``--blocks``.
Results are appended to ``benchmarks/results/bench_streaming.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = ROOT / "build" / "streaming"
SYNTH = WORK / "llama2-7b-synthetic"
OUT = WORK / "llama2-7b-synthetic-awq"
RESULTS = HERE / "results" / "bench_streaming.jsonl"

# Llama-2-7B's config.json (meta-llama/Llama-2-7b-hf), weights random.
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16",
}


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _record(entry: dict) -> None:
    entry.update({"cpu": _cpu(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry, indent=1))


def _child(cmd: list[str], stop_after_blocks: int | None = None, partial: Path | None = None) -> dict:
    """Run ``cmd``; its wall time and peak RSS (the kernel's ru_maxrss for the child)."""
    t0 = time.perf_counter()
    # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler: give the child the default back.
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT / "python")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stopped = False
    while proc.poll() is None:
        time.sleep(2)
        if stop_after_blocks is not None and partial is not None:
            progress = partial / "awqkit-resume" / "progress.json"
            try:
                done = json.loads(progress.read_text())["blocks_done"]
            except (OSError, ValueError, KeyError):
                continue
            if done >= stop_after_blocks and not stopped:
                proc.send_signal(signal.SIGINT)
                stopped = True
    proc.wait()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


def write_random_shards(folder: Path, shapes, dtype, seed: int, shard_bytes: int) -> None:
    """Random weights for ``shapes`` [(name, shape)] in ``dtype`` (2 bytes): vectors 1, matrices N(0, 0.02) drawn in
    order from one generator; written tensor by tensor into safetensors shards of about ``shard_bytes`` with an index
    (never the whole model in memory). bench_decode.py's synthetic model is written the same way."""
    import torch
    from safetensors.torch import save_file

    shards: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = 2 * int(torch.tensor(shape).prod())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    g = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for j, shard in enumerate(shards):
        fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            if len(shape) == 1:
                t = torch.ones(shape, dtype=dtype)
            else:
                t = (torch.randn(shape, generator=g) * 0.02).to(dtype)
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * 2
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        print(f"{fname}: {len(tensors)} tensors", flush=True)
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                       "weight_map": weight_map}, indent=2))


def write_llama2_7b(folder: Path, layers: int) -> None:
    """Random bf16 weights in Llama-2-7B's shapes with ``layers`` decoder blocks, written tensor by
    tensor into ~2 GB shards with an index (never the whole model in memory), plus the stories260K
    tokenizer. bench_distributed.py's one-block slice is written the same way."""
    import torch

    from awqkit.data import data_dir

    c = dict(LLAMA2_7B, num_hidden_layers=layers)
    h, inter = c["hidden_size"], c["intermediate_size"]
    shapes = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        shapes += [(p + f"self_attn.{k}_proj.weight", (h, h)) for k in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                   (p + "mlp.down_proj.weight", (h, inter))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab_size"], h))]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_random_shards(folder, shapes, torch.bfloat16, seed=0, shard_bytes=2_000_000_000)
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    d = data_dir()
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if d is not None and (d / "stories260K-hf" / f).exists():
            shutil.copy(d / "stories260K-hf" / f, folder / f)
    print(folder)


def make_7b(args) -> None:
    write_llama2_7b(SYNTH, LLAMA2_7B["num_hidden_layers"])


def quantize(args) -> None:
    out = Path(args.out)
    cmd = [sys.executable, "-m", "awqkit", "-v", "quantize", str(SYNTH), "--out", str(out), "--method", args.method]
    if args.n_samples:
        cmd += ["--n-samples", str(args.n_samples)]
    cmd += ["--activations", args.activations]
    if args.restart:
        cmd += ["--restart", "--overwrite"]
    partial = Path(str(out) + ".partial")
    if args.restart and partial.exists():  # before the child starts: the poll below must not see the old progress
        shutil.rmtree(partial)
    res = _child(cmd, args.blocks, partial)
    if res["rc"] not in (0, 130):  # 130: stopped by --blocks, resumable
        raise SystemExit(f"the quantization failed: {res}")
    state_file = partial / "awqkit-resume" / "progress.json"
    report_file = out / "awq_report.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        report, done = state["report"], state["blocks_done"]
    elif report_file.exists():
        report, done = json.loads(report_file.read_text()), LLAMA2_7B["num_hidden_layers"]
    else:
        raise SystemExit(f"no report: {res}")
    stages = {k: {"seconds": round(v["seconds"], 1), "peak_rss_mib": round(v["peak_rss_mb"], 1), "calls": v["calls"]}
              for k, v in report["stages"].items()}
    per_block = {k: v["seconds"] / max(done, 1) for k, v in report["stages"].items()
                 if k not in ("calibration", "capture_block_calls")}
    _record({"step": "quantize", "method": args.method, "activations": args.activations,
             "n_samples": args.n_samples or 128, "blocks_done": done,
             **res, "report_peak_rss_mib": round(report["peak_rss_mb"], 1), "stages": stages,
             "per_block_s": round(sum(per_block.values()), 1), "memory_plan": report.get("memory_plan")})


def reload(args) -> None:
    code = f"""
import time, torch
from awqkit.model import load_quantized
t0 = time.perf_counter()
model = load_quantized({str(args.out)!r})
t1 = time.perf_counter()
ids = torch.tensor([[1, 306, 4966, 263]])
with torch.no_grad():
    out = model.generate(ids, max_new_tokens={args.tokens}, do_sample=False)
t2 = time.perf_counter()
print("load_s", round(t1 - t0, 1), "generate_s", round(t2 - t1, 1), "tokens", out.shape[1] - ids.shape[1], flush=True)
"""
    res = _child([sys.executable, "-c", code])
    _record({"step": "reload+generate", "tokens": args.tokens, **res})


def identity(args) -> None:
    """The streaming path against the in-memory path on a real model (``real_models.py``
    builds them into build/real-models): every tensor equal."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / 'tests')!r})
import awqkit
from awqkit.model import quantize_model, quantize_to_checkpoint, save_quantized
from model_helpers import checkpoint_tensors
src = {str(ROOT / 'build' / 'real-models' / args.model)!r}
cfg = awqkit.AWQConfig(group_size=64, n_samples=64, seqlen=512)
m, r = quantize_model(src, cfg)
save_quantized(m, {str(WORK / (args.model + '-mem'))!r}, overwrite=True)
quantize_to_checkpoint(src, {str(WORK / (args.model + '-stream'))!r}, cfg, overwrite=True)
a, b = checkpoint_tensors({str(WORK / (args.model + '-mem'))!r}), checkpoint_tensors({str(WORK / (args.model + '-stream'))!r})
same = sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
print("tensors", len(a), "identical", same)
assert same
"""
    res = _child([sys.executable, "-c", code])
    _record({"step": f"{args.model} stream vs in-memory", **res})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make-7b").set_defaults(func=make_7b)
    q = sub.add_parser("quantize")
    q.add_argument("--method", default="awq", choices=["awq", "rtn"])
    q.add_argument("--blocks", type=int, help="stop (SIGINT) after this many committed blocks")
    q.add_argument("--n-samples", type=int, help="calibration documents (default: AWQConfig's 128 x 512 tokens)")
    q.add_argument("--out", default=str(OUT))
    q.add_argument("--restart", action="store_true")
    q.add_argument("--activations", default="auto", choices=["auto", "memory", "disk"])
    q.set_defaults(func=quantize)
    r = sub.add_parser("reload")
    r.add_argument("--out", default=str(OUT))
    r.add_argument("--tokens", type=int, default=8)
    r.set_defaults(func=reload)
    i = sub.add_parser("identity")
    i.add_argument("--model", default="smollm2-135m", help="a folder of build/real-models")
    i.set_defaults(func=identity)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    args.func(args)


if __name__ == "__main__":
    main()
