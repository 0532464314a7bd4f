"""Bad input gets a clear Python exception, never a crash or a silently wrong answer."""

from __future__ import annotations

import os

import numpy as np
import pytest

import awqkit
from awqkit import _core


@pytest.fixture
def w(rng):
    return rng.standard_normal((16, 64)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.complex64, bool])
def test_wrong_dtype_is_type_error(w, dtype):
    with pytest.raises(TypeError, match="float32 or float16"):
        awqkit.quantize(w.astype(dtype))


@pytest.mark.parametrize("shape", [(64,), (2, 4, 8), ()])
def test_wrong_ndim(shape):
    with pytest.raises(ValueError, match="2-D"):
        awqkit.quantize(np.zeros(shape, np.float32))


def test_not_an_array():
    with pytest.raises(TypeError, match="numpy array"):
        awqkit.quantize("weights")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(isa, w, bad):
    w[5, 17] = bad
    with pytest.raises(ValueError, match="NaN or Inf.*row 5"):
        awqkit.quantize(w, group_size=32)
    with pytest.raises(ValueError, match="NaN or Inf"):
        awqkit.pseudo_quantize(w, group_size=32)


def test_group_size_must_divide_k(w):
    with pytest.raises(ValueError, match="not divisible by group_size"):
        awqkit.quantize(w, group_size=48)
    with pytest.raises(ValueError, match="positive or -1"):
        awqkit.quantize(w, group_size=0)
    with pytest.raises(ValueError, match="positive or -1"):
        awqkit.quantize(w, group_size=-2)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, -4])
def test_bits_out_of_range(w, bits):
    with pytest.raises(ValueError, match="between 2 and 8"):
        awqkit.quantize(w, bits=bits)


def test_bits_wrong_type(w):
    with pytest.raises(TypeError):
        awqkit.quantize(w, bits=4.0)


def test_scale_dtype(w):
    with pytest.raises(ValueError, match="scale_dtype"):
        awqkit.quantize(w, scale_dtype="bfloat16")


@pytest.mark.parametrize("shape", [(0, 64), (16, 0), (0, 0)])
def test_empty_arrays(shape):
    with pytest.raises(ValueError, match="empty"):
        awqkit.quantize(np.zeros(shape, np.float32), group_size=-1)


def test_fp16_scale_overflow_says_what_to_do(rng):
    w = (rng.standard_normal((8, 32)) * 1e7).astype(np.float32)
    with pytest.raises(ValueError, match="scale_dtype='float32'"):
        awqkit.quantize(w, group_size=32)
    awqkit.quantize(w, group_size=32, scale_dtype="float32")


def test_non_contiguous_inner_stride_is_refused(w):
    with pytest.raises(ValueError, match="contiguous"):
        awqkit.quantize(w[:, ::2], group_size=32)
    # A transposed (Fortran-order) array is refused too, never read in the wrong order.
    with pytest.raises(ValueError, match="contiguous"):
        awqkit.quantize(np.asfortranarray(w), group_size=32)


def test_native_layer_checks_on_its_own(w):
    """The binding re-checks what the Python wrapper checks (thin wrapper, safe core)."""
    with pytest.raises(TypeError, match="float32 or float16"):
        _core.quantize(w.astype(np.float64), 4, 32, True, True)
    with pytest.raises(TypeError, match="2-D"):
        _core.quantize(w[0], 4, 32, True, True)
    with pytest.raises(ValueError, match="between 2 and 8"):
        _core.quantize(w, 1, 32, True, True)
    with pytest.raises(ValueError, match="larger than 2\\^bits"):
        _core.dequantize(np.full((2, 32), 20, np.uint8), np.ones((2, 1), np.float32), np.zeros((2, 1), np.uint8), 32, 4)
    with pytest.raises(ValueError, match="shape"):
        _core.dequantize(np.zeros((2, 32), np.uint8), np.ones((2, 2), np.float32), np.zeros((2, 1), np.uint8), 32, 4)
    with pytest.raises(ValueError, match="contiguous"):
        _core.pack_awq_transposed(np.zeros((16, 8), np.uint8)[:, ::2])


def test_quantized_tensor_validates_shapes():
    with pytest.raises(ValueError):
        awqkit.QuantizedTensor(codes=np.zeros((8, 64), np.uint8), scales=np.ones((8, 3), np.float16), zeros=np.zeros((8, 3), np.uint8), bits=4, group_size=32)


def test_isa_selection():
    assert awqkit.active_isa() in awqkit.available_isas()
    assert awqkit.available_isas()[0] == "scalar"
    with pytest.raises(ValueError, match="unknown ISA"):
        awqkit.set_isa("neon")
    with awqkit.use_isa("scalar"):
        assert awqkit.active_isa() == "scalar"
    # The process starts at its best allowed level: the CPU's, or AWQKIT_ISA's cap below it
    # (CI runs the suite a second time capped at avx2).
    assert awqkit.active_isa() == awqkit.available_isas()[-1]


