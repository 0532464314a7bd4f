"""Folding AWQ scales into the model, so that the network computes the same function.

A scale vector s [K] for the linears that read an input: their weights' input columns are
multiplied by s (:func:`scale_linear_inputs`) and whatever produces that input is divided
by s: a norm's weight and bias (:func:`fold_scale_into_norm`, Llama's input_layernorm /
post_attention_layernorm), or the last len(s) output rows and bias of a previous linear
(:func:`fold_scale_into_linear_outputs`: v_proj before o_proj, up_proj before down_proj).
Before quantization x W^T = (x / s)(W diag(s))^T exactly up to rounding. All functions
return new arrays of the input dtype (computed in float32) and leave their inputs alone.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fold_scale_into_linear_outputs", "fold_scale_into_norm", "scale_linear_inputs"]


def _scales(s, n: int | None = None, what: str = "") -> np.ndarray:
    s = np.asarray(s, dtype=np.float32)
    if s.ndim != 1:
        raise ValueError(f"scales must be 1-D [K], got shape {s.shape}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("scales must be finite and positive")
    if n is not None and s.shape[0] != n:
        raise ValueError(f"scales have {s.shape[0]} entries but {what} has {n}")
    return s


def _array(a, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got {a.dtype}")
    return a


def scale_linear_inputs(w, s) -> np.ndarray:
    """``w * s``: a [N, K] weight with input column k multiplied by s[k]."""
    w = _array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [N, K], got shape {w.shape}")
    s = _scales(s, w.shape[1], "w's input dimension")
    return (w.astype(np.float32) * s[None, :]).astype(w.dtype)


def fold_scale_into_norm(norm_weight, norm_bias, s):
    """(weight / s, bias / s or None): the norm's output channel k divided by s[k]."""
    norm_weight = _array(norm_weight, "norm_weight")
    if norm_weight.ndim != 1:
        raise ValueError(f"norm_weight must be 1-D [K], got shape {norm_weight.shape}")
    s = _scales(s, norm_weight.shape[0], "norm_weight")
    new_w = (norm_weight.astype(np.float32) / s).astype(norm_weight.dtype)
    new_b = None
    if norm_bias is not None:
        norm_bias = _array(norm_bias, "norm_bias")
        if norm_bias.shape != norm_weight.shape:
            raise ValueError(f"norm_bias must have shape {norm_weight.shape}, got {norm_bias.shape}")
        new_b = (norm_bias.astype(np.float32) / s).astype(norm_bias.dtype)
    return new_w, new_b


def fold_scale_into_linear_outputs(prev_w, prev_b, s):
    """(prev_w with its last len(s) output rows / s, prev_b likewise or None).

    The last rows, as AutoAWQ's scale_fc_fc: for a fused qkv producer only v's rows feed o_proj.
    """
    prev_w = _array(prev_w, "prev_w")
    if prev_w.ndim != 2:
        raise ValueError(f"prev_w must be 2-D [N, K], got shape {prev_w.shape}")
    s = _scales(s)
    m = s.shape[0]
    if m > prev_w.shape[0]:
        raise ValueError(f"scales have {m} entries but prev_w has only {prev_w.shape[0]} output rows")
    new_w = prev_w.astype(np.float32, copy=True)
    new_w[-m:] /= s[:, None]
    new_b = None
    if prev_b is not None:
        prev_b = _array(prev_b, "prev_b")
        if prev_b.shape != (prev_w.shape[0],):
            raise ValueError(f"prev_b must have shape ({prev_w.shape[0]},), got {prev_b.shape}")
        new_b = prev_b.astype(np.float32, copy=True)
        new_b[-m:] /= s
        new_b = new_b.astype(prev_b.dtype)
    return new_w.astype(prev_w.dtype), new_b
