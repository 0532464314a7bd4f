"""Calibration-like test data for the search tests."""

from __future__ import annotations

import numpy as np

import awqkit


def planted_activations(rng, tokens: int, k: int, n_salient: int = 4, dtype=np.float32) -> np.ndarray:
    """Gaussian activations where a few input channels are 20-100x larger, as in real LLMs."""
    x = rng.standard_normal((tokens, k)).astype(np.float32)
    channels = rng.choice(k, size=n_salient, replace=False)
    x[:, channels] *= rng.uniform(20, 100, size=n_salient).astype(np.float32)
    x += 0.1 * rng.standard_normal((1, k)).astype(np.float32)  # a per-channel offset
    return x.astype(dtype)


def linear_weights(rng, shapes, k: int, dtype=np.float32) -> list[np.ndarray]:
    return [(0.05 * rng.standard_normal((n, k))).astype(dtype) for n in shapes]


def scalar_and_isa_results(fn, isas=None):
    """(fn() on the scalar reference, [(isa, fn() on isa) for each SIMD isa]) for ISA-vs-reference tests."""
    with awqkit.use_isa("scalar"):
        ref = fn()
    out = []
    for isa in isas if isas is not None else awqkit.available_isas()[1:]:
        with awqkit.use_isa(isa):
            out.append((isa, fn()))
    return ref, out
