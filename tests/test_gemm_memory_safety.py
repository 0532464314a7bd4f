"""The native objects never read or write memory they do not own: packed weights are read-only
and never an output, objects whose __init__ never ran raise, impossible shapes are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import awqkit
from awqkit import _core
from gemm_helpers import make_layer, make_x

try:  # the benchmark probes' module (AWQKIT_BENCH_PROBES): make dev / make install build it
    from awqkit import _bench_probes
except ImportError:
    _bench_probes = None


def test_packed_weights_are_exposed_read_only():
    lin, _, _, _ = make_layer(40, 128, 64, bias=True)
    assert not lin.packed.flags.writeable
    with pytest.raises(ValueError):
        lin.packed[0] = 1
    clone = awqkit.PackedLinear(lin.packed, 40, 128, 64, lin.bias)
    assert not clone.packed.flags.writeable
    other, _, _, _ = make_layer(24, 64, 32, bias=False, seed=1)
    arena = awqkit.contiguous_layers([lin, other])
    assert not arena.flags.writeable
    assert not lin.packed.flags.writeable and not other.packed.flags.writeable


def test_out_may_not_share_memory_with_the_packed_weights():
    lin, _, _, _ = make_layer(40, 128, 64, bias=True)
    x = make_x(2, 128)
    want = lin(x)
    with pytest.raises(ValueError, match="read-only"):
        lin(x, out=lin.packed[: 2 * 40 * 4].view(np.float32).reshape(2, 40))
    # A writable buffer that the native layer runs on (a caller's own array).
    buf = lin.packed.copy()
    core = _core.Int4Linear(buf, 40, 128, 64, lin.bias)
    for offset in (0, 64, buf.nbytes - 64 - 2 * 40 * 4):
        out = buf[offset : offset + 2 * 40 * 4].view(np.float32).reshape(2, 40)
        with pytest.raises(ValueError, match="packed weights"):
            core(x, out=out)
    np.testing.assert_array_equal(buf, lin.packed)  # nothing was written
    np.testing.assert_array_equal(core(x), want)


def test_shapes_whose_packed_size_overflows_are_refused():
    # Sizes that wrap around int64: 2^26 channels x 2^22 groups of 131064 inputs is exactly
    # 2^64 bytes, which used to come out as a 64-byte layer.
    for n, k, gs in [(2**40, 2**40, 2**40), (2**26, 2**22 * 131064, 131064), (2**63 - 8, 8, 8), (8, 2**62, 2**62)]:
        with pytest.raises(ValueError, match="2\\^63 bytes"):
            _core.int4_packed_nbytes(n, k, gs)
    with pytest.raises(ValueError, match="2\\^63 bytes"):
        awqkit.PackedLinear(np.zeros(64, np.uint8), 2**26, 2**22 * 131064, 131064)
    with pytest.raises(ValueError, match="2\\^63 bytes"):
        _core.Int4Linear(np.zeros(64, np.uint8), 2**26, 2**22 * 131064, 131064, None)
    assert _core.int4_packed_nbytes(40, 128, 64) == make_layer(40, 128, 64, bias=False)[0].packed.nbytes


# Runs in a subprocess: before the fix some of these calls read freed or uninitialised
# memory and could kill the interpreter, which must fail this test, not end pytest.
_UNINITIALISED = textwrap.dedent(
    """
    import numpy as np
    import awqkit
    from awqkit import _core
    try:
        from awqkit import _bench_probes as probes
    except ImportError:
        probes = None

    failures = []

    def expect_error(label, call, reason="__init__"):
        try:
            result = call()
        except (TypeError, ValueError) as e:
            if reason not in str(e):
                failures.append(f"{label}: {type(e).__name__} without the reason: {e}")
            return
        except Exception as e:
            failures.append(f"{label}: {type(e).__name__}: {e}")
            return
        failures.append(f"{label}: returned {result!r:.60}")

    # A freed layer first, so that uninitialised memory looks like a layer.
    w = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)
    awq = awqkit.pack_awq(awqkit.quantize(w, bits=4, group_size=128))
    lin = awqkit.PackedLinear.from_awq(awq["qweight"], awq["qzeros"], awq["scales"], 128)
    packed = lin.packed
    del lin
    x = np.ones((1, 1024), np.float32)
    for cls in (_core.Int4Linear, awqkit.PackedLinear):
        layer = cls.__new__(cls)
        name = cls.__name__
        expect_error(f"{name}._forward", lambda: layer._forward(x))
        expect_error(f"{name}(x)", lambda: layer(x))
        expect_error(f"{name}(x, out=None)", lambda: layer(x, out=None))
        expect_error(f"{name}._rebind", lambda: layer._rebind(packed, 1024, 1024, 128, None))
        if probes is not None:
            expect_error(f"probe_decode_rotation({name})", lambda: probes.probe_decode_rotation([layer], x, 1), "initialised")

    real = _core.ActivationStats(8, True)
    real.update(np.ones((4, 8), np.float32))
    del real
    stats = _core.ActivationStats.__new__(_core.ActivationStats)
    other = _core.ActivationStats(8, True)
    v = np.zeros(8)
    w8 = np.ones((8, 8), np.float32)
    for label, call in [
        ("in_features", lambda: stats.in_features),
        ("has_gram", lambda: stats.has_gram),
        ("n_tokens", lambda: stats.n_tokens),
        ("update", lambda: stats.update(np.ones((4, 8), np.float32))),
        ("merge", lambda: stats.merge(other)),
        ("merge into", lambda: other.merge(stats)),
        ("set_state", lambda: stats.set_state(1, v, v, v, None)),
        ("state", lambda: stats.state()),
        ("sum_abs", lambda: stats.sum_abs()),
        ("sum_sq", lambda: stats.sum_sq()),
        ("max_abs", lambda: stats.max_abs()),
        ("gram", lambda: stats.gram()),
        ("search_scale", lambda: _core.search_scale([w8], stats, -1, np.ones(8), 4, 8, True, True, 20, True, False, True)),
        ("scale_losses", lambda: _core.scale_losses([w8], stats, -1, np.ones((1, 8), np.float32), 4, 8, True, True)),
        ("group_gram_blocks", lambda: _core.group_gram_blocks(stats, 1, 8)),
    ]:
        expect_error(f"ActivationStats.{label}", call)
    print("\\n".join(failures) if failures else "all refused")
    raise SystemExit(1 if failures else 0)
    """
)


def test_objects_whose_init_never_ran_raise_instead_of_crashing():
    run = subprocess.run([sys.executable, "-c", _UNINITIALISED], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode} (negative: killed by a signal)\n{run.stdout}\n{run.stderr}"


@pytest.mark.skipif(_bench_probes is None, reason="awqkit._bench_probes not built (-DAWQKIT_BENCH_PROBES=ON)")
@pytest.mark.skipif(awqkit.detected_isa() != "avx512_vnni", reason="the probe needs AVX-512")
def test_stream_read_checksum_is_the_exact_sum_of_the_lanes():
    # Two int32 lanes at INT32_MAX: their sum does not fit int32 (the probe once added the
    # lanes as signed int: undefined behaviour, -2 here).
    buf = np.zeros(128, np.uint8)
    line = buf[(-buf.ctypes.data) % 64 :][:64]
    line.view(np.int32)[:2] = np.iinfo(np.int32).max
    assert _bench_probes.probe_stream_read(line) == 2 * (2**31 - 1)
