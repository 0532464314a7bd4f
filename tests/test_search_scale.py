"""search_scale: native Gram-based search against the step-by-step numpy reference."""

import numpy as np
import pytest

import awqkit
from awqkit.reference import direct_loss_ref, search_scale_ref, w_mean_ref
from isa_helpers import levels_without
from search_data import linear_weights, planted_activations, scalar_and_isa_results


def assert_same_search(res, ref):
    assert res.best == ref["best"]
    assert res.ratio == ref["ratio"]
    np.testing.assert_allclose(res.scales, ref["scales"], rtol=1e-5)
    np.testing.assert_allclose(res.losses, ref["losses"], rtol=1e-4)
    np.testing.assert_allclose(res.loss, ref["loss"], rtol=1e-4)
    np.testing.assert_allclose(res.rtn_loss, ref["rtn_loss"], rtol=1e-4)
    np.testing.assert_array_equal(res.ratios, ref["ratios"])
    np.testing.assert_array_equal(res.duo, ref["duo"])
    np.testing.assert_array_equal(res.identity, ref["identity"])


CONFIGS = [
    dict(),
    dict(duo_scaling=False),
    dict(duo_scaling="both", n_grid=10),
    dict(zero_point=False, group_size=64),
    dict(bits=3, group_size=-1, include_identity=False),
    dict(scale_dtype="float32", n_grid=8),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_matches_reference_on_planted_salient_channels(cfg):
    rng = np.random.default_rng(len(str(cfg)))
    k = 256
    x = planted_activations(rng, 1500, k)
    ws = linear_weights(rng, [96, 32, 32], k)  # q/k/v-like, sharing the input
    res = awqkit.search_scale(x, ws, **cfg)
    ref = search_scale_ref(x, ws, **cfg)
    assert_same_search(res, ref)
    np.testing.assert_allclose(res.w_mean, w_mean_ref(ws, cfg.get("group_size", 128)), rtol=1e-12)


def test_float16_inputs():
    rng = np.random.default_rng(5)
    x = planted_activations(rng, 800, 128, dtype=np.float16)
    ws = linear_weights(rng, [64, 64], 128, dtype=np.float16)
    assert_same_search(awqkit.search_scale(x, ws, group_size=64), search_scale_ref(x, ws, group_size=64))


def test_stats_input_equals_array_input():
    rng = np.random.default_rng(6)
    x = planted_activations(rng, 900, 128)
    ws = linear_weights(rng, [80], 128)
    st = awqkit.ActivationStats(128, gram=True)
    for part in np.array_split(x, 3):
        st.update(part)
    a, b = awqkit.search_scale(x, ws), awqkit.search_scale(st, ws)
    assert a.best == b.best
    np.testing.assert_array_equal(a.scales, b.scales)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-6)


def test_gram_loss_agrees_with_direct_computation():
    rng = np.random.default_rng(7)
    k = 384
    x = planted_activations(rng, 3000, k, n_salient=6)
    ws = linear_weights(rng, [50, 70], k)
    scales = np.exp(rng.uniform(-1, 1, size=(4, k))).astype(np.float32)
    got = awqkit.scale_loss(x, ws, scales)
    want = [direct_loss_ref(x, ws, s) for s in scales]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert awqkit.scale_loss(x, ws, scales[0]) == pytest.approx(want[0], rel=1e-4)


def test_awq_never_worse_than_rounding():
    rng = np.random.default_rng(8)
    for _trial in range(3):
        x = planted_activations(rng, 600, 128)
        ws = linear_weights(rng, [64], 128)
        res = awqkit.search_scale(x, ws, n_grid=5)
        assert res.loss <= res.rtn_loss
        assert res.losses[res.identity][0] == res.rtn_loss
    # salient channels: scaling must help clearly
    assert res.loss < 0.9 * res.rtn_loss


