"""Decode speed of a reloaded AWQ checkpoint through the ecosystem's tools (issue 19): the
plain eager ``generate`` against a static KV cache with generate's own ``torch.compile`` of
the decode step (``CompileConfig``; on the CPU transformers compiles only when asked:
``_compile_all_devices``), where ``AWQLinear`` runs as the custom op ``awqkit::int4_linear``
inside the compiled graph. Also the per-call cost of ``AWQLinear`` around the kernel.

Batch 1, greedy, ``--new-tokens`` after the prompt. Decode rate = (new_tokens - 1) / (time of
generate(new_tokens) - time of generate(1)): the prefill and the first token cancel out.
Each thread count and inductor wrapper (Python, the default, or C++: ``cpp_wrapper``) runs in
its own process with an empty inductor cache (inductor writes the thread count into the code it
generates), so the compile time is a cold one; the warm one (the same process, a second model)
is recorded too, and the compiled rate with dynamo's guards skipped between steps.

    flock /tmp/awqkit-bench.lock nice python3 benchmarks/bench_decode_compile.py \\
        --model build/streaming/smollm2-mem --threads 1 2 --out benchmarks/results/bench_decode_compile.json

``--model``: an AWQ gemm checkpoint folder (``awqkit quantize`` output). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def call_overhead(model, threads: int) -> list[dict]:
    """us per call at M=1: PackedLinear on a numpy row, AWQLinear.forward before issue 19 (kept
    here as the reference), forward now, the module call (nn.Module.__call__ included), the op."""
    import numpy as np
    import torch

    from awqkit.model import AWQLinear

    def old_forward(mod, x):
        shape = x.shape
        x2 = x.detach().reshape(-1, mod.in_features).to(torch.float32).contiguous().numpy()
        y = torch.from_numpy(np.asarray(mod.lin(x2)))
        return y.view(*shape[:-1], mod.out_features).to(x.dtype)

    def us(f, n=2000, r=15):
        return statistics.median(timeit.repeat(f, number=n, repeat=r)) / n * 1e6

    seen: dict[tuple[int, int], AWQLinear] = {}
    for m in model.modules():
        if isinstance(m, AWQLinear):
            seen.setdefault((m.out_features, m.in_features), m)
    op = torch.ops.awqkit.int4_linear.default
    rows = []
    with torch.no_grad():
        for (n, k), m in sorted(seen.items()):
            x = torch.randn(1, 1, k)
            xn = x.reshape(1, k).numpy()
            lin = m.lin
            kernel = us(lambda: lin(xn))  # noqa: B023 (called at once)
            row = {"N": n, "K": k, "threads": threads, "kernel_us": kernel}
            for name, f in (("old_forward", lambda: old_forward(m, x)), ("forward", lambda: m.forward(x)),  # noqa: B023
                            ("module_call", lambda: m(x)), ("op", lambda: op(x, m.layer_id, n))):  # noqa: B023
                row[name + "_overhead_us"] = us(f) - kernel
            rows.append(row)
    return rows


def step_parts(model) -> dict:
    """ms per decode token of two parts timed alone at M=1: every AWQLinear kernel call once, in
    the model's order (weights streamed as in decode), and the float32 lm_head."""
    import numpy as np
    import torch

    from awqkit.model import AWQLinear

    lins = [m.lin for m in model.modules() if isinstance(m, AWQLinear)]
    xs = [np.random.default_rng(0).standard_normal((1, lin.in_features)).astype(np.float32) for lin in lins]

    def all_kernels():
        for lin, x in zip(lins, xs):
            lin(x)

    head = model.get_output_embeddings()
    h = torch.randn(1, 1, head.in_features)
    with torch.no_grad():
        kernels = statistics.median(timeit.repeat(all_kernels, number=10, repeat=7)) / 10
        head_s = statistics.median(timeit.repeat(lambda: head(h), number=10, repeat=7)) / 10
    return {"awqlinear_calls": len(lins), "kernels_ms": kernels * 1e3, "head_ms": head_s * 1e3}


