"""GPTQ rounding (Frantar et al., ICLR 2023) on the native core.

Each column's rounding error is spread over the columns not yet rounded through the inverse
of the layer's Hessian, the Gram matrix ``X^T X`` of its calibration inputs, the same matrix
the AWQ searches use. :func:`gptq_factor` prepares the Hessian once per input (q, k and v
share theirs); :func:`gptq_quantize` rounds a weight with it into a :class:`QuantizedTensor`
that every awq-rule format stores (AWQ gemm, compressed-tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from ._checks import as_weight, check_bits, check_int, check_scale_dtype
from .quantizer import QuantizedTensor
from .stats import ActivationStats, as_activations

__all__ = ["GPTQResult", "gptq_factor", "gptq_quantize", "hessian_of"]


@dataclass(frozen=True)
class GPTQResult:
    """``quantized``: the codes, scales and zeros; ``loss`` [N]: GPTQ's proxy per row,
    sum_i (w_i - q_i)^2 / (2 U_ii^2); ``damp``: the relative dampening used (raised from the one
    asked for when the Hessian needed more to factor); ``perm``: the order columns were rounded in."""

    quantized: QuantizedTensor
    loss: np.ndarray
    damp: float
    perm: np.ndarray


def hessian_of(x, in_features: int | None = None) -> np.ndarray:
    """The Hessian GPTQ uses, ``X^T X`` (float64 [K, K]), from activations ``x`` [tokens, K] or an
    :class:`ActivationStats` collected with ``gram=True``."""
    if isinstance(x, ActivationStats):
        if in_features is not None and x.in_features != in_features:
            raise ValueError(f"the statistics are for K = {x.in_features} but the weights have K = {in_features} "
                             "(mismatched K)")
        if not x.has_gram:
            raise ValueError("GPTQ needs the Gram matrix: collect the statistics with ActivationStats(K, gram=True)")
        if x.n_tokens == 0:
            raise ValueError("no calibration tokens (empty calibration set)")
        return x.gram()
    x = as_activations(x, in_features)
    if x.shape[0] == 0:
        raise ValueError("x has no tokens (empty calibration set)")
    return ActivationStats(x.shape[1], gram=True).update(np.ascontiguousarray(x)).gram()


def gptq_factor(x, *, damp: float = 0.01, act_order: bool = False, in_features: int | None = None):
    """Prepare the Hessian of one input for :func:`gptq_quantize`: ``x`` is activations
    [tokens, K], an :class:`ActivationStats` with a Gram matrix, or the float64 Hessian [K, K]
    itself (``X^T X``; its scale does not matter). ``damp``: ``damp * mean(diag H)`` is added to
    the diagonal (doubled until H factors, up to 1). ``act_order``: round the columns by
    decreasing ``H_jj`` (the group scales are then static: taken before any update)."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float, np.floating)):
        raise TypeError(f"damp must be a number, got {type(damp).__name__}")
    if isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 2 and x.shape[0] == x.shape[1] and \
            (in_features is None or x.shape[0] == in_features):
        h = np.ascontiguousarray(x)
    else:
        h = hessian_of(x, in_features)
    return _core.gptq_factor(h, float(damp), bool(act_order))


def gptq_quantize(w, x, *, bits: int = 4, group_size: int = 128, zero_point: bool = True,
                  scale_dtype: str = "float16", damp: float = 0.01, act_order: bool = False,
                  static_groups: bool = False, block_size: int = 128, scales=None, zeros=None) -> GPTQResult:
    """Round ``w`` [N, K] with GPTQ on the inputs ``x``: activations [tokens, K], an
    :class:`ActivationStats` with a Gram matrix, the float64 Hessian, or a factor from
    :func:`gptq_factor` (then ``damp`` and ``act_order`` are the factor's).

    The group scales and zeros follow :func:`awqkit.quantize`'s rule (float16 scales rounded
    before the codes): taken from the current weights when a group's first column is reached,
    or, with ``static_groups`` (implied by ``act_order``), from the weights before any update;
    ``scales`` and ``zeros`` [N, G] give them instead (e.g. from a clip search). ``block_size``:
    columns rounded before the later ones are updated (lazy batch; whole groups per block).
    The result does not depend on the thread count.
    """
    w = np.ascontiguousarray(as_weight(w))
    bits = check_bits(bits)
    fp16 = check_scale_dtype(scale_dtype)
    block_size = check_int("block_size", block_size, 1)
    factor = x if isinstance(x, _core.GPTQFactor) else gptq_factor(x, damp=damp, act_order=act_order,
                                                                   in_features=w.shape[1])
    if (scales is None) != (zeros is None):
        raise ValueError("give both scales and zeros, or neither")
    if scales is not None:
        scales = np.ascontiguousarray(scales, dtype=np.float32)
        zeros = np.ascontiguousarray(zeros)
        if zeros.dtype != np.uint8:
            raise TypeError(f"zeros must be uint8, got dtype {zeros.dtype}")
        if fp16 and not np.array_equal(scales.astype(np.float16).astype(np.float32), scales):
            raise ValueError("scales must be float16 values with scale_dtype='float16' (what the checkpoint stores)")
    out = _core.gptq_quantize(w, factor, bits, int(group_size), bool(zero_point), fp16, block_size,
                              bool(static_groups), scales, zeros)
    gs = w.shape[1] // out["scales"].shape[1]
    qt = QuantizedTensor(codes=out["codes"], scales=out["scales"].astype(np.float16) if fp16 else out["scales"],
                         zeros=out["zeros"], bits=bits, group_size=gs, zero_point=bool(zero_point))
    return GPTQResult(quantized=qt, loss=out["loss"], damp=float(factor.damp), perm=factor.perm)