@pytest.mark.parametrize("name", ["mean_abs", "rms", "max_abs", "contribution", "hessian_diag"])
def test_builtin_saliencies(name):
    rng = np.random.default_rng(9)
    x = planted_activations(rng, 700, 128)
    ws = linear_weights(rng, [64, 32], 128)
    x64 = x.astype(np.float64)
    w64 = np.concatenate(ws).astype(np.float64)
    expected = {
        "mean_abs": np.abs(x64).mean(0),
        "rms": np.sqrt((x64**2).mean(0)),
        "max_abs": np.abs(x64).max(0),
        "contribution": np.abs(x64).mean(0) * np.abs(w64).mean(0),
        "hessian_diag": np.diag(x64.T @ x64) / len(x64),
    }[name]
    res = awqkit.search_scale(x, ws, saliency=name, n_grid=6)
    np.testing.assert_allclose(res.saliency, expected, rtol=1e-9)
    assert_same_search(res, search_scale_ref(x, ws, n_grid=6, x_mean=res.saliency))


def test_array_callable_and_registered_saliency():
    rng = np.random.default_rng(10)
    x = planted_activations(rng, 500, 64)
    ws = linear_weights(rng, [32], 64)
    sal = np.abs(x).astype(np.float64).mean(0) ** 2
    by_array = awqkit.search_scale(x, ws, saliency=sal, group_size=32, n_grid=5)
    by_callable = awqkit.search_scale(x, ws, saliency=lambda st, w: st.mean_abs() ** 2, group_size=32, n_grid=5)
    name = "test_mean_abs_squared"
    if name not in awqkit.available_saliencies():
        awqkit.register_saliency(name, lambda st, w: st.mean_abs() ** 2)
    by_name = awqkit.search_scale(x, ws, saliency=name, group_size=32, n_grid=5)
    for r in (by_callable, by_name):
        assert r.best == by_array.best
        np.testing.assert_allclose(r.scales, by_array.scales, rtol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        awqkit.register_saliency(name, lambda st, w: st.mean_abs())
    with pytest.raises(ValueError, match="unknown saliency"):
        awqkit.search_scale(x, ws, saliency="nope", group_size=32)
    with pytest.raises(ValueError, match="shape"):
        awqkit.search_scale(x, ws, saliency=np.ones(63), group_size=32)
    with pytest.raises(ValueError, match="non-negative"):
        awqkit.search_scale(x, ws, saliency=-np.ones(64), group_size=32)


def test_identical_for_one_and_two_threads():
    rng = np.random.default_rng(11)
    x = planted_activations(rng, 1000, 320)
    ws = linear_weights(rng, [200, 40], 320)
    out = []
    for n in (1, 2):
        with awqkit.use_threads(n):
            out.append(awqkit.search_scale(x, ws, group_size=64, n_grid=6))
    np.testing.assert_array_equal(out[0].losses, out[1].losses)
    np.testing.assert_array_equal(out[0].scales, out[1].scales)


@pytest.mark.parametrize("isa", awqkit.available_isas()[1:])  # each SIMD path against the scalar reference
def test_every_isa_against_scalar(isa):
    rng = np.random.default_rng(12)
    x = planted_activations(rng, 800, 192)
    ws = linear_weights(rng, [100, 30], 192)
    ref, [(_, got)] = scalar_and_isa_results(lambda: awqkit.search_scale(x, ws, group_size=64, n_grid=8), [isa])
    assert got.best == ref.best
    np.testing.assert_array_equal(got.scales, ref.scales)
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-5)


