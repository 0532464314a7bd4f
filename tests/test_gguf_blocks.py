"""GGUF block types (Q4_0, Q4_1, Q8_0): the native quantizer is llama.cpp's reference quantizer
bit for bit, checked against awqkit's numpy reference and against the `gguf` package's own
quantizer and dequantizer; the AWQ searches with a GGUF rule match the numpy references."""

import numpy as np
import pytest

import awqkit
from awqkit import _core
from awqkit.gguf_blocks import BLOCK_TYPES, pack_blocks, rule_id, unpack_blocks
from awqkit.reference import (
    ggml_dequantize_ref,
    ggml_quantize_ref,
    search_clip_ref,
    search_clip_refit_ref,
    search_scale_ref,
)
from search_data import linear_weights, planted_activations

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf import quants as gguf_quants  # noqa: E402

TYPES = {"q4_0": (4, False), "q4_1": (4, True), "q8_0": (8, False)}


def weights(rng, scale=1.0, n=48, k=256):
    w = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    w[0, :32] = 0.0                                   # an all-zero block (d = 0)
    w[1, :32] = 3.0                                   # a constant block
    w[2, :32] = np.where(np.arange(32) % 2, 2.0, -2.0)  # equal magnitudes, both signs: the first wins
    w[3, 32:64] *= 1e-6                               # tiny values
    w[4, :32] = rng.standard_normal(32).astype(np.float32) * 1e4  # near float16's range
    return w


def test_table_matches_gguf_package():
    assert set(BLOCK_TYPES) == set(TYPES)
    for name, t in BLOCK_TYPES.items():
        qt = GGMLQuantizationType[name.upper()]
        assert t.ggml_type == int(qt)
        block, type_size = gguf.GGML_QUANT_SIZES[qt]
        assert (t.block, t.type_size) == (block, type_size)
        assert (t.bits, t.has_min) == TYPES[name]
        assert rule_id(name) == t.rule and rule_id(name.upper()) == t.rule
    assert rule_id("awq") == 0
    with pytest.raises(ValueError, match="rule must be one of"):
        rule_id("q4_k")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 20.0])
def test_native_equals_reference_and_gguf_package(name, scale):
    bits, zp = TYPES[name]
    w = weights(np.random.default_rng(int(scale * 1000) + len(name)), scale)
    qt = awqkit.quantize(w, bits, 32, zp, rule=name)
    codes, scales, offsets = ggml_quantize_ref(w, name)
    np.testing.assert_array_equal(qt.codes, codes)
    np.testing.assert_array_equal(qt.scales.astype(np.float32).view(np.uint32), scales.view(np.uint32))
    if offsets is None:
        assert qt.offsets is None
    else:
        np.testing.assert_array_equal(qt.offsets.astype(np.float32), offsets)
    deq = awqkit.dequantize(qt)
    np.testing.assert_array_equal(deq, ggml_dequantize_ref(codes, scales, offsets, name))
    np.testing.assert_array_equal(awqkit.pseudo_quantize(w, bits, 32, zp, rule=name), deq)
    # the gguf package: the same bytes, and its dequantizer gives our weights
    gtype = GGMLQuantizationType[name.upper()]
    blocks = pack_blocks(qt)
    np.testing.assert_array_equal(blocks, gguf_quants.quantize(w, gtype))
    np.testing.assert_array_equal(gguf_quants.dequantize(blocks, gtype), deq)
    back = unpack_blocks(blocks, name, w.shape)
    np.testing.assert_array_equal(awqkit.dequantize(back), deq)


def test_real_layer(data_dir):
    from safetensors.numpy import load_file

    t = load_file(str(data_dir / "stories260K-hf" / "model.safetensors"))
    w = np.ascontiguousarray(t["model.layers.1.mlp.gate_proj.weight"], dtype=np.float32)  # [172, 64]
    for name, (bits, zp) in TYPES.items():
        qt = awqkit.quantize(w, bits, 32, zp, rule=name)
        gtype = GGMLQuantizationType[name.upper()]
        np.testing.assert_array_equal(pack_blocks(qt), gguf_quants.quantize(w, gtype))


@pytest.mark.parametrize("name", TYPES)
def test_thread_count_does_not_change_codes(name):
    bits, zp = TYPES[name]
    w = weights(np.random.default_rng(3), 1.0, n=256, k=512)
    before = _core.max_threads()
    try:
        _core.set_num_threads(1)
        one = awqkit.quantize(w, bits, 32, zp, rule=name)
        _core.set_num_threads(max(2, before))
        many = awqkit.quantize(w, bits, 32, zp, rule=name)
    finally:
        _core.set_num_threads(before)
    np.testing.assert_array_equal(one.codes, many.codes)
    np.testing.assert_array_equal(one.scales, many.scales)


