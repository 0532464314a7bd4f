"""AWQ search speed: native Gram-based search vs the step-by-step numpy reference, one run.

    flock /tmp/awqkit-bench.lock python3 benchmarks/bench_search.py [--quick]

For each layer shape (N x K, torch layout) and token count: the native time (Gram
accumulation + 21-candidate scale search: duo scaling, n_grid=20, plus s=1) and the numpy
reference (AutoAWQ's method: x W^T for every candidate in float32 BLAS, plain-numpy
quantizer). On big shapes the reference runs only its first few candidates; its total is
setup + 21 x the median candidate time (the cost of a candidate does not depend on which
it is). Then a projection for a whole Llama-7B (32 layers x 4 mappings), the clip search,
and whether asymmetric clipping helps. Prints markdown; times are medians.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import awqkit
import awqkit.isa
from awqkit.reference import direct_loss_ref, scale_candidate_ref, search_clip_ref, w_mean_ref, x_mean_ref

# (N, K, tokens, reference candidates timed)
CASES = [
    (576, 576, 4096, 21),
    (576, 576, 16384, 21),
    (576, 576, 65536, 5),
    (1536, 576, 16384, 21),
    (576, 1536, 16384, 21),
    (4096, 4096, 4096, 3),
    (4096, 4096, 16384, 2),
    (12288, 4096, 16384, 1),
    (11008, 4096, 16384, 1),
    (4096, 11008, 16384, 1),
]
QUICK = [c for c in CASES if c[1] <= 1536] + [(4096, 4096, 16384, 2)]
N_CAND = 21  # n_grid = 20 duo candidates + s = 1


def group_size(k):
    return 128 if k % 128 == 0 else 64


def planted(rng, t, k):
    x = rng.standard_normal((t, k), dtype=np.float32)
    ch = rng.choice(k, size=max(4, k // 256), replace=False)
    x[:, ch] *= rng.uniform(20, 100, size=ch.size).astype(np.float32)
    return x


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def fmt(t):
    return f"{t * 1e3:.0f} ms" if t < 1 else f"{t:.2f} s"


def bench_case(rng, n, k, t, m, repeat):
    gs = group_size(k)
    x = planted(rng, t, k)
    ws = [(0.02 * rng.standard_normal((n, k), dtype=np.float32))]
    rep = repeat if k <= 1536 else 1
    t_gram, stats = timed(lambda: awqkit.ActivationStats(k, gram=True).update(x), rep)
    t_search, res = timed(lambda: awqkit.search_scale(stats, ws, group_size=gs), rep)
    t_f32 = None
    if awqkit.isa.amx_active() and n * k * k <= 4096**3:  # the float32 tiles too, where affordable
        with awqkit.isa.use_amx(False):
            t_f32, res32 = timed(lambda: awqkit.search_scale(stats, ws, group_size=gs), rep)
        assert res32.best == res.best
    # Reference: setup once (x_mean, w_mean, full-precision outputs), then m candidates.
    t0 = time.perf_counter()
    x_mean, w_mean = x_mean_ref(x), w_mean_ref(ws, gs)
    org = [x @ w.T for w in ws]
    t_setup = time.perf_counter() - t0
    cand_times, rel = [], 0.0
    for c in range(m):
        # candidates 0..19: duo ratio c/20; candidate 20: s = 1 (as the native search orders them)
        s = scale_candidate_ref(x_mean, w_mean, c / 20, True) if c < 20 else np.ones(k, np.float32)
        t0 = time.perf_counter()
        loss = direct_loss_ref(x, ws, s, 4, gs, dtype=np.float32, org_out=org)
        cand_times.append(time.perf_counter() - t0)
        rel = max(rel, abs(res.losses[c] / loss - 1))
    t_ref = t_setup + N_CAND * float(np.median(cand_times))
    ours = t_gram + t_search
    return dict(n=n, k=k, t=t, m=m, gram=t_gram, search=t_search, f32=t_f32, ours=ours, ref=t_ref, speedup=t_ref / ours,
                per_cand=t_search / N_CAND, ref_cand=float(np.median(cand_times)), rel=rel)


def projection(rows):
    """Llama-7B: per layer qkv 12288x4096, o 4096x4096, gate+up 2x11008x4096 (search cost is
    linear in N), down 4096x11008; Gram matrices for the three 4096-wide inputs and the 11008-wide one."""
    by = {(r["n"], r["k"], r["t"]): r for r in rows}
    keys = [(12288, 4096, 16384), (4096, 4096, 16384), (11008, 4096, 16384), (4096, 11008, 16384)]
    if not all(kk in by for kk in keys):
        return None
    qkv, o, gu, down = (by[kk] for kk in keys)
    g4 = o["gram"]
    ours = 32 * (3 * g4 + down["gram"] + qkv["search"] + o["search"] + 2 * gu["search"] + down["search"])
    ref = 32 * (qkv["ref"] + o["ref"] + 2 * gu["ref"] + down["ref"])
    gram64k = 32 * 3 * (3 * g4 + down["gram"])  # Gram time is linear in tokens: 64k = 4 x 16k
    return ours, ref, ours + gram64k


def bench_clip(rng, quick):
    n, k, t = (1024, 1024, 4096) if quick else (4096, 4096, 16384)
    x = planted(rng, t, k)
    w = 0.02 * rng.standard_normal((n, k), dtype=np.float32)
    rows = []
    for label, ns, asym in (("sampled (512)", 512, False), ("exact (all tokens)", None, False),
                            ("sampled, asymmetric", 512, True)):
        dt, res = timed(lambda: awqkit.search_clip(x, w, n_sample_tokens=ns, asymmetric=asym), 1)
        rows.append((label, dt, res))
    sub = 256  # reference on the first rows only, scaled to N
    t0 = time.perf_counter()
    mv, _, _ = search_clip_ref(x, w[:sub], dtype=np.float32)
    t_ref = (time.perf_counter() - t0) * n / sub
    equal = float(np.mean(rows[0][2].max_val[:sub] == mv))
    return n, k, t, rows, t_ref, equal


def clip_quality(rng, data_dir):
    """Output MSE of RTN vs symmetric vs asymmetric clipping (after the AWQ scale search)."""
    cases = []
    k = 1024
    x = planted(rng, 4096, k)
    w = 0.02 * rng.standard_normal((1024, k), dtype=np.float32)
    w[rng.random(w.shape) < 0.001] *= 8  # a few outlier weights
    cases.append(("synthetic 1024x1024, salient channels + outlier weights", x, [w], 128))
    model = Path(data_dir) / "stories260K-hf" if data_dir else None
    if model is not None and model.exists():
        try:
            cases += stories_cases(Path(data_dir))
        except Exception as e:  # torch/transformers missing: report the synthetic case only
            print(f"(stories260K case skipped: {e})", file=sys.stderr)
    out = []
    for name, x, ws, gs in cases:
        x64 = x.astype(np.float64)
        res = awqkit.search_scale(x, ws, group_size=gs)
        s = res.scales
        xs = (x / s).astype(np.float32)
        sse = {"rtn": 0.0, "sym": 0.0, "asym": 0.0}  # squared errors summed over every output
        count = 0
        for w in ws:
            ws_ = awqkit.scale_linear_inputs(w, s)
            ref_out = x64 @ w.astype(np.float64).T
            count += ref_out.size
            sse["rtn"] += np.sum((ref_out - x64 @ (awqkit.pseudo_quantize(w, group_size=gs)).T.astype(np.float64)) ** 2)
            for key, asym in (("sym", False), ("asym", True)):
                c = awqkit.search_clip(xs, ws_, group_size=gs, asymmetric=asym)
                wq = awqkit.pseudo_quantize(awqkit.apply_clip(ws_, c), group_size=gs) / s
                sse[key] += np.sum((ref_out - x64 @ wq.T.astype(np.float64)) ** 2)
        # res.loss is the same objective (mean over tokens and all outputs) for the scales alone
        out.append((name, sse["rtn"] / count, res.loss, sse["sym"] / count, sse["asym"] / count))
    return out


def stories_cases(data_dir):
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(data_dir / "stories260K-hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(data_dir / "stories260K-hf", torch_dtype=torch.float32).eval()
    ids = tok((data_dir / "tinystories" / "tinystories_sample.txt").read_text(), return_tensors="pt").input_ids[:, :512]
    captured = {}
    layers = model.model.layers
    hooks = []
    for i, layer in enumerate(layers):
        for name, mod in (("qkv", layer.self_attn.q_proj), ("gate_up", layer.mlp.gate_proj)):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, key=(i, name): captured.__setitem__(key, a[0].reshape(-1, a[0].shape[-1]).numpy().copy())))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    w = lambda m: m.weight.detach().numpy().astype(np.float32)  # noqa: E731
    cases = []
    for i, layer in enumerate(layers):
        a, mlp = layer.self_attn, layer.mlp
        cases.append((f"stories260K layer {i} q/k/v", captured[(i, "qkv")], [w(a.q_proj), w(a.k_proj), w(a.v_proj)], 32))
        cases.append((f"stories260K layer {i} gate/up", captured[(i, "gate_up")], [w(mlp.gate_proj), w(mlp.up_proj)], 32))
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small shapes and 4096x4096 only")
    ap.add_argument("--repeat", type=int, default=3, help="repeats for K <= 1536 (big shapes run once)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    print(f"awqkit search benchmark: ISA {awqkit.active_isa()}, {awqkit.num_threads()} threads, 4-bit, "
          f"group 128 (64 when K=576), fp16 scales, n_grid=20 duo + identity = {N_CAND} candidates\n")
    print(f"loss tiles: {'AMX-BF16 (hi/lo split)' if awqkit.isa.amx_active() else 'float32 ' + awqkit.active_isa()}\n")
    print("| N x K | tokens | Gram (ours) | search (ours) | search, float32 tiles | ours total | per candidate | numpy ref total | ref per candidate | ref candidates timed | speedup | max loss rel. diff vs ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n, k, t, m in QUICK if args.quick else CASES:
        r = bench_case(rng, n, k, t, m, args.repeat)
        rows.append(r)
        f32 = fmt(r["f32"]) if r["f32"] is not None else "-"
        print(f"| {n} x {k} | {t // 1024}k | {fmt(r['gram'])} | {fmt(r['search'])} | {f32} | {fmt(r['ours'])} | {fmt(r['per_cand'])} | "
              f"{fmt(r['ref'])} | {fmt(r['ref_cand'])} | {m}{'' if m == N_CAND else ' (scaled to 21)'} | "
              f"**{r['speedup']:.1f}x** | {r['rel']:.1e} |", flush=True)
    proj = projection(rows)
    if proj:
        ours, ref, ours64 = proj
        print(f"\nProjected Llama-7B scale search (32 layers x 4 mappings, 16k tokens): ours {ours / 60:.1f} min "
              f"(with 64k tokens: {ours64 / 60:.1f} min), numpy reference {ref / 60:.0f} min ({ref / ours:.1f}x).")
    n, k, t, crow, t_ref, equal = bench_clip(rng, args.quick)
    print(f"\nClip search, {n} x {k}, {t // 1024}k tokens, group 128, 10 shrinks:\n")
    print("| mode | time (ours) | loss before | loss after |")
    print("|---|---|---|---|")
    for label, dt, res in crow:
        print(f"| {label} | {fmt(dt)} | {res.loss_before:.4g} | {res.loss_after:.4g} |")
    print(f"\nnumpy reference (sampled 512, float32, timed on 256 rows, scaled): {fmt(t_ref)} "
          f"({t_ref / crow[0][1]:.0f}x); clip values equal to the reference on {equal:.1%} of the groups timed.")
    print("\nAsymmetric clipping: output MSE mean((x W^T - x Wq^T)^2) after scale search + clip:\n")
    print("| layer input | RTN | AWQ scales | + symmetric clip | + asymmetric clip | asym vs sym |")
    print("|---|---|---|---|---|---|")
    data_dir = os.environ.get("AWQKIT_DATA_DIR") or str(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for name, rtn, awq, sym, asym in clip_quality(np.random.default_rng(1), data_dir):  # own seed: reproducible alone
        print(f"| {name} | {rtn:.4g} | {awq:.4g} | {sym:.4g} | {asym:.4g} | {100 * (asym / sym - 1):+.1f}% |")
    print(f"\n(total benchmark time {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