def child(args) -> dict:
    import torch

    import awqkit
    from awqkit.model import load_quantized

    torch.set_num_threads(args.threads)
    awqkit._core.set_num_threads(args.threads)
    t = time.perf_counter()
    model, tok = load_quantized(args.model, return_tokenizer=True)
    load_s = time.perf_counter() - t
    ids = tok(PROMPT, return_tensors="pt").input_ids
    res: dict = {"threads": args.threads, "variant": args.variant, "prompt_tokens": int(ids.shape[1]), "new_tokens": args.new_tokens, "load_s": load_s,
                 "loadavg_start": os.getloadavg()}

    def generate(n: int, **kw):
        t = time.perf_counter()
        out = model.generate(ids, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.eos_token_id, **kw)
        return out, time.perf_counter() - t

    def decode_rate(**kw) -> tuple[dict, torch.Tensor]:
        t128, t1, out = [], [], None
        for _ in range(args.reps):
            out, t = generate(args.new_tokens, **kw)
            t128.append(t)
            t1.append(generate(1, **kw)[1])
        d = statistics.median(t128) - statistics.median(t1)
        return {"decode_tok_s": (args.new_tokens - 1) / d, "ms_per_token": d / (args.new_tokens - 1) * 1e3,
                "generate_s": statistics.median(t128), "prefill_plus_1_s": statistics.median(t1)}, out

    if args.call_overhead:
        res["call_overhead"] = call_overhead(model, args.threads)
    res["parts"] = step_parts(model)
    with torch.no_grad():
        generate(4)  # warm: first-call allocations, tokenizer, kernels' page faults
        res["eager"], ref = decode_rate()
        res["eager_static"], out = decode_rate(cache_implementation="static")
        res["eager_static"]["same_tokens"] = bool(torch.equal(out, ref))

        from transformers import CompileConfig

        # inductor's default Python wrapper, or its C++ wrapper (``cpp_wrapper``: the graph's calls made from C++;
        # the op's Python kernel is reached through the dispatcher as before). torch.compile takes a mode or options.
        opts = {"mode": "default"} if args.variant == "python_wrapper" else {"mode": None, "options": {"cpp_wrapper": True}}
        config = CompileConfig(fullgraph=True, backend=args.backend, **opts)
        config._compile_all_devices = True  # transformers compiles on accelerators only unless asked
        kw = dict(cache_implementation="static", compile_config=config)
        out, first = generate(args.new_tokens, **kw)
        res["compiled"], out2 = decode_rate(**kw)
        res["compiled"]["first_generate_s"] = first
        res["compiled"]["compile_s"] = first - res["compiled"]["generate_s"]
        res["compiled"]["same_tokens"] = bool(torch.equal(out, ref) and torch.equal(out2, ref))
        res["compiled"]["first_diff"] = next((i for i in range(ref.shape[1]) if out2[0, i] != ref[0, i]), None)
        # The same graphs with dynamo's guards evaluated only where they tell graphs apart (unsafe in general:
        # here nothing the guards watch changes between steps).
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            res["compiled_skip_guards"], out = decode_rate(**kw)
        res["compiled_skip_guards"]["same_tokens"] = bool(torch.equal(out, ref))
        # Warm compile: a second model in this process (dynamo traces again; inductor's caches are filled).
        model2 = load_quantized(args.model)
        torch._dynamo.reset()
        model, model_first = model2, model
        out, first = generate(args.new_tokens, **kw)
        res["compiled"]["warm_first_generate_s"] = first
        res["compiled"]["warm_compile_s"] = first - res["compiled"]["generate_s"]
        del model_first
    res["tokens_text"] = tok.decode(ref[0, ids.shape[1]:])
    res["loadavg_end"] = os.getloadavg()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="AWQ gemm checkpoint folder")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--variants", nargs="+", default=["python_wrapper", "cpp_wrapper"], choices=["python_wrapper", "cpp_wrapper"],
                    help="inductor's wrapper code: Python (default) or C++ (cpp_wrapper); one process each")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--call-overhead", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.threads, args.variant = args.threads[0], args.variants[0]
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    import torch
    import transformers

    runs = []
    for n in args.threads:
        for i, variant in enumerate(args.variants):
            with tempfile.TemporaryDirectory(prefix="awqkit-inductor-") as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                cmd = [sys.executable, __file__, "--child", "--model", args.model, "--threads", str(n), "--new-tokens", str(args.new_tokens),
                       "--reps", str(args.reps), "--backend", args.backend, "--variants", variant] + (["--call-overhead"] if i == 0 else [])
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"child for {n} thread(s), {variant} failed (exit {proc.returncode})")
                runs.append(json.loads(line[len("RESULT "):]))
    from awqkit.model.method_comparison import _cpu_name

    result = {"model": os.path.abspath(args.model), "cpu": _cpu_name(), "torch": torch.__version__, "transformers": transformers.__version__,
              "backend": args.backend, "runs": runs}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(f"| threads | inductor wrapper | eager tok/s | eager + static cache tok/s | static cache + torch.compile ({args.backend}) tok/s | "
          "same, guards skipped | compile s (cold / warm) | same greedy tokens | kernels alone ms | lm_head alone ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        c, p = r["compiled"], r["parts"]
        same = c["same_tokens"] and r["eager_static"]["same_tokens"] and r["compiled_skip_guards"]["same_tokens"]
        print(f"| {r['threads']} | {r['variant']} | {r['eager']['decode_tok_s']:.1f} | {r['eager_static']['decode_tok_s']:.1f} | "
              f"{c['decode_tok_s']:.1f} | {r['compiled_skip_guards']['decode_tok_s']:.1f} | {c['compile_s']:.0f} / {c['warm_compile_s']:.0f} | "
              f"{'yes' if same else 'no'} | {p['kernels_ms']:.2f} ({p['awqlinear_calls']} calls) | {p['head_ms']:.2f} |")
    print("\n| N x K | threads | kernel us | overhead us: old forward | forward | module call | op |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        for o in r.get("call_overhead", []):
            print(f"| {o['N']}x{o['K']} | {o['threads']} | {o['kernel_us']:.2f} | {o['old_forward_overhead_us']:.2f} | "
                  f"{o['forward_overhead_us']:.2f} | {o['module_call_overhead_us']:.2f} | {o['op_overhead_us']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
