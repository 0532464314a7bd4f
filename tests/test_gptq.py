"""Native GPTQ against the column-by-column numpy reference (awqkit.reference.gptq_ref)."""

import numpy as np
import pytest

import awqkit
from awqkit import ActivationStats, quantize
from awqkit.gptq import gptq_factor, gptq_quantize, hessian_of
from awqkit.reference import gptq_ref
from search_data import planted_activations


def _layer(rng, n, k, tokens=512, dead=()):
    x = planted_activations(rng, tokens, k)
    x[:, list(dead)] = 0.0
    w = (0.05 * rng.standard_normal((n, k))).astype(np.float32)
    return x, w


def _assert_matches(res, ref):
    codes, scales, zeros, damp = ref
    qt = res.quantized
    np.testing.assert_array_equal(qt.codes, codes)
    np.testing.assert_array_equal(qt.scales.astype(np.float32), scales)
    np.testing.assert_array_equal(qt.zeros, zeros)
    assert res.damp == damp


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, -1])
@pytest.mark.parametrize("zero_point", [True, False])
def test_codes_equal_reference(rng, bits, group_size, zero_point):
    x, w = _layer(rng, 45, 192, dead=(7,))
    h = hessian_of(x)
    res = gptq_quantize(w, x, bits=bits, group_size=group_size, zero_point=zero_point)
    _assert_matches(res, gptq_ref(w, h, bits, group_size, zero_point))


