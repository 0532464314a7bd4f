"""AutoAWQ "gemm" INT4 packing, bit for bit.

``qweight`` int32 [K, N/8], ``qzeros`` int32 [G, N/8], ``scales`` float16 [G, N]. In
word j of a row, bits 4i..4i+3 hold output column ``8j + [0, 2, 4, 6, 1, 3, 5, 7][i]``.
This is the layout vLLM, transformers and AutoAWQ load.
"""

from __future__ import annotations

import numpy as np

from . import _core
from .quantizer import QuantizedTensor

__all__ = ["AWQ_ORDER", "pack_awq", "unpack_awq"]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_awq(qt: QuantizedTensor) -> dict[str, np.ndarray]:
    """Pack a 4-bit :class:`QuantizedTensor` into ``{"qweight", "qzeros", "scales"}``."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"pack_awq takes a QuantizedTensor, got {type(qt).__name__}")
    if qt.bits != 4:
        raise ValueError(f"the AWQ gemm layout holds 4-bit codes only, got bits={qt.bits}")
    n = qt.shape[0]
    if n % 8:
        raise ValueError(f"the AWQ gemm layout packs 8 output channels per int32: N = {n} is not a multiple of 8")
    scales16 = qt.scales.astype(np.float16)
    if qt.scales.dtype != np.float16 and not np.array_equal(scales16.astype(qt.scales.dtype), qt.scales):
        raise ValueError(
            "the AWQ gemm layout stores float16 scales and these are not exactly representable in float16; "
            "quantize with scale_dtype='float16'"
        )
    return {
        "qweight": _core.pack_awq_transposed(np.ascontiguousarray(qt.codes)),
        "qzeros": _core.pack_awq_transposed(np.ascontiguousarray(qt.zeros)),
        "scales": np.ascontiguousarray(scales16.T),
    }


def unpack_awq(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int, zero_point: bool = True) -> QuantizedTensor:
    """Inverse of :func:`pack_awq`: the 4-bit :class:`QuantizedTensor` the tensors hold."""
    for name, arr, dt in (("qweight", qweight, np.int32), ("qzeros", qzeros, np.int32), ("scales", scales, np.float16)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != dt:
            raise TypeError(f"{name} must be {np.dtype(dt).name}, got {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    k, n8 = qweight.shape
    g, n = scales.shape
    if qzeros.shape != (g, n8) or n != 8 * n8:
        raise ValueError(
            f"inconsistent shapes: qweight {qweight.shape}, qzeros {qzeros.shape}, scales {scales.shape} "
            "(expected [K, N/8], [G, N/8], [G, N])"
        )
    if group_size == -1:
        group_size = k
    if group_size <= 0 or k % group_size or k // group_size != g:
        raise ValueError(f"group_size {group_size} does not match K = {k} and G = {g}")
    return QuantizedTensor(
        codes=_core.unpack_awq_transposed(np.ascontiguousarray(qweight)),
        scales=np.ascontiguousarray(scales.T),
        zeros=_core.unpack_awq_transposed(np.ascontiguousarray(qzeros)),
        bits=4,
        group_size=int(group_size),
        zero_point=zero_point,
    )
