"""Which SIMD path the native kernels use, and how many threads.

The best instruction set the CPU supports is chosen when awqkit is imported; the
``AWQKIT_ISA`` environment variable (``scalar``, ``avx2`` or ``avx512``) caps it.
:func:`use_isa` lowers it for a block of code, which is how the tests run every path.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from . import _core

__all__ = ["active_isa", "available_isas", "detected_isa", "set_isa", "use_isa", "num_threads", "use_threads"]


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
