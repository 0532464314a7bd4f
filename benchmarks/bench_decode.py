"""End-to-end prefill and decode speed against llama.cpp (issue 19): llama-bench's pp512/tg128 of a
llama.cpp Q4_0 GGUF against awqkit's reloaded AWQ gemm checkpoint of the same model, 1 and 2 threads.

    export AWQKIT_LLAMA_SRC=/path/llama.cpp/src AWQKIT_LLAMA_BUILD=/path/llama.cpp/build   # as bench_gguf.py
    PYTHONPATH=python python3 benchmarks/bench_decode.py setup                  # models under build/bench-decode
    flock /tmp/awqkit-bench.lock python3 benchmarks/bench_decode.py llama        # llama-bench -p 512 -n 128 -t 1 / -t 2
    PYTHONPATH=python flock /tmp/awqkit-bench.lock python3 benchmarks/bench_decode.py awqkit --runtime transformers
    python3 benchmarks/bench_decode.py table                                    # the markdown table

Models (``--work``, default ``build/bench-decode``, never committed):

- ``smollm2-135m``: the float32 SmolLM2-135M folder of ``bench_model.py``/``real_models.py``
  (``--smollm2``, default ``build/real-models/smollm2-135m``; tied embeddings). awqkit: AWQ, 4-bit, group 64
  (576 is not a multiple of 128), zero point, the built-in calibration text. llama.cpp:
  ``convert_hf_to_gguf.py --outtype f16`` then ``llama-quantize ... Q4_0`` with llama-quantize's own choice of the
  non-block tensor types (recorded by ``setup``).
- ``synth-llama-1b``: a ~1.1B Llama with random weights in real shapes (hidden 2048, intermediate 5632, 22 layers,
  32/4 heads, vocabulary 49152, untied head; weights N(0, 0.02), norms 1, float16 safetensors written tensor by
  tensor, seed 0) with SmolLM2's tokenizer copied in (so llama.cpp's converter recognises it). awqkit: RTN, 4-bit,
  group 128. llama.cpp: as above.

What is timed, as llama-bench does it (``tools/llama-bench``): **pp512** is one forward pass over 512 prompt
tokens (batch 1, empty KV cache; random ids, the first one BOS) whose logits are computed for the last token only;
**tg128** is 128 single-token forward passes with the KV cache from an empty context, starting from one token
(llama-bench feeds random ids, awqkit's runtimes feed their own greedy token: the cost is the same). tok/s =
tokens / seconds. llama-bench reports the mean and standard deviation over ``-r`` repetitions after one warm-up
(one prompt pass and one generation step); ``awqkit`` warms up the same way and records the median, mean and
standard deviation over ``-r`` repetitions.

The awqkit side is pluggable: ``RUNTIMES`` maps a name to ``make(model, threads)`` returning an object with
``prefill(ids)`` (``ids``: int64 tensor ``[1, T]``; fresh cache; returns the greedy next token id) and
``decode_steps(first_id, n)`` (fresh cache; ``n`` single-token steps, the first fed ``first_id``, each next one the
previous step's greedy token; returns the ``n`` tokens). ``transformers`` is the plain Hugging Face forward with a
``DynamicCache``; ``native`` is ``awqkit.model.decode_runtime.NativeDecoder`` (int8 head, prefill "auto"),
``native-exact`` the same with exact prefill, ``native-float-head`` with the model's float head. A runtime is one
more entry. ``accuracy`` measures WikiText-2 perplexity of the native runtime per head and prefill mode.

Results go to ``benchmarks/results/bench_decode.json`` (each subcommand updates its own part) with the CPU
(lscpu model name and the avx512_vnni/AMX flags), the commit, the thread counts and the load averages before and
after each step. On a shared machine measure only while it is otherwise idle: with another process on one of two
cores, llama.cpp's 2-thread runs lost 3-10x (its threads wait for each other) and their tg128 samples spread from 7
to 190 tok/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_gguf import _run  # runs a tool, its output into a log, fails loudly
from bench_streaming import write_random_shards

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "bench_decode.json"
WORK = Path(os.environ.get("AWQKIT_BENCH_DECODE_DIR", ROOT / "build" / "bench-decode"))
SMOLLM2 = ROOT / "build" / "real-models" / "smollm2-135m"
LLAMA_SRC = Path(os.environ.get("AWQKIT_LLAMA_SRC", ROOT / "build" / "llama.cpp" / "src"))
LLAMA_BUILD = Path(os.environ.get("AWQKIT_LLAMA_BUILD", ROOT / "build" / "llama.cpp" / "build"))
MODELS = ("smollm2-135m", "synth-llama-1b")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")

# The synthetic model: TinyLlama-1.1B's shapes with SmolLM2's vocabulary, random weights.
SYNTH_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632,
    "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 64, "vocab_size": 49152,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "dtype": "float16",
}
SYNTH_SEED = 0
SHARD_BYTES = 1_000_000_000


def model_paths(work: Path) -> dict[str, dict[str, Any]]:
    """Where ``setup`` puts each model's files, and how its awqkit checkpoint is made."""
    return {
        "smollm2-135m": {"awq": work / "smollm2-135m-awq-g64", "f16": work / "smollm2-135m-f16.gguf",
                         "gguf": work / "smollm2-135m-q4_0.gguf", "method": "awq", "group_size": 64},
        "synth-llama-1b": {"hf": work / "synth-llama-1b", "awq": work / "synth-llama-1b-rtn-g128",
                           "f16": work / "synth-llama-1b-f16.gguf", "gguf": work / "synth-llama-1b-q4_0.gguf",
                           "method": "rtn", "group_size": 128},
    }


