"""Reference AutoAWQ gemm packing, written as AutoAWQ's WQLinear_GEMM.from_linear does it."""

from __future__ import annotations

import numpy as np

ORDER_MAP = [0, 2, 4, 6, 1, 3, 5, 7]


def _pack_columns(int_t: np.ndarray) -> np.ndarray:
    """int_t [R, N] small ints -> int32 [R, N/8], AutoAWQ's column loop."""
    rows, n = int_t.shape
    out = np.zeros((rows, n // 8), dtype=np.uint32)
    for col in range(n // 8):
        for i in range(8):
            out[:, col] |= int_t[:, col * 8 + ORDER_MAP[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def _unpack_columns(words: np.ndarray) -> np.ndarray:
    rows, n8 = words.shape
    u = words.view(np.uint32)
    out = np.zeros((rows, n8 * 8), dtype=np.uint8)
    for col in range(n8):
        for i in range(8):
            out[:, col * 8 + ORDER_MAP[i]] = (u[:, col] >> np.uint32(4 * i)) & np.uint32(0xF)
    return out


def pack_awq_ref(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray) -> dict:
    """codes [N,K], scales [N,G], zeros [N,G] -> qweight [K,N/8], qzeros [G,N/8], scales fp16 [G,N]."""
    return {
        "qweight": _pack_columns(np.ascontiguousarray(codes.T)),
        "qzeros": _pack_columns(np.ascontiguousarray(zeros.T)),
        "scales": np.ascontiguousarray(scales.T).astype(np.float16),
    }


def unpack_awq_ref(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray):
    """-> codes [N,K] uint8, scales [N,G] fp16, zeros [N,G] uint8."""
    return (
        np.ascontiguousarray(_unpack_columns(qweight).T),
        np.ascontiguousarray(scales.T),
        np.ascontiguousarray(_unpack_columns(qzeros).T),
    )
