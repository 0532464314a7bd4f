"""Fused INT4 GEMM/GEMV: every ISA and kernel path against numpy and the scalar reference."""

from __future__ import annotations

import numpy as np
import pytest

import awqkit
from gemm_helpers import error_bound, exact, make_layer, make_x
from isa_helpers import levels_without, native_levels

ISAS = awqkit.available_isas()
KERNELS = ("auto", "gemv", "gemm", "digits")
MS = (1, 2, 3, 7, 8, 16, 64, 129)
# (N, K, group_size): ragged N (multiples of 8, not of 16 or 32) and K (multiples of the
# group size that are not multiples of the GEMM's 256-input slice).
SHAPES = [
    (8, 96, 32),
    (24, 320, 64),
    (40, 384, 128),
    (72, 96, 32),
    (56, 640, 64),
    (48, 256, 128),
]


@pytest.fixture(scope="module", params=SHAPES, ids=lambda s: f"N{s[0]}-K{s[1]}-gs{s[2]}")
def layer(request):
    n, k, gs = request.param
    return make_layer(n, k, gs, bias=(k % 64 == 0), seed=n + k)  # with and without bias


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_numpy_and_scalar(layer, isa, kernel):
    lin, w, _, b = layer
    for m in MS:
        x = make_x(m, lin.in_features, seed=m)
        with awqkit.use_isa("scalar"):
            y_ref = lin(x)
        with awqkit.use_isa(isa):
            y = lin(x, kernel=kernel)
        assert y.dtype == np.float32 and y.shape == (m, lin.out_features)
        bound = error_bound(x, w, b)
        truth = exact(x, w, b)
        assert np.all(np.abs(y - truth) <= bound), f"M={m}: vs float64 truth"
        y_np = x @ w.T + (b if b is not None else 0)
        assert np.all(np.abs(y - y_np) <= 2 * bound), f"M={m}: vs numpy float32"
        assert np.all(np.abs(y - y_ref) <= 2 * bound), f"M={m}: vs scalar reference"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_one_and_two_threads_identical(isa, kernel):
    lin, _, _, _ = make_layer(200, 512, 64, bias=True, seed=3)
    for m in (1, 5, 40, 150):
        x = make_x(m, 512, seed=m)
        with awqkit.use_isa(isa):
            with awqkit.use_threads(1):
                y1 = lin(x, kernel=kernel)
            with awqkit.use_threads(2):
                y2 = lin(x, kernel=kernel)
        np.testing.assert_array_equal(y1, y2)


def test_gemm_function_and_call_agree():
    lin, _, _, _ = make_layer(24, 128, 32, bias=True)
    x = make_x(5, 128)
    np.testing.assert_array_equal(awqkit.int4_matmul(x, lin), lin(x))


def test_larger_layer_gemm_path():
    # Several 256-input slices, several output tiles and row blocks, with a ragged tail each.
    lin, w, _, b = make_layer(296, 1152, 128, bias=True, seed=7)
    x = make_x(37, 1152)
    y = lin(x, kernel="gemm")
    assert np.all(np.abs(y - exact(x, w, b)) <= error_bound(x, w, b))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kernel", ("gemv", "digits"))
def test_gemv_rows_do_not_depend_on_batch(isa, kernel):
    # In the decode kernels a row's result is the same whatever other rows share the call.
    lin, _, _, _ = make_layer(40, 256, 64, bias=True)
    x = make_x(7, 256)
    with awqkit.use_isa(isa):
        y = lin(x, kernel=kernel)
        for m in range(7):
            np.testing.assert_array_equal(lin(x[m : m + 1], kernel=kernel), y[m : m + 1])


@pytest.mark.parametrize("isa", ISAS)
def test_int8_activations_match_scalar_exactly_and_bound_error(layer, isa):
    # The int8 path is integer arithmetic plus a fixed float epilogue: every ISA gives the
    # scalar reference's bits. Its extra error is that of int8 activations (absmax/127 per
    # group): a few 1e-3 of the output norm for Gaussian x.
    lin, w, _, b = layer
    for m in (1, 3, 8, 17):
        x = make_x(m, lin.in_features, seed=m)
        with awqkit.use_isa("scalar"):
            y_ref = lin(x, activation="int8")
        with awqkit.use_isa(isa):
            y = lin(x, activation="int8")
            with awqkit.use_threads(1):
                y1 = lin(x, activation="int8")
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(y1, y_ref)
        truth = exact(x, w, b)
        assert np.linalg.norm(y - truth) <= 0.02 * np.linalg.norm(truth)


def test_int8_nan_group_poisons_its_row():
    lin, _, _, _ = make_layer(32, 64, 32, bias=False)
    x = make_x(3, 64)
    x[2, 40] = np.inf
    y = lin(x, activation="int8")
    assert np.all(np.isnan(y[2])) and np.all(np.isfinite(y[:2]))