# --------------------------------------------------------------------------- recording

def _lscpu() -> dict[str, Any]:
    info: dict[str, Any] = {"model_name": "?", "flags": {}}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            info["model_name"] = value.strip()
        elif key.strip() == "Flags":
            flags = set(value.split())
            info["flags"] = {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")}
        elif key.strip() in ("CPU(s)", "L2 cache", "L3 cache"):
            info[key.strip()] = value.strip()
    return info


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _load_results() -> dict:
    if RESULTS.is_file():
        return json.loads(RESULTS.read_text())
    return {}


def _save_results(part: str, key: str, value: Any) -> None:
    """Update ``results[part][key]`` (other parts and keys are kept) with the machine and commit."""
    res = _load_results()
    res.setdefault(part, {})[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1) + "\n")


def _stamp() -> dict[str, Any]:
    return {"cpu": _lscpu(), "commit": _commit(), "command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average": list(os.getloadavg())}  # 1, 5, 15 minutes, at the end of the step


def _tool(build: Path, name: str) -> Path:
    p = Path(build) / "bin" / name
    if not p.is_file():
        raise SystemExit(f"{p} not found: build it (`cmake --build {build} --target {name}`) or pass --llama-build")
    return p


def _gguf_types(path: Path) -> dict[str, Any]:
    """Tensor types of a GGUF: counts per type, and the types of the embedding and the output head."""
    import gguf

    r = gguf.GGUFReader(str(path))
    counts = Counter(t.tensor_type.name for t in r.tensors)
    by_name = {t.name: t.tensor_type.name for t in r.tensors}
    return {"tensor_types": dict(sorted(counts.items())), "token_embd": by_name.get("token_embd.weight"),
            "output": by_name.get("output.weight", "(none: tied to token_embd)"),
            "size_bytes": path.stat().st_size}


# --------------------------------------------------------------------------- setup

