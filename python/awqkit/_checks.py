"""Python-side argument checks shared by the public API.

One boundary validates: the binding (csrc/bindings/bind_common.h: dtypes, ranks, layout,
empty arrays) and the core it calls (value ranges: bits, group size, in_features), with the
messages the tests hold. What stays here is what only Python can see or what the Python code
needs before it reaches the binding: Python types (a bool or a float where an int goes, a
list where an array goes), and the effective group size the Python side computes shapes with.
"""

from __future__ import annotations

import numpy as np

_SCALE_DTYPES = ("float16", "float32")


def as_float_array(x, name: str, what: str) -> np.ndarray:
    """``x`` as a float32/float16 ndarray (a view, never a converted copy); ``what`` names
    the expected layout in the error message."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name} must be a numpy array {what}, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float16):
        raise TypeError(
            f"{name} must be float32 or float16, got {x.dtype} (convert explicitly, e.g. {name}.astype(np.float32))"
        )
    return x


def as_weight(w, name: str = "w") -> np.ndarray:
    """A 2-D float32/float16 ndarray view of ``w`` (never a converted copy)."""
    w = as_float_array(w, name, "[out_features, in_features]")
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D [out_features, in_features], got shape {w.shape}")
    return w


def check_scale_dtype(scale_dtype: str) -> bool:
    """Returns True when scales are rounded to float16."""
    name = np.dtype(scale_dtype).name if not isinstance(scale_dtype, str) else scale_dtype
    if name not in _SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be 'float16' or 'float32', got {scale_dtype!r}")
    return name == "float16"


def check_bits(bits: int) -> int:
    """An int (not a bool); the range (2..8) is the core's check (quant/quantize.cpp)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    return int(bits)


def check_int(name: str, v, lo: int) -> int:
    """An int (not a bool) >= lo: TypeError for the wrong type, ValueError below lo."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def resolve_group_size(group_size: int, k: int) -> int:
    """The effective group size: -1 means one group per row; must divide K."""
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size == -1:
        return k
    if group_size <= 0:
        raise ValueError(f"group_size must be positive or -1, got {group_size}")
    if k % group_size:
        raise ValueError(
            f"K = {k} is not divisible by group_size = {group_size} "
            "(use a group size that divides K, or -1 for one group per row)"
        )
    return int(group_size)