def test_the_type_fixes_bits_blocks_symmetry_and_scale_dtype():
    w = np.ones((8, 64), np.float32)
    with pytest.raises(ValueError, match="4-bit codes, got bits = 8"):
        awqkit.quantize(w, 8, 32, False, rule="q4_0")
    with pytest.raises(ValueError, match="blocks of 32 weights, got group_size = 64"):
        awqkit.quantize(w, 4, 64, False, rule="q4_0")
    with pytest.raises(ValueError, match="symmetric"):
        awqkit.quantize(w, 4, 32, True, rule="q4_0")
    with pytest.raises(ValueError, match="asymmetric"):
        awqkit.quantize(w, 4, 32, False, rule="q4_1")
    with pytest.raises(ValueError, match="float16 scales"):
        awqkit.quantize(w, 8, 32, False, scale_dtype="float32", rule="q8_0")
    with pytest.raises(ValueError, match="overflows float16"):
        awqkit.quantize(np.full((1, 32), 1e6, np.float32), 4, 32, False, rule="q4_0")
    with pytest.raises(ValueError, match="overflows float16"):  # Q4_1's minimum must fit float16 too
        awqkit.quantize(np.full((1, 32), -1e6, np.float32), 4, 32, True, rule="q4_1")


@pytest.mark.parametrize("name", TYPES)
def test_scale_search_rounds_with_the_type(name):
    bits, zp = TYPES[name]
    rng = np.random.default_rng(11)
    x = planted_activations(rng, 700, 128)
    ws = linear_weights(rng, [48, 16], 128)
    cfg = dict(bits=bits, group_size=32, zero_point=zp, n_grid=8)
    res = awqkit.search_scale(x, ws, rule=name, **cfg)
    ref = search_scale_ref(x, ws, rule=name, **cfg)
    assert res.best == ref["best"]
    np.testing.assert_allclose(res.losses, ref["losses"], rtol=1e-4)
    # and it is a different objective from the awq rule's
    other = search_scale_ref(x, ws, **cfg)
    assert not np.allclose(other["losses"], ref["losses"], rtol=1e-6)


@pytest.mark.parametrize("name", TYPES)
def test_clip_search_rounds_with_the_type(name):
    bits, zp = TYPES[name]
    rng = np.random.default_rng(12)
    x = planted_activations(rng, 900, 128)
    w = linear_weights(rng, [40], 128)[0]
    cfg = dict(bits=bits, group_size=32, zero_point=zp, n_grid=10)
    res = awqkit.search_clip(x, w, rule=name, **cfg)
    max_val, before, after = search_clip_ref(x, w, rule=name, **cfg)
    np.testing.assert_array_equal(res.max_val, max_val)
    np.testing.assert_allclose(res.group_loss_before, before, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(res.group_loss_after, after, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("n_expand", [0, 8])
def test_clip_search_scale_refit_matches_reference(name, n_expand):
    bits, zp = TYPES[name]
    rng = np.random.default_rng(13)
    x = planted_activations(rng, 1100, 128)
    w = linear_weights(rng, [24], 128)[0]
    res = awqkit.search_clip(x, w, bits=bits, group_size=32, zero_point=zp, n_grid=10, rule=name, refit_scales=True,
                             n_expand=n_expand)
    max_val, min_val, scales, offsets, before, after, codes = search_clip_refit_ref(x, w, name, n_grid=10,
                                                                                   n_expand=n_expand)
    np.testing.assert_array_equal(res.max_val, max_val)
    np.testing.assert_array_equal(res.min_val, min_val)
    np.testing.assert_array_equal(res.scales, scales)
    np.testing.assert_array_equal(res.codes, codes)
    if offsets is None:
        assert res.offsets is None
    else:
        np.testing.assert_array_equal(res.offsets, offsets)
    np.testing.assert_allclose(res.group_loss_before, before, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(res.group_loss_after, after, rtol=1e-4, atol=1e-12)
    assert res.loss_after < res.loss_before
    if n_expand:
        assert (res.shrink < -1).any()  # some group chose an expanded scale
    # what a file stores (the chosen codes with the refit scales) scores what the search said
    t = BLOCK_TYPES[name]
    qt = awqkit.QuantizedTensor(codes=res.codes, scales=res.scales.astype(np.float16),
                                zeros=np.full(res.scales.shape, t.zero, np.uint8), bits=bits, group_size=32,
                                zero_point=zp, offsets=None if res.offsets is None else res.offsets.astype(np.float16),
                                rule=name)
    xs = x[:: max(1, 1100 // 512)].astype(np.float64)
    e = (awqkit.dequantize(qt) - w).astype(np.float64).reshape(24, 1, 4, 32)
    per_group = ((xs.reshape(-1, 4, 32)[None] * e).sum(-1) ** 2).mean(1)
    np.testing.assert_allclose(per_group, res.group_loss_after, rtol=1e-4, atol=1e-12)
    # and the packed blocks hold those values (the gguf package dequantizes them the same)
    blocks = pack_blocks(qt)
    np.testing.assert_array_equal(gguf_quants.dequantize(blocks, GGMLQuantizationType[name.upper()]),
                                  awqkit.dequantize(qt))


def test_refit_is_for_gguf_rules_only():
    w = np.ones((8, 64), np.float32)
    with pytest.raises(ValueError, match="refit is for GGUF"):
        awqkit.search_clip(np.ones((40, 64), np.float32), w, group_size=32, refit_scales=True)