# The digits product on AMX-INT8 tiles (many rows) where this CPU has them, VNNI anyway.
AMX_MODES = [False] + ([True] if awqkit.isa.amx_int8_supported() else [])
HAS_NATIVE_DIGITS = bool(native_levels("gemv_digits"))
# Beyond SHAPES: tile depths 32 / 8 (group 96, 24, 8), groups larger than the two resident
# code tiles (96, 1024 = per-channel), group sizes with a masked half vector in the split (24, 40).
DIGIT_SHAPES = SHAPES + [(40, 288, 96), (24, 240, 24), (16, 80, 8), (24, 200, 40), (16, 1024, 1024)]


@pytest.mark.skipif(not HAS_NATIVE_DIGITS, reason="no level on this CPU has SIMD digits kernels (AVX-512 VNNI)")
@pytest.mark.parametrize("shape", DIGIT_SHAPES, ids=lambda s: f"N{s[0]}-K{s[1]}-gs{s[2]}")
@pytest.mark.parametrize("amx", AMX_MODES, ids=lambda a: "amx" if a else "no-amx")
def test_digits_kernel_matches_its_scalar_reference_bit_for_bit(shape, amx):
    # x split into three int8 digits per group, integer dot products, a fixed float
    # epilogue: every engine (VNNI rows of 1-4, AMX tiles of 16 rows with a ragged last
    # tile) returns the scalar reference's bits. (On scalar/avx2 the reference runs itself.)
    n, k, gs = shape
    lin, _, _, _ = make_layer(n, k, gs, bias=(n % 16 == 8), seed=n + k)
    for m in (1, 2, 3, 4, 5, 6, 9, 15, 16, 17, 40, 129):
        x = make_x(m, k, seed=m)
        with awqkit.use_isa("scalar"):
            y_ref = lin(x, kernel="digits")
        with awqkit.use_amx(amx):
            np.testing.assert_array_equal(lin(x, kernel="digits"), y_ref, err_msg=f"M={m}")


@pytest.mark.skipif(not HAS_NATIVE_DIGITS, reason="no level on this CPU has SIMD digits kernels (AVX-512 VNNI)")
@pytest.mark.parametrize("amx", AMX_MODES, ids=lambda a: "amx" if a else "no-amx")
def test_digits_kernel_many_blocks_one_thread(amx):
    # One thread walks all 37 blocks: more than one 32-block chunk of the AMX loop.
    lin, _, _, _ = make_layer(592, 256, 64, bias=True, seed=4)
    x = make_x(20, 256, seed=3)
    with awqkit.use_isa("scalar"):
        y_ref = lin(x, kernel="digits")
    with awqkit.use_amx(amx), awqkit.use_threads(1):
        np.testing.assert_array_equal(lin(x, kernel="digits"), y_ref)


@pytest.mark.skipif(not HAS_NATIVE_DIGITS, reason="no level on this CPU has SIMD digits kernels (AVX-512 VNNI)")
def test_digits_kernel_exact_for_a_huge_group():
    # group_size 2^18: x = 6291583 * 2^-23 has the digits (96, 0, 127) at step 2^-23, so the
    # lowest digit's group sum 127 * (2^18 - 1) is odd and above 2^24, not a float; the
    # VNNI zero-point term must use it as an integer to match the reference.
    k = 1 << 18
    lin, _, _, _ = make_layer(16, k, k, bias=False, seed=1)
    x = np.full((1, k), np.float32(6291583 * 2.0**-23), np.float32)
    x[0, 7] = 0.0
    with awqkit.use_isa("scalar"):
        y_ref = lin(x, kernel="digits")
    np.testing.assert_array_equal(lin(x, kernel="digits"), y_ref)


@pytest.mark.skipif(not awqkit.isa.amx_int8_supported(), reason="this CPU/OS has no AMX-INT8 (VNNI is tested everywhere)")
def test_amx_runs_the_automatic_prefill_path():
    lin, w, _, b = make_layer(296, 1152, 128, bias=True, seed=7)
    x = make_x(37, 1152)
    with awqkit.use_isa("scalar"):
        y_ref = lin(x, kernel="digits")
    with awqkit.use_amx(True):  # on even where AWQKIT_AMX=0 is set
        assert awqkit.isa.amx_int8_active()
        np.testing.assert_array_equal(lin(x), y_ref)  # auto = digits on AMX for M >= 16
    with awqkit.use_amx(False):
        assert not awqkit.isa.amx_int8_active()
        y_float = lin(x)  # auto = float GEMM without AMX
    assert np.all(np.abs(y_float - exact(x, w, b)) <= error_bound(x, w, b))
    for name in levels_without("gemm_digits_amx"):  # AMX belongs to the levels whose table has it
        with awqkit.use_isa(name):
            assert not awqkit.isa.amx_int8_active()


