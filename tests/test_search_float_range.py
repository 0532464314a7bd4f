"""One rule for what the searches take: the weights that quantize refuses, activations beyond
the float32 range of the Gram matrix and candidates that cannot be stored never give an
inf/NaN loss that is silently chosen."""

from __future__ import annotations

import numpy as np
import pytest

import awqkit
from awqkit import _core
from search_data import planted_activations


@pytest.fixture
def x(rng):
    return planted_activations(rng, 256, 64)


def test_weights_that_quantize_refuses_are_refused_by_every_search(x, rng):
    w = (1e6 * rng.standard_normal((16, 64))).astype(np.float32)  # group scales beyond float16
    with pytest.raises(ValueError, match="overflows float16"):
        awqkit.quantize(w, group_size=32)
    ok = (0.05 * rng.standard_normal((8, 64))).astype(np.float32)
    with pytest.raises(ValueError, match=r"weights\[1\] overflows float16 .*scale_dtype='float32'"):
        awqkit.search_scale(x, [ok, w], group_size=32)
    with pytest.raises(ValueError, match=r"weights\[0\] overflows float16"):
        awqkit.scale_loss(x, [w], np.ones(64, np.float32), group_size=32)
    with pytest.raises(ValueError, match="overflows float16"):
        awqkit.search_clip(x, w, group_size=32)
    # With float32 scales the same weights quantize, and so the searches take them.
    res = awqkit.search_scale(x, [w], group_size=32, scale_dtype="float32")
    assert np.all(np.isfinite(res.losses))


def test_activations_beyond_the_float32_range_of_the_gram_matrix_are_refused(x, rng):
    w = (0.05 * rng.standard_normal((16, 64))).astype(np.float32)
    huge = x * np.float32(1e17)  # |x| up to ~1e19: x^2 fits float32, sums of a few tokens do not
    with pytest.raises(ValueError, match="activations up to .* exceed the float32 range"):
        awqkit.ActivationStats(64, gram=True).update(huge)
    awqkit.ActivationStats(64).update(huge)  # no Gram matrix: nothing in float32 to overflow
    for search in (
        lambda: awqkit.search_scale(huge, [w], group_size=32),
        lambda: awqkit.scale_loss(huge, [w], np.ones(64, np.float32), group_size=32),
        lambda: awqkit.search_clip(huge, w, group_size=32),
        lambda: awqkit.search_clip(huge, w, group_size=32, n_sample_tokens=None),
    ):
        with pytest.raises(ValueError, match="float32 range"):
            search()


def test_a_gram_matrix_beyond_the_search_range_is_refused_whatever_its_source(x, rng):
    w = (0.05 * rng.standard_normal((16, 64))).astype(np.float32)
    st = awqkit.ActivationStats(64, gram=True).update(x)
    g = st.gram()
    g *= 2e38 / np.abs(g).max()  # finite in float64 (and float32), twice that is not
    sal = st.mean_abs()
    with pytest.raises(ValueError, match="Gram matrix .* reaches"):
        _core.search_scale([w], g, 256, sal, 4, 32, True, True, 20, True, False, True)
    # The same Gram matrix in (unpickled) statistics.
    big = awqkit.stats._from_state(64, True, (256, st._impl.sum_abs(), st._impl.sum_sq(), st.max_abs(), g))
    with pytest.raises(ValueError, match="Gram matrix .* reaches"):
        awqkit.search_scale(big, [w], group_size=32)
    with pytest.raises(ValueError, match="Gram matrix .* reaches"):
        awqkit.search_clip(big, w, group_size=32, n_sample_tokens=None)


def test_candidates_whose_scaled_weights_overflow_float16_are_excluded(x, rng):
    w = (1e4 * rng.standard_normal((16, 64))).astype(np.float32)  # quantizable as it is
    sal = np.logspace(-6, 6, 64)  # candidates up to ratio 0.95 spread s over ~11 decades
    res = awqkit.search_scale(x, [w], group_size=32, saliency=sal, duo_scaling="both")
    assert res.excluded.any() and not res.excluded.all()
    assert np.all(np.isinf(res.losses[res.excluded])) and np.all(np.isfinite(res.losses[~res.excluded]))
    assert not res.excluded[res.best] and np.isfinite(res.loss) and np.isfinite(res.rtn_loss)
    # Excluded means what quantize says of the scaled weights.
    for c in (int(np.flatnonzero(res.excluded)[0]), res.best):
        scaled = awqkit.scale_linear_inputs(w, res.candidates[c])
        if res.excluded[c]:
            with pytest.raises(ValueError, match="overflows float16"):
                awqkit.quantize(scaled, group_size=32)
        else:
            awqkit.quantize(scaled, group_size=32)
    # scale_loss: +inf for such a candidate among others, an error when it is the only one.
    bad = res.candidates[np.flatnonzero(res.excluded)[0]]
    losses = awqkit.scale_loss(x, [w], np.stack([bad, np.ones(64, np.float32)]), group_size=32)
    assert np.isinf(losses[0]) and np.isfinite(losses[1])
    with pytest.raises(ValueError, match="these scales make a group scale .* overflow float16"):
        awqkit.scale_loss(x, [w], bad, group_size=32)
