"""Quantizer speed: native (each ISA) vs the numpy reference, same data, one run.

    python benchmarks/bench_quant.py [--repeat 7]

Prints a markdown table of medians; the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import awqkit
from awqkit.reference import pseudo_quantize_ref

SHAPES = [(576, 576), (1536, 576), (4096, 4096), (11008, 4096)]


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    isas = awqkit.available_isas()
    print(f"pseudo_quantize, 4-bit, group 64 (576-wide) / 128, fp16 scales, {awqkit.num_threads()} threads; median of {args.repeat}\n")
    print("| shape (N x K) | numpy reference | " + " | ".join(f"{i}" for i in isas) + " | best vs numpy | GB/s read (best) |")
    print("|---|---|" + "---|" * len(isas) + "---|---|")
    for n, k in SHAPES:
        w = rng.standard_normal((n, k)).astype(np.float32)
        gs = 128 if k % 128 == 0 else 64
        ref = median_time(lambda: pseudo_quantize_ref(w, 4, gs), max(2, args.repeat // 3))
        times = []
        for isa in isas:
            with awqkit.use_isa(isa):
                times.append(median_time(lambda: awqkit.pseudo_quantize(w, group_size=gs), args.repeat))
        best = min(times)
        cells = " | ".join(f"{t * 1e3:.2f} ms" for t in times)
        print(f"| {n} x {k} | {ref * 1e3:.1f} ms | {cells} | {ref / best:.0f}x | {w.nbytes / best / 1e9:.1f} |")


if __name__ == "__main__":
    main()
