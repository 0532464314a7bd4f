"""The quick-start demo: quantize and pack real weights, print errors and sizes.

Uses the linears of ``stories260K-hf`` (a real, trained tiny Llama) from the shared
data folder when present, else one synthetic 4096x4096 layer with a few salient
input channels. Needs only numpy (safetensors is read with a tiny header parser).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import isa
from ._safetensors import read_header
from .data import data_dir
from .packing import pack_awq, unpack_awq
from .quantizer import dequantize, quantize

_DTYPES = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """float32/float16 tensors of a .safetensors file (numpy only; other dtypes skipped)."""
    header, data_start = read_header(path)
    body = memoryview(path.read_bytes())[data_start:]
    out = {}
    for name, meta in header.items():
        if meta["dtype"] not in _DTYPES:
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return out


def _demo_weights() -> tuple[str, dict[str, np.ndarray]]:
    root = data_dir()
    model = root / "stories260K-hf" / "model.safetensors" if root else None
    if model and model.is_file():
        tensors = read_safetensors(model)
        linears = {k: v for k, v in tensors.items() if k.endswith("proj.weight")}
        return f"stories260K-hf ({model})", linears
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4096, 4096)).astype(np.float32) * 0.02
    w[:, :8] *= 30  # a few salient input channels, as in real LLMs
    return "synthetic 4096x4096 layer (shared data not found)", {"synthetic.weight": w}


def run_demo(group_size: int = 32) -> None:
    source, weights = _demo_weights()
    print(f"awqkit demo on {source}")
    print(f"native kernels: ISA {isa.active_isa()} (available: {', '.join(isa.available_isas())}), {isa.num_threads()} threads")
    print(f"4-bit, group size {group_size} (per channel where it does not divide K), float16 scales\n")
    header = f"{'layer':<42}{'shape':>12}{'rel. RMS err':>14}{'max abs err':>13}{'fp32 bytes':>12}{'packed bytes':>14}{'ratio':>7}"
    print(header)
    print("-" * len(header))
    total_fp, total_packed, t0 = 0, 0, time.perf_counter()
    for name, w in weights.items():
        n, k = w.shape
        gs = group_size if k % group_size == 0 else -1
        qt = quantize(w, bits=4, group_size=gs)
        packed = pack_awq(qt) if n % 8 == 0 else None
        if packed is not None:  # the checkpoint tensors must give the same weight back
            back = unpack_awq(packed["qweight"], packed["qzeros"], packed["scales"], qt.group_size)
            assert np.array_equal(back.codes, qt.codes) and np.array_equal(back.zeros, qt.zeros)
        deq = dequantize(qt)
        err = deq - w.astype(np.float32)
        rel = float(np.sqrt(np.mean(err**2) / np.mean(w.astype(np.float32) ** 2)))
        nbytes = sum(a.nbytes for a in packed.values()) if packed else qt.codes.size // 2 + qt.scales.nbytes + qt.zeros.size // 2
        total_fp += w.size * 4
        total_packed += nbytes
        shown = name.removeprefix("model.").removesuffix(".weight") + ("" if gs == group_size else " (per-channel)")
        print(f"{shown:<42}{f'{n}x{k}':>12}{rel:>14.4f}{np.abs(err).max():>13.4g}{w.size * 4:>12}{nbytes:>14}{w.size * 4 / nbytes:>6.1f}x")
    dt = time.perf_counter() - t0
    print(f"\n{len(weights)} layers: {total_fp / 1e6:.2f} MB fp32 -> {total_packed / 1e6:.2f} MB packed "
          f"({total_fp / total_packed:.1f}x smaller), quantized, packed and verified in {dt * 1e3:.0f} ms")
