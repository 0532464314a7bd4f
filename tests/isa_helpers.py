"""The kernel table as the tests read it (awqkit.isa_levels(): csrc/common/kernel_table.cpp).

Tests ask which available levels run a kernel family natively (that level or one below it
provides it, scalar's reference aside), never for a hard-coded level name, so a new level
is tested by adding its table entry."""

from __future__ import annotations

import awqkit

LEVELS = awqkit.isa_levels()
NAMES = [lvl["name"] for lvl in LEVELS]
AVAILABLE = awqkit.available_isas()


def native_levels(kernel: str) -> list[str]:
    """Available levels whose resolved table has a SIMD ``kernel`` (not the scalar reference)."""
    out, has = [], False
    for lvl in LEVELS[1:]:
        has = has or kernel in lvl["kernels"]
        if has and lvl["name"] in AVAILABLE:
            out.append(lvl["name"])
    return out


def levels_without(kernel: str) -> list[str]:
    """Available levels that fall back to the scalar reference (or have no entry) for ``kernel``."""
    native = native_levels(kernel)
    return [name for name in AVAILABLE if name not in native]
