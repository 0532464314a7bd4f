"""AutoAWQ gemm packing: bit-exact with the reference layout and a hand-worked example."""

from __future__ import annotations

import numpy as np
import pytest

import awqkit
from awqkit.reference import pack_awq_ref, unpack_awq_ref


def test_golden_nibble_order():
    """One row, 8 output channels, codes 0..7 per channel n: the word is worked out by hand.

    Word bits 4i..4i+3 hold output column [0,2,4,6,1,3,5,7][i], so the nibbles from least
    significant up are codes of columns 0,2,4,6,1,3,5,7 = 0,2,4,6,1,3,5,7 -> 0x75316420.
    """
    codes = np.arange(8, dtype=np.uint8).reshape(8, 1)  # N=8 outputs, K=1 input
    qt = awqkit.QuantizedTensor(codes=codes, scales=np.ones((8, 1), np.float16), zeros=np.full((8, 1), 8, np.uint8), bits=4, group_size=1)
    packed = awqkit.pack_awq(qt)
    assert packed["qweight"].shape == (1, 1)
    assert packed["qweight"][0, 0] == np.int32(0x75316420)
    assert packed["qzeros"][0, 0] == np.int32(0x88888888 - 2**32)
    # A high nibble of 0xF must give a negative int32 (the sign bit), not overflow.
    qt2 = awqkit.QuantizedTensor(codes=np.full((8, 1), 15, np.uint8), scales=np.ones((8, 1), np.float16), zeros=np.zeros((8, 1), np.uint8), bits=4, group_size=1)
    assert awqkit.pack_awq(qt2)["qweight"][0, 0] == -1


@pytest.mark.parametrize("n,k,gs", [(8, 32, 32), (16, 64, 32), (24, 96, 32), (64, 256, 128), (576, 576, 64), (40, 128, -1)])
def test_pack_matches_reference_and_round_trips(rng, n, k, gs):
    w = rng.standard_normal((n, k)).astype(np.float32)
    qt = awqkit.quantize(w, bits=4, group_size=gs)
    packed = awqkit.pack_awq(qt)
    ref = pack_awq_ref(qt.codes, qt.scales, qt.zeros)
    g = qt.n_groups
    assert packed["qweight"].shape == (k, n // 8) and packed["qweight"].dtype == np.int32
    assert packed["qzeros"].shape == (g, n // 8) and packed["qzeros"].dtype == np.int32
    assert packed["scales"].shape == (g, n) and packed["scales"].dtype == np.float16
    for key in ("qweight", "qzeros", "scales"):
        np.testing.assert_array_equal(packed[key], ref[key])
    back = awqkit.unpack_awq(packed["qweight"], packed["qzeros"], packed["scales"], gs)
    np.testing.assert_array_equal(back.codes, qt.codes)
    np.testing.assert_array_equal(back.zeros, qt.zeros)
    np.testing.assert_array_equal(back.scales, qt.scales)
    np.testing.assert_array_equal(awqkit.dequantize(back), awqkit.dequantize(qt))
    c, s, z = unpack_awq_ref(packed["qweight"], packed["qzeros"], packed["scales"])
    np.testing.assert_array_equal(c, qt.codes)
    np.testing.assert_array_equal(z, qt.zeros)


def test_unpack_pack_of_arbitrary_words_is_identity(rng):
    words = rng.integers(-(2**31), 2**31, size=(96, 5), dtype=np.int64).astype(np.int32)
    zeros = rng.integers(-(2**31), 2**31, size=(3, 5), dtype=np.int64).astype(np.int32)
    scales = rng.random((3, 40)).astype(np.float16)
    qt = awqkit.unpack_awq(words, zeros, scales, 32)
    again = awqkit.pack_awq(qt)
    np.testing.assert_array_equal(again["qweight"], words)
    np.testing.assert_array_equal(again["qzeros"], zeros)


def test_symmetric_mode_packs_with_zero_eight(rng):
    qt = awqkit.quantize(rng.standard_normal((16, 64)).astype(np.float32), bits=4, group_size=32, zero_point=False)
    packed = awqkit.pack_awq(qt)
    assert np.all(packed["qzeros"].view(np.uint32) == 0x88888888)


def test_pack_refuses_what_the_format_cannot_hold(rng):
    w = rng.standard_normal((12, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="multiple of 8"):
        awqkit.pack_awq(awqkit.quantize(w, group_size=32))
    w8 = rng.standard_normal((16, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="4-bit"):
        awqkit.pack_awq(awqkit.quantize(w8, bits=3, group_size=32))
    with pytest.raises(ValueError, match="float16"):
        awqkit.pack_awq(awqkit.quantize(w8 * 1e-6, group_size=32, scale_dtype="float32"))
    with pytest.raises(TypeError):
        awqkit.pack_awq(w8)
    bad = awqkit.QuantizedTensor(codes=np.full((8, 32), 16, np.uint8), scales=np.ones((8, 1), np.float16), zeros=np.zeros((8, 1), np.uint8), bits=4, group_size=32)
    with pytest.raises(ValueError, match="above 15"):
        awqkit.pack_awq(bad)


def test_unpack_checks_shapes_and_dtypes():
    qw = np.zeros((64, 2), np.int32)
    qz = np.zeros((2, 2), np.int32)
    sc = np.ones((2, 16), np.float16)
    awqkit.unpack_awq(qw, qz, sc, 32)
    with pytest.raises(ValueError, match="group_size"):
        awqkit.unpack_awq(qw, qz, sc, 64)
    with pytest.raises(TypeError, match="int32"):
        awqkit.unpack_awq(qw.astype(np.int64), qz, sc, 32)
    with pytest.raises(TypeError, match="float16"):
        awqkit.unpack_awq(qw, qz, sc.astype(np.float32), 32)
    with pytest.raises(ValueError, match="inconsistent"):
        awqkit.unpack_awq(qw, qz, np.ones((2, 24), np.float16), 32)