_ISA_REPORT = (
    "import awqkit\n"
    "print(awqkit.active_isa(), ','.join(awqkit.available_isas()))\n"
    "levels = [lvl['name'] for lvl in awqkit.isa_levels()]\n"
    "above = levels[levels.index(awqkit.available_isas()[-1]) + 1:]\n"
    "for name in above:\n"
    "    try:\n"
    "        awqkit.set_isa(name)\n"
    "        print('climbed', name)\n"
    "    except ValueError as e:\n"
    "        print('refused', name, e)\n"
)


@pytest.mark.parametrize("cap", [lvl["name"] for lvl in awqkit.isa_levels()[:-1]])
def test_isa_env_variable_caps_the_level(cap):
    """AWQKIT_ISA is a ceiling for the whole process: the tests' ``isa`` fixture iterates
    available_isas(), so a capped run must neither list nor reach a level above it."""
    import os
    import subprocess
    import sys

    levels = [lvl["name"] for lvl in awqkit.isa_levels()]
    on_cpu = [lvl["name"] for lvl in awqkit.isa_levels() if lvl["on_cpu"]]
    if cap not in on_cpu:
        pytest.skip(f"this CPU has no {cap}")
    out = subprocess.run(
        [sys.executable, "-c", _ISA_REPORT],
        env={**os.environ, "AWQKIT_ISA": cap},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines[0] == f"{cap} {','.join(levels[: levels.index(cap) + 1])}"
    above = [lvl for lvl in levels[levels.index(cap) + 1 :] if lvl in on_cpu]
    assert [ln.split()[:2] for ln in lines[1:]] == [["refused", lvl] for lvl in above]
    assert all("AWQKIT_ISA" in ln for ln in lines[1:])


def test_isa_levels_are_the_kernel_table():
    levels = awqkit.isa_levels()
    assert levels[0]["name"] == "scalar" and levels[0]["on_cpu"]
    assert awqkit.available_isas() == [lvl["name"] for lvl in levels if lvl["on_cpu"]][: len(awqkit.available_isas())]
    assert awqkit.detected_isa() == [lvl["name"] for lvl in levels if lvl["on_cpu"]][-1]
    # The scalar level provides every kernel family that has a reference; the others fall back.
    assert {"quantize_group", "gram_tile", "gemv", "gemv_digits"} <= set(levels[0]["kernels"])
    for lvl in levels:
        assert lvl["requires"] and isinstance(lvl["kernels"], list)


def test_avx512_is_an_alias_of_avx512_vnni():
    """The avx512_vnni level was called "avx512" (it always needed VNNI): the old name still works."""
    import os
    import subprocess
    import sys

    if "avx512_vnni" not in awqkit.available_isas():
        with pytest.raises(ValueError, match="avx512_vnni"):
            awqkit.set_isa("avx512")
        return
    with awqkit.use_isa("scalar"):
        with awqkit.use_isa("avx512"):
            assert awqkit.active_isa() == "avx512_vnni"
    out = subprocess.run([sys.executable, "-c", "import awqkit; print(awqkit.available_isas()[-1])"],
                         env={**os.environ, "AWQKIT_ISA": "avx512"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "avx512_vnni"


def test_use_amx_off_works_on_every_cpu():
    """use_amx(False) must be a no-op where there is no AMX (it raised on exit there)."""
    from awqkit import isa as _isa

    with awqkit.use_amx(False):
        assert not _isa.amx_active() and not _isa.amx_int8_active()
    assert _core.amx_enabled() == (_isa.amx_supported() or _isa.amx_int8_supported()) or os.environ.get("AWQKIT_AMX") == "0"
    if not (_isa.amx_supported() or _isa.amx_int8_supported()):
        assert not _core.amx_enabled()
        with pytest.raises(ValueError, match="AMX is not available"):
            with awqkit.use_amx(True):
                pass
        assert not _core.amx_enabled()


def test_gil_is_released_during_native_work(rng):
    """A Python thread keeps running while one native call is in progress."""
    import threading
    import time

    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    ticks: list[float] = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    with awqkit.use_threads(1):
        t = threading.Thread(target=ticker)
        t.start()
        time.sleep(0.01)
        start = time.perf_counter()
        awqkit.pseudo_quantize(w, scale_dtype="float32")
        end = time.perf_counter()
        stop.set()
        t.join()
    inside = [x for x in ticks if start < x < end]
    # Holding the GIL for the whole call would allow at most a tick or two at its edges.
    assert len(inside) >= 5, f"{len(inside)} ticks during a {1e3 * (end - start):.0f} ms native call"
