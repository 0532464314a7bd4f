"""Which SIMD path the native kernels use, whether they use AMX, and how many threads.

The levels and the kernels each provides are one native table (``csrc/common/kernel_table.cpp``,
listed by :func:`isa_levels`); a level named by what it needs: ``scalar``, ``avx2`` (AVX2, FMA,
F16C) and ``avx512_vnni`` (AVX-512 F/BW/DQ/VL and VNNI). The best level the CPU supports is
chosen when awqkit is imported; the ``AWQKIT_ISA`` environment variable caps it. ``"avx512"``
is accepted everywhere a level is named, as the former name of ``avx512_vnni``.
:func:`use_isa` lowers the level for a block of code, which is how the tests run every path.
Intel AMX tiles (Sapphire Rapids and later) serve two kernels of the avx512_vnni level: the
scale-search loss (AMX-BF16) and the prefill product (AMX-INT8); ``AWQKIT_AMX=0`` or
:func:`use_amx` turns both off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from . import _core

__all__ = [
    "active_isa",
    "amx_active",
    "amx_int8_active",
    "amx_int8_supported",
    "amx_supported",
    "available_isas",
    "detected_isa",
    "isa_levels",
    "num_threads",
    "set_isa",
    "use_amx",
    "use_isa",
    "use_threads",
]


def detected_isa() -> str:
    """Best ISA level this CPU supports: ``"scalar"``, ``"avx2"`` or ``"avx512_vnni"``."""
    return _core.detected_isa()


def active_isa() -> str:
    """ISA the kernels dispatch to now."""
    return _core.active_isa()


def available_isas() -> list[str]:
    """Every ISA this CPU can run, from ``"scalar"`` up to :func:`detected_isa`."""
    return list(_core.available_isas())


def isa_levels() -> list[dict[str, Any]]:
    """The kernel table: every level compiled into this build, lowest first, as dicts with
    ``name``, ``requires`` (the CPU features), ``on_cpu`` (this CPU has them) and ``kernels``
    (the kernel families the level provides itself; the others fall back to the level below)."""
    return [dict(level) for level in _core.isa_levels()]


def set_isa(name: str) -> None:
    """Dispatch to ``name`` from now on; ``ValueError`` if the CPU lacks it."""
    _core.set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run a block with the kernels forced to ``name``."""
    previous = active_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def num_threads() -> int:
    """OpenMP threads the kernels use."""
    return _core.max_threads()


@contextlib.contextmanager
def use_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` OpenMP threads (results never depend on it)."""
    previous = num_threads()
    _core.set_num_threads(n)
    try:
        yield
    finally:
        _core.set_num_threads(previous)


def amx_supported() -> bool:
    """Whether this CPU/OS can run AMX-BF16 (the scale-search loss)."""
    return _core.amx_supported()


def amx_int8_supported() -> bool:
    """Whether this CPU/OS can run AMX-INT8 (the prefill product of the fused INT4 kernel)."""
    return _core.amx_int8_supported()


def amx_active() -> bool:
    """Whether the scale search uses AMX-BF16 now (supported, enabled, active level avx512_vnni)."""
    return _core.amx_active()


def amx_int8_active() -> bool:
    """Whether the fused INT4 product uses AMX-INT8 tiles now (supported, enabled, avx512_vnni)."""
    return _core.amx_int8_active()


@contextlib.contextmanager
def use_amx(on: bool) -> Iterator[None]:
    """Turn every AMX path on or off for a block (``AWQKIT_AMX=0`` turns them off globally).

    The search's AMX-BF16 loss splits every float into two bf16 halves (16 significant
    bits, losses within ~1e-6 of float32); the INT4 product's AMX-INT8 tiles give the
    same bits as the VNNI and scalar digits kernels. ``ValueError`` if ``on`` and the
    CPU/OS has no AMX.
    """
    previous = _core.amx_enabled()
    _core.set_amx(bool(on))
    try:
        yield
    finally:
        _core.set_amx(previous)