def _digits_bound(x, w, b, gs):
    """Float32 dot-product bound plus the digits' own rounding: each input is kept to within
    d / 2 of its group, d the smallest power of two >= absmax / 8355711 (at least 2^-126)."""
    k = x.shape[1]
    amax = np.abs(x).reshape(x.shape[0], k // gs, gs).max(axis=2)
    t = np.maximum(amax / np.float32(8355711.0), np.float32(2.0**-126)).astype(np.float64)
    d = 2.0 ** np.ceil(np.log2(t))
    per_input = np.repeat(d / 2, gs, axis=1)
    return error_bound(x, w, b) + per_input @ np.abs(w.astype(np.float64)).T


def test_digits_kernel_on_adversarial_inputs():
    # Outliers (1e4 x the rest), a zero group, tiny and huge magnitudes, subnormals, exact
    # digit boundaries: within the float32 bound plus absmax * 2^-24 per input.
    gs = 64
    lin, w, _, b = make_layer(48, 4 * gs, gs, bias=True, seed=11)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4 * gs)).astype(np.float32)
    x[0, 3] = 1e4  # an outlier dominates its group
    x[1, :gs] = 0.0  # an all-zero group
    x[2] *= np.float32(1e-30)
    x[3] *= np.float32(1e30)
    x[4, gs : 2 * gs] = np.float32(1e-42)  # subnormals only
    x[5, :gs] = np.arange(gs, dtype=np.float32) - 32  # small integers: exact digits
    truth = exact(x, w, b)
    bound = _digits_bound(x, w, b, gs)
    for isa in ISAS:
        with awqkit.use_isa(isa):
            y = lin(x, kernel="digits")
        assert np.all(np.isfinite(y))
        assert np.all(np.abs(y - truth) <= bound), isa

    with awqkit.use_isa("scalar"):
        np.testing.assert_array_equal(lin(x, kernel="digits"), y)


def test_digits_kernel_is_more_exact_than_float32_accumulation():
    # Integer sums are exact: on Gaussian x the digits kernel's error is below the float GEMV's.
    lin, w, _, b = make_layer(256, 1024, 128, bias=False, seed=2)
    x = make_x(4, 1024, seed=9)
    truth = exact(x, w, b)
    err_digits = np.linalg.norm(lin(x, kernel="digits") - truth)
    err_float = np.linalg.norm(lin(x, kernel="gemv") - truth)
    assert err_digits < err_float


@pytest.mark.parametrize("shape", DIGIT_SHAPES, ids=lambda s: f"N{s[0]}-K{s[1]}-gs{s[2]}")
def test_int16_activations_match_scalar_bit_for_bit_and_bound_error(shape):
    # Two digits per input (16-bit block floating point): integer products and a fixed float
    # epilogue, so every ISA, row tile (VNNI rows of 1-6), thread count and batch gives the scalar
    # reference's bits. Each input is kept to within half a step, the smallest power of two
    # >= absmax(group) / 32639, so within absmax(group) * 2^-15 (1 + 2^-15):
    # |y - exact| <= sum_g absmax_g 2^-15 |w_g|_1 + float rounding.
    n, k, gs = shape
    lin, w, _, b = make_layer(n, k, gs, bias=(n % 16 == 8), seed=n + k)
    for m in (1, 2, 5, 6, 7, 13, 40):
        x = make_x(m, k, seed=m)
        with awqkit.use_isa("scalar"):
            y_ref = lin(x, activation="int16")
        for isa in ISAS:
            with awqkit.use_isa(isa):
                np.testing.assert_array_equal(lin(x, activation="int16"), y_ref, err_msg=f"{isa} M={m}")
                with awqkit.use_threads(1):
                    np.testing.assert_array_equal(lin(x, activation="int16"), y_ref, err_msg=f"{isa} M={m} 1 thread")
        np.testing.assert_array_equal(lin(x[-1:], activation="int16"), y_ref[-1:])  # alone as in a batch
        truth = exact(x, w, b)
        g = k // gs
        amax = np.abs(x.reshape(m, g, gs)).max(axis=2).astype(np.float64)  # [M, G]
        wsum = np.abs(w.reshape(n, g, gs)).sum(axis=2).astype(np.float64)  # [N, G]
        bound = (amax @ wsum.T) * 2.0**-15 * 1.001 + 1e-5 * np.abs(truth).max()
        assert np.all(np.abs(y_ref - truth) <= bound)
        # 16 bits are far closer than int8 activations and within ~2^-15 of the exact product.
        err16 = np.linalg.norm(y_ref - truth)
        assert err16 < 0.05 * np.linalg.norm(lin(x, activation="int8") - truth)


def test_digits_nonfinite_group_poisons_its_row():
    lin, _, _, _ = make_layer(32, 64, 32, bias=False)
    for m in (3, 20):  # VNNI rows, AMX tiles
        for bad in (np.nan, np.inf, -np.inf):
            x = make_x(m, 64)
            x[2, 40] = bad
            for isa in ISAS:
                with awqkit.use_isa(isa):
                    y = lin(x, kernel="digits")
                others = np.delete(y, 2, axis=0)
                assert np.all(np.isnan(y[2])) and np.all(np.isfinite(others)), (m, bad, isa)
