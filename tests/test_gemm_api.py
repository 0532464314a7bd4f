"""PackedLinear: round trip to AutoAWQ, pickling, shapes, dtypes and error messages."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import awqkit
from awqkit import _core
from gemm_helpers import make_layer, make_x

try:  # the benchmark probes' module: built by make dev / make install (AWQKIT_BENCH_PROBES), not by a plain wheel
    from awqkit import _bench_probes
except ImportError:
    _bench_probes = None
needs_probes = pytest.mark.skipif(_bench_probes is None, reason="awqkit._bench_probes not built (-DAWQKIT_BENCH_PROBES=ON)")


@pytest.mark.parametrize("n,k,gs", [(8, 32, 32), (24, 96, 32), (40, 320, 64), (72, 256, 128), (16, 128, -1)])
def test_to_awq_round_trip_exact(n, k, gs):
    lin, _, awq, _ = make_layer(n, k, gs if gs != -1 else k, bias=False)
    if gs == -1:
        lin = awqkit.PackedLinear.from_awq(awq["qweight"], awq["qzeros"], awq["scales"], -1)
    back = lin.to_awq()
    for name in ("qweight", "qzeros", "scales"):
        assert back[name].dtype == awq[name].dtype and back[name].shape == awq[name].shape
        np.testing.assert_array_equal(back[name].view(np.uint8), awq[name].view(np.uint8))


def test_round_trip_arbitrary_bits():
    # Every nibble pattern and every fp16 bit pattern (NaN, Inf, negative) survives.
    rng = np.random.default_rng(0)
    k, n, gs = 64, 40, 32
    qweight = rng.integers(-(2**31), 2**31, size=(k, n // 8), dtype=np.int64).astype(np.int32)
    qzeros = rng.integers(-(2**31), 2**31, size=(k // gs, n // 8), dtype=np.int64).astype(np.int32)
    scales = rng.integers(0, 2**16, size=(k // gs, n), dtype=np.uint16).view(np.float16)
    back = awqkit.PackedLinear.from_awq(qweight, qzeros, scales, gs).to_awq()
    np.testing.assert_array_equal(back["qweight"], qweight)
    np.testing.assert_array_equal(back["qzeros"], qzeros)
    np.testing.assert_array_equal(back["scales"].view(np.uint16), scales.view(np.uint16))


def test_properties_and_pickle():
    lin, _, _, b = make_layer(40, 256, 64, bias=True)
    assert (lin.in_features, lin.out_features, lin.group_size, lin.shape) == (256, 40, 64, (40, 256))
    # 3 blocks of 16 channels x 4 groups x (64 header + 64 * 8 code bytes), 64 bytes of
    # tail padding, plus the bias.
    assert lin.packed.nbytes == 3 * 4 * (64 + 512) + 64
    assert lin.nbytes == lin.packed.nbytes + 40 * 4
    np.testing.assert_array_equal(lin.bias, b)
    x = make_x(3, 256)
    clone = pickle.loads(pickle.dumps(lin))
    np.testing.assert_array_equal(clone(x), lin(x))
    rebuilt = awqkit.PackedLinear(lin.packed, lin.out_features, lin.in_features, lin.group_size, lin.bias)
    np.testing.assert_array_equal(rebuilt(x), lin(x))
    assert "in_features=256" in repr(lin)


def test_leading_dims_fp16_and_out():
    lin, _, _, _ = make_layer(24, 64, 32, bias=True)
    x = make_x(6, 64).reshape(2, 3, 64)
    y = lin(x)
    assert y.shape == (2, 3, 24)
    np.testing.assert_array_equal(y.reshape(6, 24), lin(x.reshape(6, 64)))
    np.testing.assert_array_equal(lin(x[0, 0]), y[0, 0])  # 1-D x -> 1-D y
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(lin(x16), lin(x16.astype(np.float32)))
    out = np.empty((6, 24), np.float32)
    assert lin(x.reshape(6, 64), out=out) is out
    np.testing.assert_array_equal(out, y.reshape(6, 24))


def test_nan_propagates_to_its_row_only():
    lin, _, _, _ = make_layer(32, 64, 32, bias=False)
    x = make_x(3, 64)
    x[1, 5] = np.nan
    for isa in awqkit.available_isas():
        with awqkit.use_isa(isa):
            for kernel in ("gemv", "gemm", "digits"):
                y = lin(x, kernel=kernel)
                assert np.all(np.isnan(y[1])) and np.all(np.isfinite(y[[0, 2]]))


def test_bad_input_errors():
    lin, _, awq, _ = make_layer(24, 64, 32, bias=False)
    x = make_x(4, 64)
    with pytest.raises(TypeError, match="float32 or float16"):
        lin(x.astype(np.float64))
    with pytest.raises(ValueError, match="in_features = 64"):
        lin(make_x(4, 32))
    with pytest.raises(ValueError, match="C-contiguous"):
        lin(np.asfortranarray(x))
    with pytest.raises(ValueError, match="C-contiguous"):
        lin(make_x(4, 128)[:, ::2])
    with pytest.raises(TypeError, match="numpy array"):
        lin(x.tolist())
    with pytest.raises(ValueError, match="no rows|empty"):
        lin(np.empty((0, 64), np.float32))
    with pytest.raises(ValueError, match="kernel"):
        lin(x, kernel="fast")
    with pytest.raises(ValueError, match="activation"):
        lin(x, activation="int4")
    with pytest.raises(ValueError, match=r"out must have shape"):
        lin(x, out=np.empty((4, 8), np.float32))
    qw, qz, sc = awq["qweight"], awq["qzeros"], awq["scales"]
    with pytest.raises(TypeError, match="qweight must be int32"):
        awqkit.PackedLinear.from_awq(qw.astype(np.int64), qz, sc, 32)
    with pytest.raises(TypeError, match="scales must be float16"):
        awqkit.PackedLinear.from_awq(qw, qz, sc.astype(np.float32), 32)
    with pytest.raises(ValueError, match="does not divide"):
        awqkit.PackedLinear.from_awq(qw, qz, sc, 48)
    with pytest.raises(ValueError, match="multiple of 8"):
        awqkit.PackedLinear.from_awq(qw, qz[:1].repeat(16, 0), sc[:1].repeat(16, 0), 4)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        awqkit.PackedLinear.from_awq(qw, qz[:1], sc, 32)
    with pytest.raises(ValueError, match="inconsistent shapes"):
        awqkit.PackedLinear.from_awq(qw, qz, np.ascontiguousarray(sc[:, :16]), 32)
    with pytest.raises(ValueError, match="bias must have shape"):
        awqkit.PackedLinear.from_awq(qw, qz, sc, 32, bias=np.zeros(23, np.float32))
    with pytest.raises(TypeError, match="PackedLinear"):
        awqkit.int4_matmul(x, "not a layer")


def test_out_sharing_memory_with_x_is_refused():
    """Threads write y while others still read x: an aliased out would give silently wrong results."""
    lin, w, _, b = make_layer(64, 64, 32, bias=True)
    x = make_x(4, 64)
    with pytest.raises(ValueError, match="share memory"):
        lin(x, out=x)
    buf = make_x(5, 64)
    with pytest.raises(ValueError, match="share memory"):
        lin(buf[:4], out=buf[1:])  # partial overlap
    out = np.empty((4, 64), np.float32)  # disjoint memory is fine
    np.testing.assert_allclose(lin(buf[:4], out=out), buf[:4] @ w.T + b, rtol=1e-4, atol=1e-4)


def test_unpickled_float32_input_gives_the_same_result():
    # An unpickled float32 array carries an equal but distinct dtype object.
    lin, _, _, _ = make_layer(24, 64, 32, bias=True)
    x = make_x(2, 64)
    x2 = pickle.loads(pickle.dumps(x))
    np.testing.assert_array_equal(lin(x2), lin(x))


def test_call_slot_fast_and_checked_paths_agree():
    # lin(x) with one plain float32 [M, K] array runs in the native call slot; every other
    # form of x goes through the checked path, which gives the same bits or the same errors.
    lin, _, _, _ = make_layer(40, 128, 64, bias=True)
    for m in (1, 3, 16, 33):
        x = make_x(m, 128, seed=m)
        fast = lin(x)
        assert fast.dtype == np.float32 and fast.shape == (m, 40) and fast.flags.c_contiguous
        np.testing.assert_array_equal(fast, lin(x, kernel="auto"))
        np.testing.assert_array_equal(fast, awqkit.int4_matmul(x, lin))
        np.testing.assert_array_equal(lin(x[0]), fast[0])  # 1-D: checked path
    x = make_x(4, 128)
    np.testing.assert_array_equal(lin(x.view(type("Sub", (np.ndarray,), {}))), lin(x))  # ndarray subclass
    unaligned = np.frombuffer(b"\0" + x.tobytes(), dtype=np.float32, offset=1).reshape(4, 128)
    assert not unaligned.flags.aligned
    np.testing.assert_array_equal(lin(unaligned), lin(x))
    with pytest.raises(ValueError, match="C-contiguous"):
        lin(make_x(4, 256)[:, ::2])
    with pytest.raises(ValueError, match="in_features"):
        lin(make_x(2, 64))
    with pytest.raises(ValueError, match="no rows"):
        lin(np.zeros((0, 128), np.float32))
    with pytest.raises(TypeError, match="float32 or float16"):
        lin(x.astype(">f4"))
    with pytest.raises(TypeError):
        lin(x, x, x, x, x)
    # The call slot takes a plain array itself: a subclass whose checked path fails still works.
    class NoSlowPath(awqkit.PackedLinear):
        __slots__ = ()

        def _call_slow(self, *args, **kwargs):
            raise AssertionError("the call slot sent a plain float32 array to the checked path")

    with pytest.raises(TypeError, match="__init__"):  # __init__ never ran: no native layer, the checked path refuses
        awqkit.PackedLinear.__new__(awqkit.PackedLinear)(x)
    only_fast = NoSlowPath(lin.packed, 40, 128, 64, lin.bias)
    np.testing.assert_array_equal(only_fast(x), lin(x))
    with pytest.raises(AssertionError):
        only_fast(x[0])
    # The bare native layer takes the same fast call; its checked path is the native one.
    core = _core.Int4Linear(lin.packed, 40, 128, 64, lin.bias)
    np.testing.assert_array_equal(core(x), lin(x))
    np.testing.assert_array_equal(core(x, path=1), lin(x, kernel="gemv"))
    with pytest.raises(TypeError, match="float32"):
        core(x.astype(np.float64))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_every_protocol(protocol):
    lin, _, _, _ = make_layer(24, 64, 32, bias=True)
    x = make_x(2, 64)
    clone = pickle.loads(pickle.dumps(lin, protocol=protocol))
    assert type(clone) is awqkit.PackedLinear and clone.shape == lin.shape
    np.testing.assert_array_equal(clone(x), lin(x))


def test_reinitialised_layer_computes_with_its_new_weights():
    # pybind11 runs a native __init__ once per object: __init__ / __setstate__ called again
    # on a built layer must still move the kernel to the new buffer, shape and bias.
    a, _, _, _ = make_layer(24, 64, 32, bias=True, seed=1)
    b, _, _, _ = make_layer(40, 128, 64, bias=False, seed=2)
    x = make_x(3, 128)
    a.__setstate__(b.__getstate__())
    assert (a.out_features, a.in_features, a.bias) == (40, 128, None)
    np.testing.assert_array_equal(a(x), b(x))
    c, _, _, _ = make_layer(40, 128, 64, bias=True, seed=3)
    a.__init__(c.packed, 40, 128, 64, c.bias)
    np.testing.assert_array_equal(a(x), c(x))
    with pytest.raises(ValueError, match="bias"):
        a.__init__(c.packed, 40, 128, 64, np.zeros(8, np.float32))
    np.testing.assert_array_equal(a(x), c(x))  # a refused re-initialisation changes nothing


def test_contiguous_layers_share_one_buffer_and_keep_results():
    layers = [make_layer(n, k, gs, bias=bool(i % 2), seed=i)[0] for i, (n, k, gs) in
              enumerate([(24, 96, 32), (40, 320, 64), (72, 256, 128), (8, 32, 32)])]
    xs = [make_x(3, lin.in_features, seed=i) for i, lin in enumerate(layers)]
    before = [lin(x) for lin, x in zip(layers, xs)]
    before_gemv = [lin(x, kernel="gemv") for lin, x in zip(layers, xs)]
    awq_before = [lin.to_awq() for lin in layers]
    arena = awqkit.contiguous_layers(layers + layers[:1])  # a repeated layer is placed once
    assert arena.nbytes == sum(lin.packed.nbytes for lin in layers)
    offset = 0
    for lin, x, y, y_gemv, awq in zip(layers, xs, before, before_gemv, awq_before):
        assert lin.packed.ctypes.data == arena.ctypes.data + offset and lin.packed.ctypes.data % 64 == 0
        offset += lin.packed.nbytes
        np.testing.assert_array_equal(lin(x), y)
        np.testing.assert_array_equal(lin(x, kernel="gemv"), y_gemv)
        for name in awq:
            np.testing.assert_array_equal(lin.to_awq()[name], awq[name])
    clone = pickle.loads(pickle.dumps(layers[1]))
    np.testing.assert_array_equal(clone(xs[1]), before[1])
    with pytest.raises(TypeError, match="PackedLinear"):
        awqkit.contiguous_layers([layers[0], np.zeros(3)])


@needs_probes
def test_decode_rotation_probe_checks_its_layers():
    a, _, _, _ = make_layer(24, 64, 32, bias=True)
    b, _, _, _ = make_layer(40, 64, 32, bias=False)
    assert _bench_probes.probe_decode_rotation([a, b], make_x(2, 64), 2) > 0
    with pytest.raises(ValueError, match="in_features"):
        _bench_probes.probe_decode_rotation([a, make_layer(8, 96, 32, bias=False)[0]], make_x(1, 64), 1)
    with pytest.raises(ValueError, match="at least one layer"):
        _bench_probes.probe_decode_rotation([], make_x(1, 64), 1)
    with pytest.raises(ValueError, match="initialised Int4Linear"):
        _bench_probes.probe_decode_rotation([a, awqkit.PackedLinear.__new__(awqkit.PackedLinear)], make_x(1, 64), 1)


@needs_probes
@pytest.mark.skipif(_core.detected_isa() != "avx512_vnni", reason="the read probe needs AVX-512")
def test_read_rotation_probe_checks_its_layers():
    a, _, _, _ = make_layer(24, 64, 32, bias=True)
    b, _, _, _ = make_layer(40, 64, 32, bias=False)
    assert _bench_probes.probe_read_rotation([a, b], 2) > 0
    with pytest.raises(ValueError, match="at least one layer"):
        _bench_probes.probe_read_rotation([a], 0)
    with pytest.raises(ValueError, match="initialised Int4Linear"):
        _bench_probes.probe_read_rotation([a, awqkit.PackedLinear.__new__(awqkit.PackedLinear)], 1)


AMX_SETTINGS = [False] + ([True] if awqkit.isa.amx_int8_supported() else [])


@pytest.mark.parametrize("amx", AMX_SETTINGS, ids=lambda a: "amx" if a else "no-amx")
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_a_row_has_the_same_bits_whatever_the_batch(isa, amx, gs):
    """Prefill and decode agree: lin(x)[i] is lin(x[i:i+1]) bit for bit, on every ISA,
    with and without AMX, across the sizes where kernels used to switch (6, 16 rows)."""
    lin, _, _, _ = make_layer(48, 256, gs, bias=True, seed=gs)
    with awqkit.use_amx(amx):
        for m in (2, 5, 6, 15, 16, 17, 40):
            x = make_x(m, 256, seed=m)
            y = lin(x)
            for i in range(m):
                np.testing.assert_array_equal(y[i], lin(x[i : i + 1])[0], err_msg=f"M={m} row {i}")


def test_gemm_is_a_deprecated_alias_of_int4_matmul():
    lin, _, _, _ = make_layer(24, 64, 32, bias=True)
    x = make_x(3, 64)
    with pytest.warns(DeprecationWarning, match="int4_matmul"):
        y = awqkit.gemm(x, lin)
    np.testing.assert_array_equal(y, awqkit.int4_matmul(x, lin))
