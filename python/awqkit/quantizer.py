"""Group-wise integer quantization of Linear weights (the native quantizer's API)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from ._checks import as_weight, check_bits, check_scale_dtype
from .gguf_blocks import rule_id

__all__ = ["QuantizedTensor", "quantize", "dequantize", "pseudo_quantize"]


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight [N, K] quantized per group of ``group_size`` consecutive inputs.

    ``codes`` uint8 [N, K] in 0..2^bits-1, ``scales`` [N, G] (float16 or float32),
    ``zeros`` uint8 [N, G]; the weight is ``(codes - zeros) * scales`` per group.
    Symmetric quantization stores ``zeros = 2^(bits-1)``, so one rule serves both.
    ``rule``: how it was rounded (``"awq"``, or a GGUF block type such as ``"q4_0"``, see
    :mod:`awqkit.gguf_blocks`). ``offsets`` float16 [N, G]: the per-group minimum of GGUF
    Q4_1, whose weight is ``codes * scales + offsets`` (zeros 0); None otherwise.
    """

    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    group_size: int
    zero_point: bool = True
    offsets: np.ndarray | None = None
    rule: str = "awq"

    def __post_init__(self):
        if self.codes.ndim != 2 or self.scales.ndim != 2 or self.zeros.ndim != 2:
            raise ValueError("codes, scales and zeros must be 2-D")
        n, k = self.codes.shape
        if self.group_size <= 0 or k % self.group_size:
            raise ValueError(f"group_size {self.group_size} does not divide K = {k}")
        g = k // self.group_size
        if self.scales.shape != (n, g) or self.zeros.shape != (n, g):
            raise ValueError(f"scales and zeros must be [N, G] = [{n}, {g}], got {self.scales.shape}, {self.zeros.shape}")
        if self.offsets is not None and self.offsets.shape != (n, g):
            raise ValueError(f"offsets must be [N, G] = [{n}, {g}], got {self.offsets.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.codes.shape

    @property
    def n_groups(self) -> int:
        return self.scales.shape[1]

    def dequantize(self) -> np.ndarray:
        return dequantize(self)


def quantize(w, bits: int = 4, group_size: int = 128, zero_point: bool = True, scale_dtype: str = "float16",
             rule: str = "awq") -> QuantizedTensor:
    """Quantize a Linear weight ``w`` [N=out, K=in] (float32 or float16) per group.

    Asymmetric (``zero_point=True``): ``scale = max(max - min, 1e-5) / (2^b - 1)``,
    ``zero = clamp(-round(min / scale), 0, 2^b - 1)``; symmetric:
    ``scale = max(absmax, 1e-5) / (2^(b-1) - 1)``, ``zero = 2^(b-1)``; then
    ``code = clamp(round(w / scale) + zero, 0, 2^b - 1)``, round half to even. With
    ``scale_dtype="float16"`` the scale is rounded to float16 *before* the codes are
    computed, so what you evaluate is exactly what a checkpoint stores.
    ``group_size=-1`` means one group per row.

    ``rule="q4_0" | "q4_1" | "q8_0"``: llama.cpp's reference quantizer of that GGUF block type,
    bit for bit (blocks of 32; Q4_0 and Q8_0 symmetric, Q4_1 with a float16 minimum in
    ``offsets``); bits, group_size and zero_point must be the type's (4/32/False, 4/32/True,
    8/32/False) and scales float16.
    """
    w = as_weight(w)
    bits = check_bits(bits)
    fp16 = check_scale_dtype(scale_dtype)
    codes, scales, zeros, _, offsets = _core.quantize(w, bits, int(group_size), bool(zero_point), fp16, True, False,
                                                      rule_id(rule))
    gs = w.shape[1] // scales.shape[1]
    return QuantizedTensor(
        codes=codes,
        scales=scales.astype(np.float16) if fp16 else scales,  # exact: already fp16 values
        zeros=zeros,
        bits=bits,
        group_size=gs,
        zero_point=bool(zero_point),
        offsets=None if offsets is None else offsets.astype(np.float16),
        rule=str(rule).lower(),
    )


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """float32 [N, K]: ``(codes - zeros) * scales`` per group."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"dequantize takes a QuantizedTensor, got {type(qt).__name__}")
    scales = np.ascontiguousarray(qt.scales, dtype=np.float32)
    offsets = None if qt.offsets is None else np.ascontiguousarray(qt.offsets, dtype=np.float32)
    return _core.dequantize(
        np.ascontiguousarray(qt.codes), scales, np.ascontiguousarray(qt.zeros), qt.group_size, qt.bits, offsets
    )


def pseudo_quantize(w, bits: int = 4, group_size: int = 128, zero_point: bool = True, scale_dtype: str = "float16",
                    rule: str = "awq") -> np.ndarray:
    """``dequantize(quantize(w, ...))`` in one native pass (no codes kept): float32 [N, K]."""
    w = as_weight(w)
    bits = check_bits(bits)
    fp16 = check_scale_dtype(scale_dtype)
    _, _, _, deq, _ = _core.quantize(w, bits, int(group_size), bool(zero_point), fp16, False, True, rule_id(rule))
    return deq