@pytest.mark.parametrize("act_order,static_groups", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("block_size", [128, 32, 7])
def test_act_order_static_groups_and_blocks_equal_reference(rng, act_order, static_groups, block_size):
    x, w = _layer(rng, 70, 256, dead=(0, 100))
    h = hessian_of(x)
    res = gptq_quantize(w, h, group_size=64, act_order=act_order, static_groups=static_groups, block_size=block_size)
    _assert_matches(res, gptq_ref(w, h, 4, 64, True, act_order=act_order, static_groups=static_groups))
    if act_order:
        assert not np.array_equal(res.perm, np.arange(256))


@pytest.mark.parametrize("group_size", [96, 192])
def test_groups_that_do_not_divide_the_block(rng, group_size):
    # 192 > 128: blocks of 96 columns (a divisor), so each group's scale still sees every update.
    x, w = _layer(rng, 20, 384)
    h = hessian_of(x)
    _assert_matches(gptq_quantize(w, h, group_size=group_size), gptq_ref(w, h, 4, group_size, True))


def test_given_scales_equal_reference(rng):
    x, w = _layer(rng, 30, 128)
    h = hessian_of(x)
    clipped = np.clip(w, -0.08, 0.08)
    qt = quantize(clipped, 4, 32, True)
    res = gptq_quantize(w, h, group_size=32, scales=qt.scales, zeros=qt.zeros)
    np.testing.assert_array_equal(res.quantized.scales, qt.scales)
    np.testing.assert_array_equal(res.quantized.zeros, qt.zeros)
    _assert_matches(res, gptq_ref(w, h, 4, 32, True, scales=qt.scales.astype(np.float32), zeros=qt.zeros))


def test_float16_weights_and_float32_scales(rng):
    x, w = _layer(rng, 24, 128)
    h = hessian_of(x)
    w16 = w.astype(np.float16)
    res = gptq_quantize(w16, h, group_size=64, scale_dtype="float32")
    assert res.quantized.scales.dtype == np.float32
    _assert_matches(res, gptq_ref(w16.astype(np.float32), h, 4, 64, True, scale_dtype="float32"))


def test_lower_output_error_than_rounding(rng):
    # Correlated inputs, as real ones are: GPTQ's gain is in the off-diagonal of the Hessian.
    _, w = _layer(rng, 64, 256)
    mix = np.eye(256) + 0.2 * rng.standard_normal((256, 256))
    x = (rng.standard_normal((2048, 256)) @ mix).astype(np.float32)
    h = hessian_of(x)

    def err(deq):
        e = (deq - w).astype(np.float64)
        return float(np.einsum("ij,jk,ik->", e, h, e))

    rtn = err(quantize(w, 4, 64, True).dequantize())
    for kw in ({}, {"act_order": True}):
        assert err(gptq_quantize(w, h, group_size=64, **kw).quantized.dequantize()) < 0.9 * rtn


def test_factor_is_shared_and_rows_are_independent(rng):
    # q, k and v read one input: one factor, and rounding them stacked gives the same rows.
    x, _ = _layer(rng, 1, 128)
    ws = [(0.05 * rng.standard_normal((n, 128))).astype(np.float32) for n in (64, 16, 16)]
    f = gptq_factor(ActivationStats(128, gram=True).update(x), act_order=True)
    parts = [gptq_quantize(w, f, group_size=32).quantized.codes for w in ws]
    stacked = gptq_quantize(np.concatenate(ws), f, group_size=32).quantized.codes
    np.testing.assert_array_equal(np.concatenate(parts), stacked)


def test_thread_count_and_isa_do_not_change_bits(rng):
    x, w = _layer(rng, 200, 256)
    h = hessian_of(x)
    results = []
    for isa in awqkit.available_isas():
        for threads in (1, 2, 3):
            with awqkit.use_isa(isa), awqkit.use_threads(threads):
                r = gptq_quantize(w, h, group_size=64, act_order=True)
            results.append((r.quantized.codes, r.quantized.scales, r.loss))
    for codes, scales, loss in results[1:]:
        np.testing.assert_array_equal(codes, results[0][0])
        np.testing.assert_array_equal(scales, results[0][1])
        np.testing.assert_array_equal(loss, results[0][2])


def test_singular_hessian_raises_the_dampening(rng):
    # Rank 1: mean(diag) * 0.01 still factors in exact arithmetic, so force a tiny damp.
    x = np.outer(rng.standard_normal(64), rng.standard_normal(32)).astype(np.float32)
    w = (0.05 * rng.standard_normal((8, 32))).astype(np.float32)
    h = hessian_of(x)
    res = gptq_quantize(w, h, group_size=32, damp=1e-300)
    assert 1e-300 <= res.damp <= 1.0
    _assert_matches(res, gptq_ref(w, h, 4, 32, True, damp=1e-300))


def test_bad_input_is_refused(rng):
    x, w = _layer(rng, 8, 64)
    h = hessian_of(x)
    bad = w.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf .row 3"):
        gptq_quantize(bad, h, group_size=32)
    with pytest.raises(ValueError, match="mismatched K"):
        gptq_quantize(w[:, :32], x, group_size=32)
    with pytest.raises(ValueError, match="K = 32 inputs but the Hessian factor 64"):
        gptq_quantize(w[:, :32], gptq_factor(h), group_size=32)
    asym = h.copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        gptq_factor(asym)
    neg = h.copy()
    neg[2, 2] = -1.0
    with pytest.raises(ValueError, match="negative diagonal"):
        gptq_factor(neg)
    inf = h.copy()
    inf[1, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        gptq_factor(inf)
    for d in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="damp"):
            gptq_factor(h, damp=d)
    with pytest.raises(TypeError, match="damp"):
        gptq_factor(h, damp="0.01")
    with pytest.raises(ValueError, match="divide"):
        gptq_quantize(w, h, group_size=48)
    with pytest.raises(ValueError, match="bits"):
        gptq_quantize(w, h, bits=9)
    with pytest.raises(ValueError, match="block_size"):
        gptq_quantize(w, h, block_size=0)
    qt = quantize(w, 4, 32, True)
    with pytest.raises(ValueError, match="both scales and zeros"):
        gptq_quantize(w, h, group_size=32, scales=qt.scales)
    with pytest.raises(ValueError, match=r"\[N, G\]"):
        gptq_quantize(w, h, group_size=32, scales=qt.scales[:, :1], zeros=qt.zeros[:, :1])
    with pytest.raises(ValueError, match="at most 15"):
        gptq_quantize(w, h, group_size=32, scales=qt.scales, zeros=np.full_like(qt.zeros, 16))
    with pytest.raises(ValueError, match="finite and positive"):
        gptq_quantize(w, h, group_size=32, scales=np.zeros_like(qt.scales), zeros=qt.zeros)
    with pytest.raises(ValueError, match="float16 values"):
        gptq_quantize(w, h, group_size=32, scales=qt.scales.astype(np.float32) * np.float32(1.0001), zeros=qt.zeros)
    with pytest.raises(TypeError, match="zeros must be uint8"):
        gptq_quantize(w, h, group_size=32, scales=qt.scales, zeros=qt.zeros.astype(np.int32))
    with pytest.raises(ValueError, match="no tokens"):
        gptq_quantize(w, x[:0], group_size=32)
    with pytest.raises(ValueError, match="Gram matrix"):
        gptq_quantize(w, ActivationStats(64).update(x), group_size=32)
    with pytest.raises(ValueError, match="overflows float16"):
        gptq_quantize(w * np.float32(1e8), h, group_size=32)
    with pytest.raises(TypeError):
        awqkit._core.GPTQFactor()