def test_bad_input():
    rng = np.random.default_rng(13)
    x = planted_activations(rng, 100, 64)
    w = linear_weights(rng, [32], 64)[0]
    with pytest.raises(ValueError, match="mismatched K"):
        awqkit.search_scale(x, [np.zeros((8, 32), np.float32)], group_size=32)
    with pytest.raises(ValueError, match="mismatched K"):
        awqkit.search_scale(x, [w, np.zeros((8, 32), np.float32)], group_size=32)
    with pytest.raises(ValueError, match="empty calibration"):
        awqkit.search_scale(x[:0], [w], group_size=32)
    with pytest.raises(ValueError, match="empty calibration"):
        awqkit.search_scale(awqkit.ActivationStats(64, gram=True), [w], group_size=32)
    with pytest.raises(ValueError, match="Gram"):
        awqkit.search_scale(awqkit.ActivationStats(64).update(x), [w], group_size=32)
    nan_x = x.copy()
    nan_x[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        awqkit.search_scale(nan_x, [w], group_size=32)
    nan_w = w.copy()
    nan_w[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        awqkit.search_scale(x, [nan_w], group_size=32)
    with pytest.raises(TypeError, match="float32 or float16"):
        awqkit.search_scale(x.astype(np.float64), [w], group_size=32)
    with pytest.raises(TypeError, match="float32 or float16"):
        awqkit.search_scale(x, [w.astype(np.float64)], group_size=32)
    with pytest.raises(ValueError, match="empty"):
        awqkit.search_scale(x, [], group_size=32)
    with pytest.raises(ValueError, match="divisible"):
        awqkit.search_scale(x, [w], group_size=48)
    with pytest.raises(ValueError, match="duo_scaling"):
        awqkit.search_scale(x, [w], group_size=32, duo_scaling="sometimes")
    with pytest.raises(ValueError, match="n_grid"):
        awqkit.search_scale(x, [w], group_size=32, n_grid=0)
    with pytest.raises(TypeError):
        awqkit.search_scale("activations", [w], group_size=32)


@pytest.mark.skipif(not awqkit.scale_clip_search.amx_supported(), reason="this CPU/OS has no AMX-BF16 (the float32 tiles are tested everywhere)")
def test_amx_path_against_float32_tiles():
    rng = np.random.default_rng(14)
    k = 512
    x = planted_activations(rng, 1200, k)
    ws = linear_weights(rng, [200, 40], k)
    assert awqkit.scale_clip_search.amx_active()
    with awqkit.scale_clip_search.use_amx(False):
        assert not awqkit.scale_clip_search.amx_active()
        ref = awqkit.search_scale(x, ws, n_grid=8)
    got = awqkit.search_scale(x, ws, n_grid=8)
    assert got.best == ref.best
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-5)
    for name in levels_without("quadratic_form_amx"):  # AMX belongs to the levels whose table has it
        with awqkit.use_isa(name):
            assert not awqkit.scale_clip_search.amx_active()


def test_native_layer_refuses_an_empty_weight_list():
    stats = awqkit.ActivationStats(64, gram=True)
    stats.update(np.ones((4, 64), np.float32))
    with pytest.raises(ValueError, match="weights is empty"):
        awqkit._core.search_scale([], stats._impl, -1, np.ones(64), 4, 32, True, True, 4, True, False, True)



def test_a_search_split_in_parts_scores_each_candidate_as_the_whole():
    """search_scale(_part=(i, n)) scores candidates c with c % n == i (a search shared by the
    ranks of a distributed run): put together, the parts' losses are the whole search's bits."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((600, 128)) * (1 + 4 * rng.random(128))).astype(np.float32)
    ws = [(rng.standard_normal((40, 128)) * 0.05).astype(np.float32), (rng.standard_normal((24, 128)) * 0.05).astype(np.float32)]
    stats = awqkit.ActivationStats(128, gram=True).update(x)
    whole = awqkit.search_scale(stats, ws, bits=4, group_size=32, duo_scaling="both")
    for n in (2, 3, 50):
        merged = np.full(len(whole.losses), np.nan)
        for i in range(n):
            part = awqkit.search_scale(stats, ws, bits=4, group_size=32, duo_scaling="both", _part=(i, n))
            mine = np.arange(i, len(merged), n)
            assert np.isnan(np.delete(part.losses, mine)).all()
            merged[mine] = part.losses[mine]
            np.testing.assert_array_equal(part.candidates, whole.candidates)
        np.testing.assert_array_equal(merged, whole.losses)
    with pytest.raises(ValueError, match="part must be in"):
        awqkit.search_scale(stats, ws, _part=(2, 2))
