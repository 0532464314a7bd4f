#!/usr/bin/env python3
"""Fused INT4 GEMM/GEMV benchmark: awqkit.PackedLinear against numpy and torch fp32.

    flock /tmp/awqkit-bench.lock python3 benchmarks/bench_gemm.py [--threads 1,2] [--quick]

Runs one worker process per thread count (OpenBLAS, OpenMP and torch thread pools are
set before numpy is imported) and prints markdown tables plus the machine's limits
measured in the same run: a native AVX-512 streaming-read probe over a 1 GiB buffer
(same thread count) and an FMA peak probe.

* decode (M = 1, 8): every call goes to the next of enough copies of the layer to
  stream >= 1 GiB (awqkit packed bytes; numpy/torch fp32 bytes), so weights come from
  DRAM as in a real decode step over all layers (the L3 here is reported as up to
  480 MB). GB/s counts the bytes the kernel must read (packed codes, scales, zeros).
  The copies sit back to back in call order, as ``load_quantized`` places a model's
  layers (``awqkit.contiguous_layers``; numpy/torch: one [copies, N, K] array);
  "scattered" times copies allocated one by one, "native loop" the same calls made from
  C++ (no Python between layers, as ggml's C graph runs them), "read ceiling" that loop
  with the arithmetic left out: each call only reads its layer's blocks, split over the
  threads and synchronised per call as the kernel is (what any kernel called once per
  layer could reach; ``_bench_probes.probe_read_rotation``).
* prefill (M = 64, 512): warm weights, GFLOP/s = 2*M*N*K / time; "out=" writes into a
  preallocated output (no fresh pages per call, which a model's forward can arrange).
  "awqkit" is the automatic path (the digits product: VNNI GEMV below 6 rows, AMX-INT8
  tiles from there where the CPU has them); "float GEMV" / "float GEMM" are the FMA
  kernels (``kernel="gemv"`` / ``"gemm"``) that run where AMX / VNNI are missing.
Medians over repetitions; ratios are computed within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

SHAPES = [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]  # (N, K)
DECODE_MS = (1, 8)
PREFILL_MS = (64, 512)
ROTATE_BYTES = 1 << 30


def median_time(fn, min_reps: int = 3, max_reps: int = 15, budget_s: float = 0.6) -> float:
    fn()  # warm up
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def aligned_buffer(np, nbytes: int):
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off : off + nbytes]


def rotation_time(calls) -> float:
    """Median seconds per call over passes through a list of zero-argument calls."""

    def one_pass():
        for c in calls:
            c()

    return median_time(one_pass, min_reps=3, max_reps=5, budget_s=1.0) / len(calls)


def worker(threads: int, quick: bool) -> dict:
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import awqkit
    from awqkit import _bench_probes, _core  # _bench_probes: built by make bench / make dev (AWQKIT_BENCH_PROBES)

    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
    except ImportError:  # torch is optional: its columns stay empty
        torch = None
    _core.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {"threads": threads, "isa": awqkit.active_isa(), "rows": []}

    # Limits: streaming-read bandwidth over 1 GiB, fp32 FMA peak.
    buf = aligned_buffer(np, ROTATE_BYTES)
    buf[:] = 1
    out["probe_gbs"] = buf.nbytes / median_time(lambda: _bench_probes.probe_stream_read(buf), 5, 7, 2.0) / 1e9
    del buf
    iters = 2_000_000
    out["fma_gflops"] = _bench_probes.probe_fma_peak(iters) / median_time(lambda: _bench_probes.probe_fma_peak(iters), 3, 5, 1.0) / 1e9
    # Fixed cost of one call (Python, pybind11, OpenMP fork/join): a 64x64 layer, M = 1, warm.
    tiny = awqkit.pack_awq(awqkit.quantize(rng.standard_normal((64, 64), dtype=np.float32), bits=4, group_size=64))
    tiny_lin = awqkit.PackedLinear.from_awq(tiny["qweight"], tiny["qzeros"], tiny["scales"], 64)
    x_tiny = rng.standard_normal((1, 64), dtype=np.float32)
    out["call_us"] = median_time(lambda: [tiny_lin(x_tiny) for _ in range(1000)], 3, 7, 1.0) / 1000 * 1e6

    shapes = SHAPES[:4] if quick else SHAPES
    rotate = ROTATE_BYTES // 4 if quick else ROTATE_BYTES
    for n, k in shapes:
        gs = 128 if k % 128 == 0 else 64
        w = (rng.standard_normal((n, k), dtype=np.float32) * 0.02).astype(np.float32)
        qt = awqkit.quantize(w, bits=4, group_size=gs)
        awq = awqkit.pack_awq(qt)
        lin = awqkit.PackedLinear.from_awq(awq["qweight"], awq["qzeros"], awq["scales"], gs)
        wdq = awqkit.dequantize(qt)
        del w, qt
        wt = torch.from_numpy(wdq) if torch is not None else None

        # Decode: rotate through copies so the weights stream from DRAM. As load_quantized
        # places a model's layers, the copies sit back to back in call order (one arena);
        # "scattered" repeats the run on copies allocated one by one.
        copies = math.ceil(rotate / lin.nbytes)
        lins = [lin] + [awqkit.PackedLinear(lin.packed.copy(), n, k, gs) for _ in range(copies - 1)]
        scattered = [awqkit.PackedLinear(lin.packed.copy(), n, k, gs) for _ in range(copies)]
        awqkit.contiguous_layers(lins)
        t_read = _bench_probes.probe_read_rotation(lins, 5)
        ws = list(np.broadcast_to(wdq, (math.ceil(rotate / wdq.nbytes),) + wdq.shape).copy())  # one array, in order
        for m in DECODE_MS:
            x = rng.standard_normal((m, k), dtype=np.float32)
            t_awq = rotation_time([(lambda l=l: l(x)) for l in lins])
            t_scattered = rotation_time([(lambda l=l: l(x)) for l in scattered])
            # The same calls from a C++ loop: the kernel without Python between layers.
            t_native = _bench_probes.probe_decode_rotation(lins, x, 5)
            t_gemv = rotation_time([(lambda l=l: l(x, kernel="gemv")) for l in lins])
            t_np = rotation_time([(lambda v=v: x @ v.T) for v in ws])
            row = {"N": n, "K": k, "gs": gs, "M": m, "awq_s": t_awq, "scattered_s": t_scattered, "native_s": t_native,
                   "read_s": t_read, "gemv_s": t_gemv,
                   "numpy_s": t_np}
            row["packed_bytes"] = lin.nbytes
            if threads == 1:  # accuracy does not depend on threads
                truth = x.astype(np.float64) @ wdq.astype(np.float64).T
                norm = np.linalg.norm(truth)
                row["err_auto"] = float(np.linalg.norm(lin(x) - truth) / norm)
                row["err_gemv"] = float(np.linalg.norm(lin(x, kernel="gemv") - truth) / norm)
                row["err_numpy"] = float(np.linalg.norm(x @ wdq.T - truth) / norm)
            if torch is not None:
                xt = torch.from_numpy(x)
                wts = [torch.from_numpy(v) for v in ws]
                with torch.inference_mode():
                    row["torch_s"] = rotation_time([(lambda v=v: F.linear(xt, v)) for v in wts])
            out["rows"].append(row)
        del lins, scattered, ws

        for m in PREFILL_MS:
            x = rng.standard_normal((m, k), dtype=np.float32)
            big = 2.0 * m * n * k > 2e10
            reps = dict(min_reps=2 if big else 3, max_reps=5 if big else 25, budget_s=0.5)
            row = {"N": n, "K": k, "gs": gs, "M": m, "packed_bytes": lin.nbytes}
            row["awq_s"] = median_time(lambda: lin(x), **reps)
            o = np.empty((m, n), np.float32)
            row["awq_out_s"] = median_time(lambda: lin(x, out=o), **reps)
            row["int8_s"] = median_time(lambda: lin(x, activation="int8"), **reps)
            row["float_gemm_s"] = median_time(lambda: lin(x, kernel="gemm"), **reps)
            if m == PREFILL_MS[-1] and threads == 1:  # accuracy does not depend on threads
                truth = x.astype(np.float64) @ wdq.astype(np.float64).T
                norm = np.linalg.norm(truth)
                row["err_auto"] = float(np.linalg.norm(lin(x) - truth) / norm)
                row["err_gemm"] = float(np.linalg.norm(lin(x, kernel="gemm") - truth) / norm)
                row["err_int8"] = float(np.linalg.norm(lin(x, activation="int8") - truth) / norm)
                row["err_numpy"] = float(np.linalg.norm(x @ wdq.T - truth) / norm)
            row["numpy_s"] = median_time(lambda: x @ wdq.T, **reps)
            if torch is not None:
                xt = torch.from_numpy(x)
                with torch.inference_mode():
                    row["torch_s"] = median_time(lambda: F.linear(xt, wt), **reps)
            out["rows"].append(row)
    return out


def _rows(results: list[dict], keep):
    """(worker result, row) for every row of every thread count that ``keep(row)`` accepts."""
    for r in results:
        for row in r["rows"]:
            if keep(row):
                yield r, row


def fmt_table(results: list[dict]) -> str:
    lines = []
    lines.append("Machine limits (native probes, same run):\n")
    lines.append("| threads | ISA | stream-read GB/s (1 GiB) | fp32 FMA peak GFLOP/s | call overhead us (64x64, M=1) |")
    lines.append("|---:|---|---:|---:|---:|")
    for r in results:
        call = f"{r['call_us']:.1f}" if "call_us" in r else "-"
        lines.append(f"| {r['threads']} | {r['isa']} | {r['probe_gbs']:.1f} | {r['fma_gflops']:.0f} | {call} |")
    lines.append("\nDecode (weights streamed from DRAM: rotation over >= 1 GiB of copies, back to back in call order;"
                 " 'scattered': copies allocated one by one):\n")
    lines.append(
        "| N x K | M | thr | awqkit us | GB/s packed | / probe | scattered / probe | native loop / probe "
        "| read ceiling / probe | numpy us "
        "| torch us | x numpy "
        "| x torch | float GEMV us | float GEMV / probe |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, row in _rows(results, lambda row: row["M"] in DECODE_MS):
        gbs = row["packed_bytes"] / row["awq_s"] / 1e9
        ts = row.get("torch_s")
        scat, native, ceiling = (
            f"{row['packed_bytes'] / row[key] / 1e9 / r['probe_gbs']:.2f}" if key in row else "-"
            for key in ("scattered_s", "native_s", "read_s")
        )
        lines.append(
            f"| {row['N']}x{row['K']} | {row['M']} | {r['threads']} | {row['awq_s'] * 1e6:.1f} | {gbs:.1f} | "
            f"{gbs / r['probe_gbs']:.2f} | {scat} | {native} | {ceiling} | {row['numpy_s'] * 1e6:.1f} | {ts * 1e6 if ts else float('nan'):.1f} | "
            f"{row['numpy_s'] / row['awq_s']:.1f} | {(ts / row['awq_s']) if ts else float('nan'):.1f} | "
            f"{row['gemv_s'] * 1e6:.1f} | {row['packed_bytes'] / row['gemv_s'] / 1e9 / r['probe_gbs']:.2f} |"
        )
    lines.append("\nPrefill (warm weights), GFLOP/s = 2*M*N*K / time:\n")
    lines.append(
        "| N x K | M | thr | awqkit | awqkit out= | numpy fp32 | torch fp32 | x numpy | x torch | / FMA peak "
        "| float GEMM | float GEMM x numpy | awqkit int8 | int8 x numpy |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, row in _rows(results, lambda row: row["M"] in PREFILL_MS):
        fl = 2.0 * row["M"] * row["N"] * row["K"] / 1e9
        a, nps, ts = fl / row["awq_s"], fl / row["numpy_s"], row.get("torch_s")
        tg = fl / ts if ts else float("nan")
        lines.append(
            f"| {row['N']}x{row['K']} | {row['M']} | {r['threads']} | {a:.0f} | {fl / row['awq_out_s']:.0f} | "
            f"{nps:.0f} | {tg:.0f} | "
            f"{a / nps:.2f} | {a / tg:.2f} | {a / r['fma_gflops']:.2f} | {fl / row['float_gemm_s']:.0f} | "
            f"{row['numpy_s'] / row['float_gemm_s']:.2f} | {fl / row['int8_s']:.0f} | "
            f"{row['numpy_s'] / row['int8_s']:.2f} |"
        )
    lines.append("\nAccuracy (x ~ N(0, 1)), relative Frobenius error against float64 x @ W_deq.T:\n")
    lines.append("| N x K | group | M | numpy fp32 | awqkit (auto) | awqkit float GEMV / GEMM | awqkit int8 |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for _, row in _rows(results, lambda row: "err_numpy" in row):
        auto = row["err_auto"]
        flt = row.get("err_gemv", row.get("err_gemm"))
        gemv = f"{flt:.1e}" if flt is not None else "-"
        int8 = f"{row['err_int8']:.1e}" if "err_int8" in row else "-"
        lines.append(
            f"| {row['N']}x{row['K']} | {row['gs']} | {row['M']} | {row['err_numpy']:.1e} | {auto:.1e} | "
            f"{gemv} | {int8} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--quick", action="store_true", help="first four shapes, 256 MiB rotation")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.quick)))
        return
    results = []
    for nt in (int(t) for t in args.threads.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS=str(nt), OPENBLAS_NUM_THREADS=str(nt), MKL_NUM_THREADS=str(nt))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(nt)] + (["--quick"] if args.quick else [])
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"[{nt} thread(s): {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(fmt_table(results))


if __name__ == "__main__":
    main()
