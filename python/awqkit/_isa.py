"""Which SIMD path the native kernels use, whether they use AMX, and how many threads.

The best instruction set the CPU supports is chosen when awqkit is imported; the
``AWQKIT_ISA`` environment variable (``scalar``, ``avx2`` or ``avx512``) caps it.
:func:`use_isa` lowers it for a block of code, which is how the tests run every path.
Intel AMX tiles (Sapphire Rapids and later) serve two kernels at the avx512 level: the
scale-search loss (AMX-BF16) and the prefill product (AMX-INT8); ``AWQKIT_AMX=0`` or
:func:`use_amx` turns both off.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import _core

__all__ = [
    "active_isa",
    "amx_active",
    "amx_int8_active",
    "amx_int8_supported",
    "amx_supported",
    "available_isas",
    "detected_isa",
    "num_threads",
    "set_isa",
    "use_amx",
    "use_isa",
    "use_threads",
]


def detected_isa() -> str:
    """Best ISA this CPU supports: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return _core.detected_isa()


def active_isa() -> str:
    """ISA the kernels dispatch to now."""
    return _core.active_isa()


def available_isas() -> list[str]:
    """Every ISA this CPU can run, from ``"scalar"`` up to :func:`detected_isa`."""
    return list(_core.available_isas())


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
    """Whether the scale search uses AMX-BF16 now (supported, enabled, active ISA avx512)."""
    return _core.amx_active()


def amx_int8_active() -> bool:
    """Whether the fused INT4 product uses AMX-INT8 tiles now (supported, enabled, avx512)."""
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
