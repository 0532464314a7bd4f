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


def pseudo_quantize_ref(w: np.ndarray, bits: int = 4, group_size: int = 128, zero_point: bool = True, scale_dtype: str = "float16") -> np.ndarray:
    codes, scales, zeros = quantize_ref(w, bits, group_size, zero_point, scale_dtype)
    return dequantize_ref(codes, scales, zeros, group_size)