def make_synthetic(dst: Path, tokenizer_from: Path) -> None:
    """SYNTH_CONFIG with random float16 weights, written tensor by tensor into ~1 GB shards with an index
    (the largest float32 temporary is one embedding matrix, 400 MB), plus ``tokenizer_from``'s tokenizer."""
    import torch

    c = SYNTH_CONFIG
    h, inter, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    shapes: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for i in range(n):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                   (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                   (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                   (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                   (p + "mlp.down_proj.weight", (h, inter))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    tmp = dst.with_name(dst.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write_random_shards(tmp, shapes, torch.float16, seed=SYNTH_SEED, shard_bytes=SHARD_BYTES)
    (tmp / "config.json").write_text(json.dumps(c, indent=2))
    for f in TOKENIZER_FILES:
        if (tokenizer_from / f).is_file():
            shutil.copy(tokenizer_from / f, tmp / f)
    tmp.rename(dst)


def _awqkit_quantize(hf: Path, out: Path, method: str, group_size: int, log: Path) -> float:
    """``awqkit quantize`` (the CLI, AutoAWQ gemm output) in a child process with this awqkit on its path."""
    import awqkit

    pkg_parent = str(Path(awqkit.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join([pkg_parent] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    dt, _ = _run([sys.executable, "-m", "awqkit", "quantize", hf, "--out", out, "--method", method, "--bits", "4",
                  "--group-size", group_size], log=log, env=env)
    return dt


def _check_checkpoint(path: Path) -> dict[str, Any]:
    cfg = json.loads((path / "config.json").read_text())
    q = cfg.get("quantization_config") or {}
    if q.get("quant_method") != "awq" or q.get("version", "gemm") != "gemm":
        raise SystemExit(f"{path} is not an AWQ gemm checkpoint: {q}")
    return q


def setup(args) -> None:
    work, src, build = Path(args.work), Path(args.llama_src), Path(args.llama_build)
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    paths = model_paths(work)
    paths["smollm2-135m"]["hf"] = Path(args.smollm2)
    if not (Path(args.smollm2) / "config.json").is_file():
        raise SystemExit(f"{args.smollm2}: no SmolLM2-135M folder (make it with benchmarks/real_models.py or pass --smollm2)")
    info: dict[str, Any] = {}
    previous = _load_results().get("models", {})
    for name in args.models:
        p = paths[name]
        rec: dict[str, Any] = {"hf": str(p["hf"]), "awqkit": str(p["awq"]), "gguf": str(p["gguf"])}
        # a rerun keeps the times of the steps it skips
        rec.update({k: v for k, v in previous.get(name, {}).items() if k in ("make_seconds", "quantize_seconds")})
        if name == "synth-llama-1b" and not (p["hf"] / "config.json").is_file():
            t0 = time.perf_counter()
            make_synthetic(p["hf"], Path(args.smollm2))
            rec["make_seconds"] = round(time.perf_counter() - t0, 1)
        if not (p["awq"] / "config.json").is_file():
            rec["quantize_seconds"] = round(_awqkit_quantize(p["hf"], p["awq"], p["method"], p["group_size"],
                                                             logs / f"quantize-{p['awq'].name}.log"), 1)
        rec["awqkit_quantization_config"] = _check_checkpoint(p["awq"])
        rec["awqkit_method"] = p["method"]
        if not p["gguf"].is_file():
            if not p["f16"].is_file():
                _run([sys.executable, src / "convert_hf_to_gguf.py", p["hf"], "--outtype", "f16", "--outfile", p["f16"]],
                     log=logs / f"convert-{p['f16'].stem}.log", env={"PYTHONPATH": str(src / "gguf-py")})
            _run([_tool(build, "llama-quantize"), p["f16"], p["gguf"], "Q4_0"], log=logs / f"quantize-{p['gguf'].stem}.log")
        rec["gguf_types"] = _gguf_types(p["gguf"])
        rec["gguf_made_with"] = f"convert_hf_to_gguf.py --outtype f16; llama-quantize {p['f16'].name} {p['gguf'].name} Q4_0"
        info[name] = rec
        print(f"{name}: {json.dumps(rec, indent=1)}", flush=True)
    for name, rec in info.items():
        _save_results("models", name, {**rec, **_stamp()})


# --------------------------------------------------------------------------- llama.cpp

def llama(args) -> None:
    build = Path(args.llama_build)
    bench = _tool(build, "llama-bench")
    paths = model_paths(Path(args.work))
    for name in args.models:
        gguf_path = paths[name]["gguf"]
        if not gguf_path.is_file():
            raise SystemExit(f"{gguf_path} missing: run `bench_decode.py setup` first")
        for t in args.threads:
            cmd = [bench, "-m", gguf_path, "-p", args.n_prompt, "-n", args.n_gen, "-t", t, "-r", args.repetitions, "-o", "json"]
            cmd = [str(c) for c in cmd]
            print("+", " ".join(cmd), flush=True)
            load_before = list(os.getloadavg())
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-6000:])
                raise SystemExit(f"llama-bench failed ({proc.returncode})")
            rows = json.loads(proc.stdout)
            entry: dict[str, Any] = {"threads": t, "repetitions": args.repetitions, "gguf": str(gguf_path), "load_average_before": load_before,
                                     **_stamp()}
            for row in rows:
                test = f"pp{row['n_prompt']}" if row["n_prompt"] > 0 else f"tg{row['n_gen']}"
                entry[test] = {"avg_ts": row["avg_ts"], "stddev_ts": row["stddev_ts"], "samples_ts": row.get("samples_ts")}
                entry["llama_bench"] = {k: row.get(k) for k in ("build_commit", "build_number", "cpu_info", "backends", "model_type",
                                                                 "model_size", "model_n_params", "n_batch", "n_ubatch", "type_k",
                                                                 "type_v", "flash_attn", "use_mmap", "no_op_offload")}
            print(f"llama.cpp {name} t={t}: " + ", ".join(f"{k} {entry[k]['avg_ts']:.1f} +/- {entry[k]['stddev_ts']:.1f} tok/s"
                                                             for k in entry if k.startswith(("pp", "tg"))), flush=True)
            _save_results("llama", f"{name}/t{t}", entry)
    print(markdown(_load_results()))


# --------------------------------------------------------------------------- awqkit runtimes

class TransformersRuntime:
    """The reloaded model as transformers runs it: ``model(...)`` with a ``DynamicCache``, greedy tokens."""

    def __init__(self, model, threads: int):
        self.model = model
        self.threads = threads

    def prefill(self, ids):
        import torch
        from transformers import DynamicCache

        with torch.inference_mode():
            out = self.model(input_ids=ids, cache=DynamicCache(config=self.model.config), use_cache=True, logits_to_keep=1)
            return int(out.logits[0, -1].argmax())

    def decode_steps(self, first_id: int, n: int) -> list[int]:
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        tok = torch.tensor([[first_id]], dtype=torch.long)
        out_ids = []
        with torch.inference_mode():
            for _ in range(n):
                out = self.model(input_ids=tok, cache=cache, use_cache=True)
                nxt = int(out.logits[0, -1].argmax())
                out_ids.append(nxt)
                tok = torch.tensor([[nxt]], dtype=torch.long)
        return out_ids


class NativeRuntime:
    """awqkit.model.decode_runtime.NativeDecoder: one native call per token (int8 head; ``prefill`` as named)."""

    def __init__(self, model, threads: int, head: str = "int8", prefill: str = "auto"):
        from awqkit.model.decode_runtime import NativeDecoder

        self.dec = NativeDecoder(model, head=head, prefill=prefill, context=1024)

    def prefill(self, ids):
        self.dec.reset()
        return int(self.dec.forward(ids.numpy()[0]).argmax())

    def decode_steps(self, first_id: int, n: int) -> list[int]:
        self.dec.reset()
        tok, out_ids = first_id, []
        for _ in range(n):
            tok = int(self.dec.forward([tok])[0].argmax())
            out_ids.append(tok)
        return out_ids


# name -> make(model, threads): an object with prefill(ids) and decode_steps(first_id, n). Add a runtime here.
RUNTIMES: dict[str, Callable[[Any, int], Any]] = {
    "transformers": TransformersRuntime,
    "native": NativeRuntime,  # prefill "auto": 16-bit activations for prompts where there are no AMX tiles
    "native-exact": lambda model, threads: NativeRuntime(model, threads, prefill="exact"),
    "native-float-head": lambda model, threads: NativeRuntime(model, threads, head="float"),
}


def _stats(tokens: int, seconds: list[float]) -> dict[str, Any]:
    ts = [tokens / s for s in seconds]
    return {"median_ts": statistics.median(ts), "avg_ts": statistics.fmean(ts), "stddev_ts": statistics.stdev(ts) if len(ts) > 1 else 0.0,
            "samples_ts": ts, "median_seconds": statistics.median(seconds)}


def awqkit_bench(args) -> None:
    import torch

    import awqkit
    from awqkit.isa import amx_int8_active
    from awqkit.model import load_quantized

    make = RUNTIMES[args.runtime]
    paths = model_paths(Path(args.work))
    for name in args.models:
        ckpt = paths[name]["awq"]
        if not (ckpt / "config.json").is_file():
            raise SystemExit(f"{ckpt} missing: run `bench_decode.py setup` first")
        qcfg = _check_checkpoint(ckpt)
        t0 = time.perf_counter()
        model = load_quantized(str(ckpt))
        model.eval()
        load_s = time.perf_counter() - t0
        vocab = model.config.vocab_size
        bos = model.config.bos_token_id if model.config.bos_token_id is not None else 1
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, vocab, (1, args.n_prompt), generator=g)
        prompt[0, 0] = bos
        for t in args.threads:
            torch.set_num_threads(t)
            with awqkit.use_threads(t):
                load_before = list(os.getloadavg())
                rt = make(model, t)
                rt.prefill(prompt)  # warm-up, as llama-bench: one prompt pass and one generation step
                rt.decode_steps(bos, 1)
                pp, tg = [], []
                for _ in range(args.repetitions):
                    t0 = time.perf_counter()
                    rt.prefill(prompt)
                    pp.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    rt.decode_steps(bos, args.n_gen)
                    tg.append(time.perf_counter() - t0)
                entry = {"threads": t, "torch_threads": torch.get_num_threads(), "awqkit_threads": awqkit.num_threads(),
                         "runtime": args.runtime, "repetitions": args.repetitions, "checkpoint": str(ckpt),
                         "quantization_config": qcfg, "load_seconds": round(load_s, 2), "isa": awqkit.active_isa(),
                         "amx_int8_active": amx_int8_active(), "torch": torch.__version__, "load_average_before": load_before,
                         f"pp{args.n_prompt}": _stats(args.n_prompt, pp), f"tg{args.n_gen}": _stats(args.n_gen, tg), **_stamp()}
            print(f"awqkit[{args.runtime}] {name} t={t}: pp{args.n_prompt} {entry[f'pp{args.n_prompt}']['median_ts']:.1f} tok/s, "
                  f"tg{args.n_gen} {entry[f'tg{args.n_gen}']['median_ts']:.1f} tok/s (medians of {args.repetitions})", flush=True)
            _save_results(f"awqkit/{args.runtime}", f"{name}/t{t}", entry)
        del model
    print(markdown(_load_results()))


# --------------------------------------------------------------------------- table

def markdown(res: dict, pp: str = "pp512", tg: str = "tg128") -> str:
    """One row per model, thread count and awqkit runtime: llama.cpp's mean tok/s (llama-bench's avg_ts), awqkit's
    median tok/s, and awqkit / llama.cpp."""
    llama_res = res.get("llama", {})
    runtimes = {k.split("/", 1)[1]: v for k, v in res.items() if k.startswith("awqkit/")}
    lines = [f"| model | threads | awqkit runtime | llama.cpp {pp} | awqkit {pp} | ratio | llama.cpp {tg} | awqkit {tg} | ratio |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(entry: dict | None, test: str, key: str) -> float | None:
        return entry[test][key] if entry and test in entry else None

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a / b:.2f}x"

    keys = sorted(set(llama_res) | {k for r in runtimes.values() for k in r}, key=lambda k: (MODELS.index(k.split("/")[0])
                                                                                           if k.split("/")[0] in MODELS else 99, k))
    for key in keys:
        name, t = key.split("/")
        lentry = llama_res.get(key)
        for rt in sorted(runtimes) or ["-"]:
            aentry = runtimes.get(rt, {}).get(key)
            lp, ap = cell(lentry, pp, "avg_ts"), cell(aentry, pp, "median_ts")
            lt, at = cell(lentry, tg, "avg_ts"), cell(aentry, tg, "median_ts")
            lines.append(f"| {name} | {t[1:]} | {rt} | {fmt(lp)} | {fmt(ap)} | {ratio(ap, lp)} | {fmt(lt)} | {fmt(at)} | {ratio(at, lt)} |")
    return "\n".join(lines)


def accuracy(args) -> None:
    """WikiText-2 perplexity of the native runtime per output head and prefill mode, on the same windows
    (every window one prompt: the prefill mode applies to all of its tokens), against the transformers path."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from awqkit.model import evaluate_perplexity, load_quantized
    from awqkit.model.decode_runtime import NativeDecoder
    from awqkit.model.perplexity import eval_windows, window_nll

    ckpt = model_paths(Path(args.work))["smollm2-135m"]["awq"]
    model = load_quantized(str(ckpt))
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    max_tokens = args.windows * args.seqlen
    windows = eval_windows(tok, Path(args.text), args.seqlen, max_tokens)[0].numpy()  # evaluate_perplexity's windows
    out: dict[str, Any] = {"checkpoint": str(ckpt), "text": args.text, "windows": len(windows), "seqlen": args.seqlen,
                           "transformers_path": evaluate_perplexity(model, tok, Path(args.text), seqlen=args.seqlen,
                                                                    max_tokens=max_tokens)}
    for head in ("float", "int8", "int4"):
        dec = NativeDecoder(model, head=head, context=args.seqlen)
        for prefill in ("exact", "int16", "int8"):
            dec.prefill = prefill
            nll = 0.0
            for w in windows:
                dec.reset()
                nll += window_nll(torch.from_numpy(dec.forward(w, all_logits=True))[None], torch.from_numpy(w)[None])
            ppl = float(np.exp(nll / (windows.shape[0] * (args.seqlen - 1))))
            out[f"head={head} prefill={prefill}"] = ppl
            print(f"head {head:5s} prefill {prefill:5s}: perplexity {ppl:.4f}", flush=True)
    print(f"transformers path (float head, exact): {out['transformers_path']:.4f}")
    _save_results("accuracy", "smollm2-135m", {**out, **_stamp()})


def profile(args) -> None:
    """Where a native decode step's time goes: the step, its INT4 calls timed alone (one sweep over all of them in
    call order, as a step streams them, from Python), and the head alone; the rest is outside the kernels."""
    import numpy as np

    import awqkit
    from awqkit.kernels import PackedLinear
    from awqkit.model import load_quantized
    from awqkit.model.decode_runtime import NativeDecoder

    for name in args.models:
        model = load_quantized(str(model_paths(Path(args.work))[name]["awq"]))
        for t in args.threads:
            with awqkit.use_threads(t):
                dec = NativeDecoder(model, context=1024)
                layers = [PackedLinear(buf, n, k, gs, bias) for buf, n, k, gs, bias in dec.linear_calls if gs > 0]
                rng = np.random.default_rng(0)
                xs = [rng.standard_normal((1, lin.in_features)).astype(np.float32) for lin in layers]
                h = rng.standard_normal((1, dec.hidden)).astype(np.float32)
                step, kern, head = [], [], []
                for _ in range(args.repetitions):
                    dec.reset()
                    dec.forward([1])
                    t0 = time.perf_counter()
                    for i in range(args.n_gen):
                        dec.hidden_states([5 + i])
                    step.append((time.perf_counter() - t0) / args.n_gen)
                    t0 = time.perf_counter()
                    for _ in range(args.n_gen):
                        for lin, x in zip(layers, xs):
                            lin(x)
                    kern.append((time.perf_counter() - t0) / args.n_gen)
                    t0 = time.perf_counter()
                    for _ in range(args.n_gen):
                        dec.head.logits(h)
                    head.append((time.perf_counter() - t0) / args.n_gen)
                ms = {k: 1e3 * statistics.median(v) for k, v in (("layers_step", step), ("int4_calls_alone", kern), ("head", head))}
                ms["outside_kernels"] = ms["layers_step"] - ms["int4_calls_alone"]
                entry = {"threads": t, "int4_calls": len(layers), "ms_per_token": ms, **_stamp()}
                print(f"{name} t={t}: layers step {ms['layers_step']:.2f} ms = INT4 calls {ms['int4_calls_alone']:.2f} + "
                      f"outside {ms['outside_kernels']:.2f}; head {ms['head']:.2f} ms ({len(layers)} INT4 calls)", flush=True)
                _save_results("profile", f"{name}/t{t}", entry)
                del dec
        del model


def table(args) -> None:
    res = _load_results()
    if not res:
        raise SystemExit(f"{RESULTS} has no results yet")
    print(markdown(res))
    cpu = next((e["cpu"] for part in ("llama", *[k for k in res if k.startswith("awqkit/")]) for e in res.get(part, {}).values()), None)
    if cpu:
        print(f"\nCPU: {cpu['model_name']}; flags: {', '.join(f for f, on in cpu['flags'].items() if on)}")


def main() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", default=str(WORK), help="where the models are (default build/bench-decode or $AWQKIT_BENCH_DECODE_DIR)")
    common.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("setup", parents=[common], help="the HF model, awqkit checkpoints and llama.cpp Q4_0 GGUFs (skips what exists)")
    s.add_argument("--smollm2", default=str(SMOLLM2), help="float SmolLM2-135M Hugging Face folder")
    s.add_argument("--llama-src", default=str(LLAMA_SRC))
    s.add_argument("--llama-build", default=str(LLAMA_BUILD))
    s.set_defaults(fn=setup)

    for cmd, fn, help_ in (("llama", llama, "llama-bench pp/tg of each Q4_0 GGUF"),
                           ("awqkit", awqkit_bench, "pp/tg of each reloaded awqkit checkpoint, as llama-bench measures")):
        p = sub.add_parser(cmd, parents=[common], help=help_)
        p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
        p.add_argument("-r", "--repetitions", type=int, default=5)
        p.add_argument("-p", "--n-prompt", type=int, default=512)
        p.add_argument("-n", "--n-gen", type=int, default=128)
        if cmd == "llama":
            p.add_argument("--llama-build", default=str(LLAMA_BUILD))
        else:
            p.add_argument("--runtime", choices=sorted(RUNTIMES), default="transformers")
        p.set_defaults(fn=fn)

    pr = sub.add_parser("profile", parents=[common], help="a native decode step: INT4 calls alone, the rest, the head")
    pr.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    pr.add_argument("-r", "--repetitions", type=int, default=5)
    pr.add_argument("-n", "--n-gen", type=int, default=128)
    pr.set_defaults(fn=profile)

    a = sub.add_parser("accuracy", parents=[common], help="WikiText-2 perplexity of the native runtime per head and prefill mode")
    a.add_argument("--text", default=str(ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.lf.txt"))
    a.add_argument("--windows", type=int, default=32)
    a.add_argument("--seqlen", type=int, default=512)
    a.set_defaults(fn=accuracy)

    t = sub.add_parser("table", help="llama.cpp and awqkit results as one markdown table")
    t.set_defaults(fn=table)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
