"""Channel saliency for the AWQ scale search: what replaces ``x_mean`` in the formulas.

AWQ scales input channel k by ``saliency[k]^r`` (divided by ``w_mean[k]^(1-r)`` with duo
scaling). The paper's saliency is the mean |x| of the channel; others are one line away.

Adding a metric
---------------
A saliency is a function ``(stats, weights) -> array [K]`` of the calibration
statistics (:class:`awqkit.ActivationStats`) and the list of weights [N_i, K] that share
the input. Register it under a name and pass the name to ``search_scale``::

    import numpy as np, awqkit

    def p99_over_mean(stats, weights):          # anything non-negative and finite, [K]
        return stats.max_abs() / (stats.mean_abs() + 1e-8)

    awqkit.register_saliency("peakiness", p99_over_mean)
    awqkit.search_scale(x, [w_q, w_k, w_v], saliency="peakiness")

A one-off callable or a precomputed array [K] can be passed directly as ``saliency=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["available_saliencies", "compute_saliency", "register_saliency"]

SaliencyFn = Callable[[Any, list], np.ndarray]  # (ActivationStats, weights) -> [K]

_REGISTRY: dict[str, SaliencyFn] = {}


def register_saliency(name: str, fn: SaliencyFn, *, overwrite: bool = False) -> None:
    """Make ``fn(stats, weights) -> [K]`` available as ``search_scale(..., saliency=name)``."""
    if not isinstance(name, str) or not name:
        raise TypeError("a saliency name must be a non-empty string")
    if not callable(fn):
        raise TypeError(f"saliency {name!r} must be callable (stats, weights) -> array [K]")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"saliency {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = fn


def available_saliencies() -> list[str]:
    """Names accepted by ``search_scale(..., saliency=...)``."""
    return sorted(_REGISTRY)


def _mean_col_abs(weights) -> np.ndarray:
    total = sum(w.shape[0] for w in weights)
    acc = np.zeros(weights[0].shape[1], dtype=np.float64)
    for w in weights:
        acc += np.abs(w.astype(np.float64)).sum(axis=0)
    return acc / total


register_saliency("mean_abs", lambda stats, weights: stats.mean_abs())  # AWQ
register_saliency("rms", lambda stats, weights: stats.rms())
register_saliency("max_abs", lambda stats, weights: stats.max_abs())
# A weight that meets a large activation matters: mean |x| times the column's mean |w|.
register_saliency("contribution", lambda stats, weights: stats.mean_abs() * _mean_col_abs(weights))
# diag(X^T X) / n: the diagonal of the layer-wise Hessian of the output error.
register_saliency("hessian_diag", lambda stats, weights: stats.mean_sq())


def compute_saliency(saliency, stats, weights) -> np.ndarray:
    """Resolve a name, array or callable to a checked float64 [K] array."""
    k = stats.in_features
    value: Any
    if isinstance(saliency, str):
        if saliency not in _REGISTRY:
            raise ValueError(f"unknown saliency {saliency!r}; available: {', '.join(available_saliencies())}")
        value = _REGISTRY[saliency](stats, weights)
        what = f"saliency {saliency!r}"
    elif callable(saliency):
        value = saliency(stats, weights)
        what = "the saliency callable's result"
    elif isinstance(saliency, (np.ndarray, list, tuple)):
        value = saliency
        what = "saliency"
    else:
        raise TypeError(f"saliency must be a name, an array [K] or a callable, got {type(saliency).__name__}")
    value = np.asarray(value)
    if value.dtype.kind not in "fiu":
        raise TypeError(f"{what} must be a real array, got dtype {value.dtype}")
    value = np.ascontiguousarray(value, dtype=np.float64).reshape(-1) if value.ndim <= 1 else value
    if value.shape != (k,):
        raise ValueError(f"{what} must have shape [K] = [{k}], got {value.shape}")
    if not np.all(np.isfinite(value)) or np.any(value < 0):
        raise ValueError(f"{what} must be finite and non-negative")
    return value
