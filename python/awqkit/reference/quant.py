"""Reference group quantizer (AutoAWQ's pseudo_quantize_tensor, scale rounded first)."""

from __future__ import annotations

import numpy as np


def quantize_ref(w: np.ndarray, bits: int = 4, group_size: int = 128, zero_point: bool = True, scale_dtype: str = "float16"):
    """Returns (codes uint8 [N,K], scales [N,G] float32 holding the stored values, zeros uint8 [N,G])."""
    w = np.asarray(w).astype(np.float32)
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    assert k % gs == 0
    g = w.reshape(n, k // gs, gs)
    f32 = np.float32
    if zero_point:
        qmax = f32(2**bits - 1)
        maxv, minv = g.max(axis=2), g.min(axis=2)
        scales = np.maximum(maxv - minv, f32(1e-5)) / qmax
        if scale_dtype == "float16":
            scales = scales.astype(np.float16).astype(f32)
        zeros = np.clip(-np.round(minv / scales), f32(0), qmax)
    else:
        qmax = f32(2**bits - 1)
        absmax = np.abs(g).max(axis=2)
        scales = np.maximum(absmax, f32(1e-5)) / f32(2 ** (bits - 1) - 1)
        if scale_dtype == "float16":
            scales = scales.astype(np.float16).astype(f32)
        zeros = np.full_like(scales, f32(2 ** (bits - 1)))
    q = np.round(g / scales[..., None])
    if zero_point:
        codes = np.clip(q + zeros[..., None], f32(0), qmax)
    else:
        half = f32(2 ** (bits - 1))
        codes = np.clip(q, -half, half - 1) + half
    return codes.reshape(n, k).astype(np.uint8), scales.astype(f32), zeros.astype(np.uint8)


def dequantize_ref(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_size: int) -> np.ndarray:
    n, k = codes.shape
    gs = k if group_size == -1 else group_size
    c = codes.reshape(n, k // gs, gs).astype(np.float32)
    z = zeros.astype(np.float32)[..., None]
    s = scales.astype(np.float32)[..., None]
    return ((c - z) * s).reshape(n, k)


def pseudo_quantize_ref(w: np.ndarray, bits: int = 4, group_size: int = 128, zero_point: bool = True, scale_dtype: str = "float16",
                        rule: str = "awq") -> np.ndarray:
    if rule != "awq":  # a GGUF block type: its own bits, blocks of 32, float16 scales
        codes, scales, offsets = ggml_quantize_ref(w, rule)
        return ggml_dequantize_ref(codes, scales, offsets, rule)
    codes, scales, zeros = quantize_ref(w, bits, group_size, zero_point, scale_dtype)
    return dequantize_ref(codes, scales, zeros, group_size)


def _trunc_int8(v: np.ndarray) -> np.ndarray:
    """C's (int8_t)float on x86-64: truncation toward zero (the values here are in range)."""
    return np.trunc(v).astype(np.int32).astype(np.int8).astype(np.int32)


def ggml_quantize_ref(w: np.ndarray, type_name: str):
    """llama.cpp's quantize_row_{q4_0,q4_1,q8_0}_ref (ggml-quants.c), block by block over rows
    of whole 32-weight blocks. Returns (codes uint8 [N, K] in awqkit's form: Q4_0 stores
    q in 0..15 with 0.0 at 8, Q8_0 stores q + 128; scales float32 [N, G] holding the stored
    float16 d; offsets float32 [N, G] holding the stored float16 m for Q4_1, else None)."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    assert k % 32 == 0
    x = w.reshape(n, k // 32, 32)
    f32 = np.float32
    offsets = None
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if type_name == "q4_0":
            first_largest = np.argmax(np.abs(x), axis=2)  # ggml keeps the first of equal magnitudes
            mx = np.take_along_axis(x, first_largest[..., None], axis=2)[..., 0]
            d = mx / f32(-8)
            inv = np.where(d != 0, f32(1) / d, f32(0)).astype(f32)
            q = np.minimum(15, _trunc_int8(x * inv[..., None] + f32(8.5)))
            codes = q.astype(np.uint8)
        elif type_name == "q4_1":
            lo, hi = x.min(axis=2), x.max(axis=2)
            d = (hi - lo) / f32(15)
            inv = np.where(d != 0, f32(1) / d, f32(0)).astype(f32)
            q = np.minimum(15, _trunc_int8((x - lo[..., None]) * inv[..., None] + f32(0.5)))
            codes = q.astype(np.uint8)
            offsets = lo.astype(np.float16).astype(f32)
        elif type_name == "q8_0":
            d = np.abs(x).max(axis=2) / f32(127)
            inv = np.where(d != 0, f32(1) / d, f32(0)).astype(f32)
            v = x * inv[..., None]
            q = np.where(v >= 0, np.floor(v + f32(0.5)), np.ceil(v - f32(0.5)))  # roundf: half away from zero
            codes = (q.astype(np.int32) + 128).astype(np.uint8)
        else:
            raise ValueError(f"no reference for GGUF type {type_name!r}")
    return codes.reshape(n, k), d.astype(np.float16).astype(f32), offsets


def ggml_dequantize_ref(codes: np.ndarray, scales: np.ndarray, offsets, type_name: str) -> np.ndarray:
    """dequantize_row_{q4_0,q4_1,q8_0} of ggml: (q - 8) * d, q * d + m, (q - 128) * d."""
    n, k = codes.shape
    q = codes.reshape(n, k // 32, 32).astype(np.int32)
    d = scales.astype(np.float32)[..., None]
    if type_name == "q4_1":
        return (q.astype(np.float32) * d + offsets.astype(np.float32)[..., None]).reshape(n, k)
    zero = {"q4_0": 8, "q8_0": 128}[type_name]
    return ((q - zero).astype(np.float32) * d).reshape(n, k)
