"""A/B of the fused INT4 layer between two builds: run it once per build (PYTHONPATH picks the
build), alternating, under the benchmark lock. Decode M = 1 streams each layer's weights from a
rotation of copies (>= 512 MiB); prefill M = 64 reuses one layer (warm). Prints one JSON line.

    for b in /path/to/base/python python; do
      flock /tmp/awqkit-bench.lock env PYTHONPATH=$b OMP_NUM_THREADS=1 python3 benchmarks/ab_int4_linear.py 1
    done
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import awqkit
from awqkit import PackedLinear


def main(threads: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    res: dict[str, float] = {}
    with awqkit.use_threads(threads):
        for n, k, gs in [(576, 576, 64), (4096, 4096, 128)]:
            w = rng.standard_normal((n, k)).astype(np.float32)
            p = awqkit.pack_awq(awqkit.quantize(w, bits=4, group_size=gs))
            copies = max(1, (512 << 20) // (n * k // 2))
            lins = [PackedLinear.from_awq(p["qweight"], p["qzeros"], p["scales"], gs) for _ in range(copies)]
            x1 = rng.standard_normal((1, k)).astype(np.float32)
            for lin in lins:
                lin(x1)
            per_call = []
            for _ in range(7):
                t = time.perf_counter()
                for lin in lins:
                    lin(x1)
                per_call.append((time.perf_counter() - t) / len(lins))
            res[f"{n}x{k} M=1 us"] = round(float(np.median(per_call)) * 1e6, 2)
            x = rng.standard_normal((64, k)).astype(np.float32)
            times = []
            for _ in range(15):
                t = time.perf_counter()
                lins[0](x)
                times.append(time.perf_counter() - t)
            res[f"{n}x{k} M=64 GFLOP/s"] = round(2 * 64 * n * k / float(np.median(times)) / 1e9, 1)
    return res


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
