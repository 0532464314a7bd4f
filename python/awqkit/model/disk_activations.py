"""Captured linear inputs kept in a file instead of memory (``activations="disk"`` of
``quantize_to_checkpoint``): what makes a large model's calibration fit when its activations
do not.

A ``DiskActivations`` is a [rows, K] float32 matrix in an unlinked temporary file (freed when
the object is), written chunk by chunk while the block runs and read back with plain reads
into small buffers, so its pages never count in the process's resident memory. The in-place
scale divisions the pipeline applies to captured inputs after a fold (``div_``, and ``mul_``
when a fold is undone) are recorded and applied, in order and with the same float32 operations,
to every block read: the values seen are bit for bit those of the in-memory tensor. The
consumers (``awqkit.model.captured_input``) read it the way the in-memory path reads a tensor:
the statistics in row blocks of a multiple of 1024 tokens within each forward call's rows
(``ActivationStats.update`` sums 1024-token super-chunks, so the sums are the same), the clip
search's strided token sample row by row.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, cast

import torch

__all__ = ["DiskActivations", "READ_ROWS"]

READ_ROWS = 2048  # rows per read: a multiple of the statistics' 1024-token super-chunk


class DiskActivations:
    def __init__(self, k: int, folder: str | None = None):
        self.k = int(k)
        self.rows = 0
        self._file = tempfile.TemporaryFile(dir=folder)  # unlinked: the space goes with the object
        self._ops: list[tuple[str, torch.Tensor]] = []

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.k)

    def append(self, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, self.k).to(torch.float32).contiguous()
        self._file.seek(self.rows * self.k * 4)
        self._file.write(memoryview(cast(Any, x2.numpy())).cast("B"))
        self._file.flush()  # reads go through the descriptor (preadv), not this buffer
        self.rows += x2.shape[0]

    def div_(self, s: torch.Tensor) -> DiskActivations:
        self._ops.append(("div", s.detach().clone()))
        return self

    def mul_(self, s: torch.Tensor) -> DiskActivations:
        self._ops.append(("mul", s.detach().clone()))
        return self

    def read(self, r0: int, n: int) -> torch.Tensor:
        """Rows [r0, r0 + n), ops applied."""
        out = torch.empty((n, self.k), dtype=torch.float32)
        buf = memoryview(cast(Any, out.numpy())).cast("B")
        done = 0
        while done < len(buf):
            got = os.preadv(self._file.fileno(), [buf[done:]], (r0 * self.k * 4) + done)
            if got <= 0:
                raise OSError(f"the activations file ended at row {r0 + done // (4 * self.k)} of {self.rows}")
            done += got
        return self._apply(out)

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        for op, s in self._ops:
            if op == "div":
                t.div_(s)
            else:
                t.mul_(s)
        return t

    def strided(self, step: int, start: int = 0) -> torch.Tensor:
        """Rows start, start + step, ... (the clip search's token sample), ops applied."""
        idx = range(start, self.rows, step)
        out = torch.empty((len(idx), self.k), dtype=torch.float32)
        for j, r in enumerate(idx):
            out[j] = self.read(r, 1)[0]
        return out

    def load(self) -> torch.Tensor:
        """The whole matrix in memory (for consumers that need it all at once)."""
        return self.read(0, self.rows) if self.rows else torch.empty((0, self.k), dtype=torch.float32)

    def close(self) -> None:
        self._file.close()

