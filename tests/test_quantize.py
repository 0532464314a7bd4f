"""The native quantizer against the numpy reference: codes, scales and zeros bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import awqkit
from awqkit.reference import dequantize_ref, pseudo_quantize_ref, quantize_ref


def divisors(k):
    return [d for d in range(1, k + 1) if k % d == 0]


def assert_matches_reference(w, bits, group_size, zero_point, scale_dtype="float16"):
    qt = awqkit.quantize(w, bits=bits, group_size=group_size, zero_point=zero_point, scale_dtype=scale_dtype)
    codes, scales, zeros = quantize_ref(w, bits, group_size, zero_point, scale_dtype)
    np.testing.assert_array_equal(qt.codes, codes)
    np.testing.assert_array_equal(qt.zeros, zeros)
    np.testing.assert_array_equal(qt.scales.astype(np.float32), scales)
    assert qt.scales.dtype == np.dtype(scale_dtype)
    assert qt.codes.max(initial=0) <= 2**bits - 1
    return qt


@pytest.mark.parametrize("zero_point", [True, False])
@pytest.mark.parametrize("bits", range(2, 9))
def test_every_group_size_and_bits(isa, rng, bits, zero_point):
    n, k = 24, 96
    w = rng.standard_normal((n, k)).astype(np.float32)
    for gs in divisors(k) + [-1]:
        qt = assert_matches_reference(w, bits, gs, zero_point)
        assert qt.group_size == (k if gs == -1 else gs)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 33), (17, 129), (8, 4096), (129, 640)])
def test_ragged_shapes_per_channel_and_grouped(isa, rng, shape):
    w = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    for gs in (-1, 1) + tuple(g for g in (32, 64, 128) if shape[1] % g == 0):
        assert_matches_reference(w, 4, gs, True)
        assert_matches_reference(w, 3, gs, False)


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_adversarial_values(isa, rng, scale_dtype):
    n, k = 16, 256
    cases = {
        "zeros": np.zeros((n, k), np.float32),
        "constant": np.full((n, k), 0.731, np.float32),
        "negative constant": np.full((n, k), -3.5, np.float32),
        "tiny": (rng.standard_normal((n, k)) * 1e-7).astype(np.float32),
        "subnormal": (rng.standard_normal((n, k)) * 1e-40).astype(np.float32),
        "huge": (rng.standard_normal((n, k)) * 1e4).astype(np.float32),
        "all positive": np.abs(rng.standard_normal((n, k))).astype(np.float32) + 5,
        "ties": (rng.integers(-16, 16, (n, k)) * 0.5).astype(np.float32),
        "one outlier": np.where(np.arange(k) == 7, 100.0, rng.standard_normal((n, k))).astype(np.float32),
        "signed zeros": np.where(rng.random((n, k)) < 0.5, -0.0, 0.0).astype(np.float32),
    }
    if scale_dtype == "float32":
        cases["very huge"] = (rng.standard_normal((n, k)) * 1e30).astype(np.float32)
    for name, w in cases.items():
        for zp in (True, False):
            for bits in (2, 4, 8):
                for gs in (-1, 32, 128):
                    try:
                        assert_matches_reference(w, bits, gs, zp, scale_dtype)
                    except AssertionError as e:
                        raise AssertionError(f"case {name!r} bits={bits} gs={gs} zp={zp}") from e


def test_half_way_scales_round_like_numpy(isa):
    """Scales that fall exactly between two float16 values and subnormal float16 scales."""
    # range/15 lands on many float16 rounding boundaries as the range sweeps.
    n, k = 2048, 32
    ranges = np.float32(2.0) ** np.linspace(-24, 15, n).astype(np.float32)
    w = np.zeros((n, k), np.float32)
    w[:, 1] = ranges
    assert_matches_reference(w, 4, 32, True)
    assert_matches_reference(w, 4, 32, False)


def test_float16_input_matches_float32_of_same_values(isa, rng):
    w16 = (rng.standard_normal((40, 128)) * 0.1).astype(np.float16)
    qt16 = assert_matches_reference(w16, 4, 64, True)
    qt32 = awqkit.quantize(w16.astype(np.float32), group_size=64)
    np.testing.assert_array_equal(qt16.codes, qt32.codes)


def test_dequantize_and_pseudo_quantize(isa, rng):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    for zp in (True, False):
        qt = awqkit.quantize(w, bits=4, group_size=64, zero_point=zp)
        deq = awqkit.dequantize(qt)
        ref = dequantize_ref(qt.codes, qt.scales, qt.zeros, 64)
        np.testing.assert_array_equal(deq, ref)
        np.testing.assert_array_equal(awqkit.pseudo_quantize(w, group_size=64, zero_point=zp), deq)
        np.testing.assert_array_equal(pseudo_quantize_ref(w, 4, 64, zp), deq)


def test_strided_rows_are_read_in_place(rng):
    wide = rng.standard_normal((32, 512)).astype(np.float32)
    view = wide[:, 128:384]
    assert not view.flags.c_contiguous
    qt = awqkit.quantize(view, group_size=128)
    np.testing.assert_array_equal(qt.codes, awqkit.quantize(np.ascontiguousarray(view), group_size=128).codes)


def test_thread_count_does_not_change_results(rng):
    w = rng.standard_normal((257, 512)).astype(np.float32)
    with awqkit.use_threads(1):
        one = awqkit.quantize(w, group_size=128)
    with awqkit.use_threads(2):
        two = awqkit.quantize(w, group_size=128)
    for a, b in zip((one.codes, one.scales, one.zeros), (two.codes, two.scales, two.zeros)):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=150, deadline=None)
@given(
    w=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 9), st.sampled_from([8, 24, 64, 96])),
        elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False),
    ),
    bits=st.integers(2, 8),
    gs=st.sampled_from([-1, 8]),
    zero_point=st.booleans(),
)
def test_property_any_isa_equals_reference(w, bits, gs, zero_point):
    for isa in awqkit.available_isas():
        with awqkit.use_isa(isa):
            assert_matches_reference(w, bits, gs, zero_point)


def test_omp_num_threads_env_gives_identical_results(tmp_path):
    """OMP_NUM_THREADS=1 and =2 in fresh processes produce byte-identical outputs."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, awqkit, hashlib;"
        "w = np.random.default_rng(7).standard_normal((333, 768)).astype(np.float32);"
        "qt = awqkit.quantize(w, bits=4, group_size=128); p = awqkit.pack_awq(awqkit.quantize(w[:328], group_size=64));"
        "h = hashlib.sha256(); [h.update(a.tobytes()) for a in (qt.codes, qt.scales, qt.zeros, *p.values(), awqkit.pseudo_quantize(w, bits=3, group_size=-1))];"
        "print(awqkit.num_threads(), h.hexdigest())"
    )
    digests = {}
    for n in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": n}, capture_output=True, text=True, check=True)
        threads, digest = out.stdout.split()
        assert threads == n
        digests[n] = digest
    assert digests["1"] == digests["2"]
