"""The one rule for which linears a 4-bit AWQ checkpoint holds.

A quantized linear is written in the AutoAWQ "gemm" layout and read back onto the fused
kernels (``PackedLinear``). Both impose shape rules, and a checkpoint is only useful if it
satisfies all of them, so the pipeline (which linears to quantize), the footprint estimate,
``AWQConfig``, the checkpoint writer and the loader all ask this module:

* the gemm layout packs 8 output channels per int32, so N must be a multiple of 8;
* a group covers ``group_size`` consecutive inputs, so it must divide K
  (``group_size=-1`` is one group of all K inputs, as AutoAWQ writes it);
* the fused kernels store a group's codes as runs of 8 inputs (csrc/gemm/packed_layout.h),
  so the group length (``group_size``, or K for -1) must be a multiple of 8.

Pure Python: usable without torch and without the native module.
"""

from __future__ import annotations

from numbers import Integral

__all__ = ["check_gemm_layout", "gemm_layout_problem", "group_size_problem"]

PACK = 8  # output channels per int32 word (AutoAWQ gemm) and inputs per code run (our kernels)


def group_size_problem(group_size) -> str | None:
    """Why ``group_size`` can never be stored and run, whatever the layer's shape, or None."""
    if isinstance(group_size, bool) or not isinstance(group_size, Integral):
        return f"group_size must be an integer, got {group_size!r}"
    if group_size == -1:
        return None
    if group_size <= 0 or group_size % PACK:
        return (f"group_size must be -1 (one group per row) or a positive multiple of {PACK} "
                f"(the fused kernels read codes in runs of {PACK} inputs), got {group_size}")
    return None


def gemm_layout_problem(n: int, k: int, group_size: int) -> str | None:
    """Why a linear with N outputs and K inputs cannot be stored in the AutoAWQ gemm layout
    and run by the fused kernels with ``group_size``, or None if it can. The pipeline keeps
    exactly these layers in full precision, and the footprint counts exactly the others."""
    problem = group_size_problem(group_size)
    if problem:
        return problem
    if group_size != -1 and k % group_size:
        return f"input size K={k} is not divisible by group_size={group_size}"
    if group_size == -1 and k % PACK:
        return (f"input size K={k} is not a multiple of {PACK}, which group_size=-1 (one group of K inputs) "
                f"needs: the fused kernels read codes in runs of {PACK} inputs")
    if n % PACK:
        return f"output size N={n} is not a multiple of {PACK} (the AWQ gemm layout packs {PACK} outputs per int32)"
    return None


def check_gemm_layout(name: str, n: int, k: int, group_size: int) -> None:
    """``ValueError`` naming the layer when :func:`gemm_layout_problem` finds a problem."""
    problem = gemm_layout_problem(n, k, group_size)
    if problem:
        raise ValueError(f"{name} ([{n}, {k}]) cannot be held in the AutoAWQ gemm layout: {problem}")
