"""Builders and error bounds shared by the fused INT4 GEMM/GEMV tests."""

from __future__ import annotations

import numpy as np

import awqkit

EPS32 = float(np.finfo(np.float32).eps)


def make_layer(n: int, k: int, group_size: int, bias: bool, seed: int = 0):
    """A PackedLinear built the way a checkpoint is (quantize -> pack_awq -> from_awq).

    Returns (lin, w_deq float32 [N, K], awq tensors dict, bias or None).
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    qt = awqkit.quantize(w, bits=4, group_size=group_size)
    awq = awqkit.pack_awq(qt)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    lin = awqkit.PackedLinear.from_awq(awq["qweight"], awq["qzeros"], awq["scales"], group_size, bias=b)
    return lin, awqkit.dequantize(qt), awq, b


def make_x(m: int, k: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)


def error_bound(x: np.ndarray, w: np.ndarray, b, c: float = 8.0) -> np.ndarray:
    """Elementwise bound c * sqrt(K) * eps32 * (|x| @ |W|.T + |b|): the size of the
    rounding error of a float32 dot product of length K, relative to its terms."""
    mag = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    if b is not None:
        mag += np.abs(b.astype(np.float64))
    return c * np.sqrt(x.shape[1]) * EPS32 * mag


def exact(x: np.ndarray, w: np.ndarray, b) -> np.ndarray:
    """float64 x @ W.T + b: the exact product of the dequantized weight, to within 1e-16."""
    y = x.astype(np.float64) @ w.astype(np.float64).T
    return y + b.astype(np.float64) if b is not None else y
