"""ActivationStats: streaming per-channel statistics and the native Gram matrix."""

import pickle

import numpy as np
import pytest

import awqkit
from search_data import planted_activations


@pytest.mark.parametrize("k", [1, 7, 64, 130, 300])
def test_stats_match_numpy(k):
    rng = np.random.default_rng(k)
    x = planted_activations(rng, 700, k, n_salient=min(2, k))
    st = awqkit.ActivationStats(k, gram=True)
    st.update(x[:300]).update(x[300:])
    x64 = x.astype(np.float64)
    assert st.n_tokens == 700
    np.testing.assert_allclose(st.mean_abs(), np.abs(x64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.rms(), np.sqrt((x64**2).mean(0)), rtol=1e-12)
    np.testing.assert_array_equal(st.max_abs(), np.abs(x64).max(0))
    g = st.gram()
    ref = x64.T @ x64
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_array_equal(g, g.T)


def test_float16_input_and_batched_shape():
    rng = np.random.default_rng(0)
    x = planted_activations(rng, 200, 48).astype(np.float16)
    st = awqkit.ActivationStats(48, gram=True).update(x.reshape(4, 50, 48))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st.mean_abs(), np.abs(x64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.gram(), x64.T @ x64, rtol=1e-5, atol=1e-3)


def test_merge_equals_one_pass():
    rng = np.random.default_rng(1)
    x = planted_activations(rng, 600, 96)
    a = awqkit.ActivationStats(96, gram=True).update(x[:256])
    b = awqkit.ActivationStats(96, gram=True).update(x[256:])
    whole = awqkit.ActivationStats(96, gram=True).update(x[:256]).update(x[256:])
    a.merge(b)
    assert a.n_tokens == 600
    np.testing.assert_allclose(a.gram(), whole.gram(), rtol=1e-13)  # same sums, another association
    np.testing.assert_array_equal(a.max_abs(), whole.max_abs())
    np.testing.assert_allclose(a.mean_abs(), whole.mean_abs(), rtol=1e-15)


def test_pickle_round_trip_for_distributed_calibration():
    import pickle

    rng = np.random.default_rng(4)
    x = planted_activations(rng, 500, 72)
    a = awqkit.ActivationStats(72, gram=True).update(x[:200])
    b = pickle.loads(pickle.dumps(awqkit.ActivationStats(72, gram=True).update(x[200:])))
    whole = awqkit.ActivationStats(72, gram=True).update(x[:200]).update(x[200:])
    a.merge(b)
    assert a.n_tokens == 500
    np.testing.assert_allclose(a.gram(), whole.gram(), rtol=1e-13)
    np.testing.assert_array_equal(a.max_abs(), whole.max_abs())
    c = pickle.loads(pickle.dumps(awqkit.ActivationStats(72).update(x)))
    assert not c.has_gram and c.n_tokens == 500
    np.testing.assert_array_equal(c.mean_abs(), whole.mean_abs())


def test_gram_identical_for_any_thread_count():
    rng = np.random.default_rng(2)
    x = planted_activations(rng, 1000, 200)
    results = []
    for n in (1, 2):
        with awqkit.use_threads(n):
            st = awqkit.ActivationStats(200, gram=True).update(x)
            results.append((st.gram(), st.mean_abs()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("isa", awqkit.available_isas())
def test_gram_every_isa_against_scalar(isa):
    rng = np.random.default_rng(3)
    x = planted_activations(rng, 513, 150)
    with awqkit.use_isa("scalar"):
        ref = awqkit.ActivationStats(150, gram=True).update(x).gram()
    with awqkit.use_isa(isa):
        got = awqkit.ActivationStats(150, gram=True).update(x).gram()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_bad_input():
    st = awqkit.ActivationStats(8, gram=True)
    with pytest.raises(ValueError, match="mismatched K"):
        st.update(np.zeros((4, 9), np.float32))
    with pytest.raises(TypeError, match="float32 or float16"):
        st.update(np.zeros((4, 8), np.float64))
    with pytest.raises(TypeError, match="float32 or float16"):
        st.update(np.zeros((4, 8), np.int32))
    bad = np.ones((4, 8), np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf.*token 2"):
        st.update(bad)
    assert st.n_tokens == 0  # a refused batch leaves the statistics untouched
    with pytest.raises(ValueError, match="empty calibration"):
        st.mean_abs()
    with pytest.raises(ValueError, match="Gram"):
        awqkit.ActivationStats(8).gram()
    with pytest.raises(ValueError, match="positive"):
        awqkit.ActivationStats(0)
    with pytest.raises(ValueError):
        st.merge(awqkit.ActivationStats(9, gram=True))
    with pytest.raises(TypeError):
        st.merge("stats")


def _bounded_state(stats):
    return [np.asarray(a) for a in stats._impl.state()[1:]]


def test_bounded_sums_are_order_independent():
    """With bounds, batches split among accumulators and merged in any order or grouping give
    the same bits (what makes a distributed calibration world-size independent), and the
    values stay within float32 rounding of the unbounded statistics."""
    rng = np.random.default_rng(3)
    k = 150
    x = (rng.standard_normal((4500, k)) * np.exp(2 * rng.standard_normal(k))).astype(np.float32)
    x[:, 7] = 0.0  # a channel that is all zeros
    parts = [x[:1024], x[1024:1900], x[1900:3300], x[3300:]]
    bounds = (np.abs(x).max(axis=0).astype(np.float64), x.shape[0] + 100)

    def accumulate(groups):
        total = None
        for group in groups:
            s = awqkit.ActivationStats(k, gram=True, bounds=bounds)
            for p in group:
                s.update(p)
            total = s if total is None else total.merge(s)
        return total

    one = accumulate([parts])
    for groups in ([[parts[0]], [parts[1], parts[2]], [parts[3]]], [[parts[3]], [parts[1]], [parts[0]], [parts[2]]],
                   [[parts[2], parts[3]], [parts[0], parts[1]]]):
        other = accumulate(groups)
        assert all(np.array_equal(a, b) for a, b in zip(_bounded_state(one), _bounded_state(other)))
    plain = awqkit.ActivationStats(k, gram=True)
    for p in parts:
        plain.update(p)
    np.testing.assert_allclose(one.gram(), plain.gram(), rtol=1e-12, atol=1e-12 * np.abs(plain.gram()).max())
    np.testing.assert_allclose(one.mean_abs(), plain.mean_abs(), rtol=1e-12)
    np.testing.assert_array_equal(one.max_abs(), plain.max_abs())
    back = pickle.loads(pickle.dumps(one))
    assert np.array_equal(back.gram(), one.gram()) and back.bounds[1] == bounds[1]


def test_bounded_stats_refuse_what_breaks_exactness():
    k = 16
    x = np.ones((10, k), np.float32)
    s = awqkit.ActivationStats(k, gram=True, bounds=(np.ones(k), 12))
    s.update(x)
    with pytest.raises(ValueError, match="at most 12 tokens"):
        s.update(x[:3])
    with pytest.raises(ValueError, match="above the statistics' bound"):
        s.update(2 * x[:1])
    with pytest.raises(ValueError, match="same bounds"):
        s.merge(awqkit.ActivationStats(k, gram=True, bounds=(2 * np.ones(k), 12)))
    with pytest.raises(ValueError, match="same bounds"):
        s.merge(awqkit.ActivationStats(k, gram=True))
    with pytest.raises(ValueError, match="needs empty statistics"):
        s._impl.set_bounds(np.ones(k), 12)
    with pytest.raises(ValueError, match="finite"):
        awqkit.ActivationStats(k, bounds=(np.full(k, np.nan), 12))
    with pytest.raises(TypeError, match="max_tokens"):
        awqkit.ActivationStats(k, bounds=(np.ones(k), 1.5))
    n, sa, sq, ma, g = s._impl.state()
    with pytest.raises(ValueError, match="not on the grid"):
        awqkit.stats._from_state(k, True, (n, sa + 1e-9, sq, ma, g), s.bounds)
