"""Streaming statistics of a Linear's input activations (the calibration side of AWQ)."""

from __future__ import annotations

import numpy as np

from . import _core
from ._checks import as_float_array

__all__ = ["ActivationStats"]


def as_activations(x, in_features: int | None = None, name: str = "x") -> np.ndarray:
    """A 2-D float32/float16 [tokens, K] ndarray view of ``x`` (a leading batch dim is flattened)."""
    x = as_float_array(x, name, "[tokens, in_features]")
    if x.ndim > 2:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2:
        raise ValueError(f"{name} must be [tokens, in_features], got shape {x.shape}")
    if in_features is not None and x.shape[1] != in_features:
        raise ValueError(f"{name} has {x.shape[1]} features but in_features = {in_features} (mismatched K)")
    return x


class ActivationStats:
    """Per-channel statistics of activations ``x`` [tokens, K], accumulated batch by batch.

    Float64 accumulators of the token count, sum |x|, sum x^2 and max |x|; with
    ``gram=True`` also the Gram matrix ``X^T X`` that makes every AWQ scale candidate
    cost O(N K^2) whatever the number of tokens (accumulated natively: blocked, symmetric,
    SIMD; identical for any thread count). ``merge`` adds another accumulator, so
    calibration can be split across processes or machines.

    ``bounds=(max_abs, max_tokens)`` (every later token within ``|x_k| <= max_abs[k]``, at
    most ``max_tokens`` in all) makes the sums order-independent: each addend is rounded to a
    power-of-two grid (about 2^-52 of the largest sum the bounds allow) on which every float64
    partial sum is exact, so the same tokens, updated in the same batches, give the same bits
    however the batches are split among accumulators and merged (threads, processes,
    machines, any reduction order). An update or merge beyond the bounds is refused.
    """

    def __init__(self, in_features: int, gram: bool = False, bounds=None):
        if isinstance(in_features, bool) or not isinstance(in_features, (int, np.integer)):
            raise TypeError(f"in_features must be an int, got {type(in_features).__name__}")
        # in_features <= 0: the core's ValueError (search/activation_stats.cpp).
        self._impl = _core.ActivationStats(int(in_features), bool(gram))
        if bounds is not None:
            try:
                max_abs, max_tokens = bounds
            except (TypeError, ValueError):
                raise TypeError("bounds must be (max_abs [in_features], max_tokens)") from None
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)):
                raise TypeError(f"bounds' max_tokens must be an int, got {type(max_tokens).__name__}")
            self._impl.set_bounds(np.ascontiguousarray(max_abs, dtype=np.float64), int(max_tokens))

    @property
    def bounds(self):
        """``(max_abs, max_tokens)`` of order-independent statistics, else None."""
        return self._impl.bounds()

    def update(self, x) -> ActivationStats:
        """Add a batch ``x`` [tokens, K] (float32 or float16; [..., K] is flattened)."""
        x = as_activations(x, self.in_features)
        self._impl.update(x)
        return self

    def merge(self, other: ActivationStats) -> ActivationStats:
        """Add the statistics of ``other`` (same ``in_features``) into these."""
        if not isinstance(other, ActivationStats):
            raise TypeError(f"merge takes an ActivationStats, got {type(other).__name__}")
        self._impl.merge(other._impl)
        return self

    @property
    def in_features(self) -> int:
        return self._impl.in_features

    @property
    def has_gram(self) -> bool:
        return self._impl.has_gram

    @property
    def n_tokens(self) -> int:
        return self._impl.n_tokens

    def _require_tokens(self):
        if self.n_tokens == 0:
            raise ValueError("no calibration tokens yet (empty calibration set): call update(x) first")

    def mean_abs(self) -> np.ndarray:
        """Per-channel mean |x| (float64 [K]): AWQ's ``x_mean``."""
        self._require_tokens()
        return self._impl.sum_abs() / self.n_tokens

    def mean_sq(self) -> np.ndarray:
        """Per-channel mean x^2 (float64 [K]) = diag(X^T X) / n."""
        self._require_tokens()
        return self._impl.sum_sq() / self.n_tokens

    def rms(self) -> np.ndarray:
        """Per-channel root mean square (float64 [K])."""
        return np.sqrt(self.mean_sq())

    def max_abs(self) -> np.ndarray:
        """Per-channel max |x| (float64 [K])."""
        self._require_tokens()
        return self._impl.max_abs()

    def gram(self) -> np.ndarray:
        """``X^T X`` (float64 [K, K], symmetric); needs ``gram=True``."""
        if not self.has_gram:
            raise ValueError("these statistics were collected without the Gram matrix; use ActivationStats(K, gram=True)")
        return self._impl.gram()

    def __reduce__(self):
        """Pickle support, so statistics gathered in other processes or machines can be merged."""
        # One native call: the state of one instant, even while other threads update.
        bounds = self.bounds
        return (_from_state, (self.in_features, self.has_gram, self._impl.state()) + (() if bounds is None else (bounds,)))

    def __repr__(self) -> str:
        return f"ActivationStats(in_features={self.in_features}, gram={self.has_gram}, n_tokens={self.n_tokens})"


def _from_state(in_features: int, gram: bool, state, bounds=None) -> ActivationStats:
    """Statistics from a pickled state, refused (ValueError) unless it is one ``update`` could produce."""
    stats = ActivationStats(in_features, gram=gram, bounds=bounds)
    k = stats.in_features
    try:
        n, sum_abs, sum_sq, max_abs, g = state
    except (TypeError, ValueError):
        raise ValueError("invalid ActivationStats state: expected (n_tokens, sum_abs, sum_sq, max_abs, gram)") from None
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or not 0 <= n < 2**63:
        raise ValueError(f"invalid ActivationStats state: the token count must be an integer >= 0, got {n!r}")
    arrays: list[np.ndarray | None] = []
    for name, a, shape in (("sum_abs", sum_abs, (k,)), ("sum_sq", sum_sq, (k,)), ("max_abs", max_abs, (k,)), ("gram", g, (k, k))):
        if a is None and name == "gram":
            arrays.append(None)
            continue
        a = np.asarray(a)
        if a.shape != shape or a.dtype.kind not in "fiu":
            raise ValueError(f"invalid ActivationStats state: {name} must be a real array of shape {shape}, "
                             f"got {a.dtype} {a.shape}")
        arrays.append(np.ascontiguousarray(a, dtype=np.float64))
    stats._impl.set_state(int(n), *arrays)  # checks the values: finite, >= 0, a symmetric Gram matrix
    return stats
