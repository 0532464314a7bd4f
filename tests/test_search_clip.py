"""search_clip / apply_clip against AutoAWQ's _compute_best_clip (numpy reference)."""

import numpy as np
import pytest

import awqkit
from awqkit.reference import pseudo_quantize_ref, search_clip_ref
from search_data import linear_weights, planted_activations, scalar_and_isa_results


def assert_same_clip(res, ref):
    max_val, before, after = ref
    np.testing.assert_array_equal(res.max_val, max_val)
    np.testing.assert_array_equal(res.min_val, -max_val)
    np.testing.assert_allclose(res.group_loss_before, before, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(res.group_loss_after, after, rtol=1e-4, atol=1e-12)
    assert res.loss_before == pytest.approx(before.mean(), rel=1e-4)
    assert res.loss_after == pytest.approx(after.mean(), rel=1e-4)


@pytest.mark.parametrize(
    "tokens,n_sample,cfg",
    [
        (1500, 512, {}),  # stride 2: 750 sampled tokens
        (3000, 512, dict(zero_point=False)),  # stride 5
        (700, 512, dict(group_size=64, bits=3)),  # stride 1
        (1200, None, dict(n_grid=10, max_shrink=0.8)),  # every token, exactly
        (900, 100, dict(group_size=-1, scale_dtype="float32")),
    ],
)
def test_matches_reference(tokens, n_sample, cfg):
    rng = np.random.default_rng(tokens)
    k = 256
    x = planted_activations(rng, tokens, k)
    w = linear_weights(rng, [72], k)[0]
    res = awqkit.search_clip(x, w, n_sample_tokens=n_sample, **cfg)
    assert res.n_tokens == -(-tokens // (1 if n_sample is None else max(1, tokens // n_sample)))
    assert_same_clip(res, search_clip_ref(x, w, n_sample_token=n_sample, **cfg))


def test_exact_from_stats_equals_exact_from_activations():
    rng = np.random.default_rng(1)
    x = planted_activations(rng, 800, 128)
    w = linear_weights(rng, [40], 128)[0]
    st = awqkit.ActivationStats(128, gram=True).update(x)
    a = awqkit.search_clip(x, w, n_sample_tokens=None)
    b = awqkit.search_clip(st, w, n_sample_tokens=None)
    np.testing.assert_array_equal(a.max_val, b.max_val)
    np.testing.assert_allclose(a.group_loss_after, b.group_loss_after, rtol=1e-6)
    with pytest.raises(ValueError, match="n_sample_tokens=None"):
        awqkit.search_clip(st, w)


def test_clipping_never_increases_loss_and_apply_clip():
    rng = np.random.default_rng(2)
    x = planted_activations(rng, 1000, 128)
    w = linear_weights(rng, [64], 128)[0]
    w[3, 5] = 1.0  # an outlier weight that clipping should cut
    for asymmetric in (False, True):
        res = awqkit.search_clip(x, w, n_sample_tokens=None, asymmetric=asymmetric)
        assert np.all(res.group_loss_after <= res.group_loss_before)
        assert res.loss_after < res.loss_before
        clipped = awqkit.apply_clip(w, res)
        assert np.all(clipped <= np.repeat(res.max_val, 128, axis=1))
        assert np.all(clipped >= np.repeat(res.min_val, 128, axis=1))
        # the reported objective is that of the clipped, quantized weight
        e = (pseudo_quantize_ref(clipped) - w).astype(np.float64)
        direct = np.mean((x.astype(np.float64) @ e.T) ** 2)
        assert direct == pytest.approx(res.loss_after, rel=1e-4)  # one group per row: G = 1
    np.testing.assert_array_equal(awqkit.apply_clip(w, res.max_val, res.min_val), awqkit.apply_clip(w, res))


def test_asymmetric_searches_both_bounds():
    rng = np.random.default_rng(3)
    x = planted_activations(rng, 800, 256)
    w = linear_weights(rng, [64], 256)[0] + 0.02  # lopsided groups
    sym = awqkit.search_clip(x, w, n_sample_tokens=None)
    asym = awqkit.search_clip(x, w, n_sample_tokens=None, asymmetric=True)
    assert asym.loss_before == pytest.approx(sym.loss_before, rel=1e-12)
    assert np.any(asym.shrink != asym.shrink_min)
    gw = w.reshape(64, 2, 128)
    f = np.float32(1) - np.arange(10) / np.float32(20)
    np.testing.assert_array_equal(asym.max_val, gw.max(-1) * f.astype(np.float32)[asym.shrink])
    np.testing.assert_array_equal(asym.min_val, gw.min(-1) * f.astype(np.float32)[asym.shrink_min])


def test_identical_for_one_and_two_threads_and_every_isa():
    rng = np.random.default_rng(4)
    x = planted_activations(rng, 900, 256)
    w = linear_weights(rng, [100], 256)[0]
    out = []
    for n in (1, 2):
        with awqkit.use_threads(n):
            out.append(awqkit.search_clip(x, w, asymmetric=True))
    np.testing.assert_array_equal(out[0].max_val, out[1].max_val)
    np.testing.assert_array_equal(out[0].group_loss_after, out[1].group_loss_after)
    ref, per_isa = scalar_and_isa_results(lambda: awqkit.search_clip(x, w))
    for _, got in per_isa:
        np.testing.assert_array_equal(got.max_val, ref.max_val)
        np.testing.assert_allclose(got.group_loss_after, ref.group_loss_after, rtol=1e-5)


def test_bad_input():
    rng = np.random.default_rng(5)
    x = planted_activations(rng, 100, 64)
    w = linear_weights(rng, [16], 64)[0]
    with pytest.raises(ValueError, match="mismatched K"):
        awqkit.search_clip(x[:, :32], w, group_size=32)
    with pytest.raises(ValueError, match="empty calibration"):
        awqkit.search_clip(x[:0], w, group_size=32)
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        awqkit.search_clip(bad, w, group_size=32)
    with pytest.raises(TypeError, match="float32 or float16"):
        awqkit.search_clip(x.astype(np.float64), w, group_size=32)
    with pytest.raises(ValueError, match="max_shrink"):
        awqkit.search_clip(x, w, group_size=32, max_shrink=0.0)
    with pytest.raises(ValueError, match="max_val"):
        awqkit.apply_clip(w, np.ones((16, 3), np.float32))
    with pytest.raises(ValueError, match="min_val"):
        awqkit.apply_clip(w, np.ones((16, 2), np.float32), np.ones((16, 1), np.float32))


def test_asymmetric_choice_is_optimal_by_brute_force():
    """Independent of the native path: score every (max shrink, min shrink) pair directly in
    float64 over all tokens with the numpy quantizer; the native choice must be the optimum
    and its reported loss must be that pair's loss."""
    rng = np.random.default_rng(11)
    n, k, gs, n_grid = 6, 256, 128, 20
    x = planted_activations(rng, 400, k)
    w = linear_weights(rng, [n], k)[0] + 0.01
    res = awqkit.search_clip(x, w, group_size=gs, n_grid=n_grid, n_sample_tokens=None, asymmetric=True)
    f = (np.float32(1) - np.arange(n_grid // 2) / np.float32(n_grid)).astype(np.float32)
    x64 = x.astype(np.float64)
    for r in range(n):
        for g in range(k // gs):
            wg = w[r, g * gs:(g + 1) * gs]
            xg = x64[:, g * gs:(g + 1) * gs]
            losses = np.empty((f.size, f.size))
            for a in range(f.size):
                for b in range(f.size):
                    cur = np.clip(wg, wg.min() * f[b], wg.max() * f[a])
                    q = pseudo_quantize_ref(cur[None, :], 4, -1, True)[0]
                    losses[a, b] = np.mean((xg @ (q - wg).astype(np.float64)) ** 2)
            chosen = losses[res.shrink[r, g], res.shrink_min[r, g]]
            assert chosen == pytest.approx(losses.min(), rel=1e-6)
            assert res.group_loss_after[r, g] == pytest.approx(chosen, rel=1e-4)
            assert res.group_loss_before[r, g] == pytest.approx(losses[0, 0], rel=1e-4)
