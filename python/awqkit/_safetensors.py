"""The header of a .safetensors file, read with the standard library alone (no torch)."""

from __future__ import annotations

import json
import os
import struct


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(tensor name -> {"dtype", "shape", "data_offsets"}, byte offset where the data begins).

    Reads only the header's bytes, so a size estimate never loads the weights."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    return header, 8 + header_len
