"""GGUF block types that awqkit quantizes to bit for bit, and their byte layouts.

The native core reproduces llama.cpp's reference quantizers (``quantize_row_q4_0_ref``,
``q4_1_ref``, ``q8_0_ref`` in ggml-quants.c: what ``llama-quantize`` runs without an
importance matrix), one row per type in ``csrc/quant/ggml_block_types.cpp``. Passing
``rule="q4_0"`` (etc.) to :func:`awqkit.quantize` and to the scale and clip searches makes
them round exactly as that type does, so the AWQ searches optimise what the GGUF file holds.
This module adds each type's byte layout (``pack``/``unpack``); the numeric fields come from
the core's table, so the two cannot disagree. Adding a type: its row in the core, its
layout here, and its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _core

__all__ = ["BLOCK_TYPES", "GgufBlockType", "RULES", "pack_blocks", "rule_id", "unpack_blocks"]


@dataclass(frozen=True)
class GgufBlockType:
    name: str          # "q4_0": gguf.GGMLQuantizationType[name.upper()]
    rule: int          # QuantSpec::rule in the core
    ggml_type: int     # GGML_TYPE_* id
    bits: int
    block: int         # weights per block
    has_min: bool      # y = d*q + m instead of y = d*(q - zero)
    zero: int          # the code of 0.0 in awqkit's (code - zero) * scale form
    type_size: int     # bytes per block
    pack: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]
    unpack: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray | None]]


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8).reshape(*v.shape, 2)


def _f16_of(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(codes: np.ndarray) -> np.ndarray:
    # ggml: byte j holds element j (low nibble) and element j + 16 (high nibble)
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def _from_nibbles(qs: np.ndarray) -> np.ndarray:
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.uint8)


# Layouts: codes [N, G, 32] uint8, scales [N, G] and offsets [N, G] float32 holding float16
# values -> bytes [N, G, type_size]; and back.
def _pack_q4_0(codes, scales, offsets):
    return np.concatenate([_f16_bytes(scales), _nibbles(codes)], axis=-1)


def _unpack_q4_0(b):
    return _from_nibbles(b[..., 2:18]), _f16_of(b[..., 0:2]), None


def _pack_q4_1(codes, scales, offsets):
    return np.concatenate([_f16_bytes(scales), _f16_bytes(offsets), _nibbles(codes)], axis=-1)


def _unpack_q4_1(b):
    return _from_nibbles(b[..., 4:20]), _f16_of(b[..., 0:2]), _f16_of(b[..., 2:4])


def _pack_q8_0(codes, scales, offsets):
    q = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    return np.concatenate([_f16_bytes(scales), q], axis=-1)


def _unpack_q8_0(b):
    q = np.ascontiguousarray(b[..., 2:34]).view(np.int8).astype(np.int16) + 128
    return q.astype(np.uint8), _f16_of(b[..., 0:2]), None


_LAYOUTS = {"q4_0": (18, _pack_q4_0, _unpack_q4_0), "q4_1": (20, _pack_q4_1, _unpack_q4_1),
            "q8_0": (34, _pack_q8_0, _unpack_q8_0)}

BLOCK_TYPES: dict[str, GgufBlockType] = {
    t["name"]: GgufBlockType(**t, type_size=_LAYOUTS[t["name"]][0], pack=_LAYOUTS[t["name"]][1],
                             unpack=_LAYOUTS[t["name"]][2])
    for t in _core.ggml_block_types()
}
RULES = ("awq", *BLOCK_TYPES)


def rule_id(rule: str) -> int:
    """The core's id of a rounding rule: ``"awq"`` or a GGUF block type name."""
    if rule == "awq":
        return 0
    t = BLOCK_TYPES.get(str(rule).lower()) if isinstance(rule, str) else None
    if t is None:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return t.rule


def pack_blocks(qt) -> np.ndarray:
    """The GGUF bytes [N, K / block * type_size] uint8 of a :class:`awqkit.QuantizedTensor`
    quantized with a GGUF rule (what ``gguf.GGUFWriter.add_tensor(..., raw_dtype=...)`` takes)."""
    t = BLOCK_TYPES.get(qt.rule)
    if t is None:
        raise ValueError(f"this tensor was quantized with rule {qt.rule!r}, not a GGUF block type: pass rule=... to quantize")
    n, k = qt.codes.shape
    g = k // t.block
    b = t.pack(qt.codes.reshape(n, g, t.block), np.asarray(qt.scales, np.float32),
               None if qt.offsets is None else np.asarray(qt.offsets, np.float32))
    return np.ascontiguousarray(b.reshape(n, g * t.type_size))


def unpack_blocks(data: np.ndarray, type_name: str, shape: tuple[int, int]):
    """A :class:`awqkit.QuantizedTensor` [N, K] from GGUF bytes of ``type_name``."""
    from .quantizer import QuantizedTensor

    t = BLOCK_TYPES[type_name]
    n, k = shape
    if k % t.block:
        raise ValueError(f"GGUF {type_name} holds rows of whole {t.block}-weight blocks; K = {k}")
    b = np.asarray(data, np.uint8).reshape(n, k // t.block, t.type_size)
    codes, scales, offsets = t.unpack(b)
    return QuantizedTensor(codes=codes.reshape(n, k), scales=scales.astype(np.float16),
                           zeros=np.full(scales.shape, t.zero, np.uint8), bits=t.bits, group_size=t.block,
                           zero_point=t.has_min, offsets=None if offsets is None else offsets.astype(np.float16),
                           rule=type_name)
