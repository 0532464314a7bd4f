"""Reference GPTQ: the algorithm of the paper column by column, without lazy batches."""

from __future__ import annotations

import numpy as np

from .quant import quantize_ref


def _group_params_ref(v: np.ndarray, bits: int, zero_point: bool, scale_dtype: str):
    """Scale and zero of one group per row (rows of ``v``), by the awq rule of quantize_ref."""
    v32 = np.stack([v.min(axis=1), v.max(axis=1)], axis=1).astype(np.float32)  # min and max keep the group's rule
    _, scales, zeros = quantize_ref(v32, bits, 2, zero_point, scale_dtype)
    return scales[:, 0].astype(np.float64), zeros[:, 0].astype(np.float64)


def gptq_ref(w, H, bits=4, group_size=128, zero_point=True, scale_dtype="float16", damp=0.01, act_order=False,
             static_groups=False, scales=None, zeros=None):
    """Returns (codes uint8 [N, K], scales float32 [N, G], zeros uint8 [N, G], damp used)."""
    W = np.asarray(w, dtype=np.float64).copy()
    H = np.asarray(H, dtype=np.float64).copy()
    n, k = W.shape
    gs = k if group_size == -1 else group_size
    n_groups = k // gs
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    H[dead, :] = 0.0
    H[:, dead] = 0.0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(k)
    static = scales is not None or static_groups or act_order
    S = np.zeros((n, n_groups))
    Z = np.zeros((n, n_groups))
    if scales is not None:
        S[:] = np.asarray(scales, dtype=np.float32)
        Z[:] = zeros
    elif static:
        for g in range(n_groups):
            S[:, g], Z[:, g] = _group_params_ref(W[:, g * gs:(g + 1) * gs], bits, zero_point, scale_dtype)
    W = W[:, perm]
    H = H[np.ix_(perm, perm)]
    mean = np.mean(np.diag(H))
    d = damp
    while True:
        Hd = H + d * mean * np.eye(k)
        try:
            np.linalg.cholesky(Hd)
            break
        except np.linalg.LinAlgError:
            if d >= 1.0:
                raise ValueError("the Hessian stays singular with dampening 1.0") from None
            d = min(1.0, 2 * d)
    U = np.linalg.cholesky(np.linalg.inv(Hd)).T  # upper: Hd^-1 = U^T U
    qmax = 2**bits - 1
    codes = np.zeros((n, k), dtype=np.uint8)
    for i in range(k):
        j = perm[i]
        g = j // gs
        if not static and i % gs == 0:
            S[:, g], Z[:, g] = _group_params_ref(W[:, i:i + gs], bits, zero_point, scale_dtype)
        q = np.clip(np.rint(W[:, i] / S[:, g]) + Z[:, g], 0, qmax)
        codes[:, j] = q
        err = (W[:, i] - (q - Z[:, g]) * S[:, g]) / U[i, i]
        W[:, i + 1:] -= np.outer(err, U[i, i + 1:])
    return codes, S.astype(np.float32), Z.astype(np.uint8), d
