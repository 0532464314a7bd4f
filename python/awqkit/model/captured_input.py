"""The captured input of a block's linears, as every consumer reads it: statistics, the clip
search's token sample, the fold's scale divisions.

A ``CapturedInput`` holds this process's rows of one input tensor (linears fed the same
tensor share one object), in memory or in a file (``DiskActivations``), split in *parts*: one
per forward call of a calibration chunk. Its statistics are accumulated part by part with
order-independent sums (``ActivationStats(bounds=...)``: the bounds are the channels' max |x|
over every rank, and the global token count), so the sums, reduced over the ranks of a
distributed run, are bit for bit those of one process holding every row. Its token sample
(rows 0, step, 2 step, ... of the whole input) is gathered in calibration order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..stats import ActivationStats
from .disk_activations import READ_ROWS, DiskActivations
from .distributed import SingleProcess

__all__ = ["CapturedInput", "gather_input_layout"]


class CapturedInput:
    def __init__(self, store: Any, parts: list[int], k: int, group: SingleProcess):
        self.store = store  # [local rows, K] float32 tensor, or DiskActivations
        self.parts = list(parts)  # local rows of each forward call, in order
        self.k = int(k)
        self.group = group
        self.offset = 0  # the first local row's index in the whole input (all ranks' rows in calibration order)
        self.rows = sum(self.parts)  # every rank's rows

    @property
    def local_rows(self) -> int:
        return sum(self.parts)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.k)

    def div_(self, s: torch.Tensor) -> CapturedInput:
        self.store.div_(s.view(1, -1))
        return self

    def mul_(self, s: torch.Tensor) -> CapturedInput:
        self.store.mul_(s.view(1, -1))
        return self

    def _part_blocks(self):
        """The local rows, part by part, in blocks that keep each part's 1024-token grid."""
        r0 = 0
        for n in self.parts:
            if isinstance(self.store, DiskActivations):
                for b0 in range(0, n, READ_ROWS):
                    yield self.store.read(r0 + b0, min(READ_ROWS, n - b0))
            else:
                yield self.store[r0 : r0 + n]
            r0 += n

    def max_abs(self) -> np.ndarray:
        """Per-channel max |x| over every rank's rows (float64 [K])."""
        m = torch.zeros(self.k, dtype=torch.float32)
        for b in self._part_blocks():
            if b.shape[0]:
                m = torch.maximum(m, b.abs().amax(dim=0))
        out = m.to(torch.float64).numpy().copy()
        self.group.all_max([out], "statistics")
        return out

    def stats(self, gram: bool = True) -> ActivationStats:
        """The statistics of the whole input (every rank's rows), on every rank. A collective."""
        bounds = (self.max_abs(), self.rows)
        stats = ActivationStats(self.k, gram=gram, bounds=bounds)
        for b in self._part_blocks():
            if b.shape[0]:
                stats.update(np.ascontiguousarray(b.numpy()))
        if self.group.world == 1:
            return stats
        _, sum_abs, sum_sq, _, g = stats._impl.state()
        del stats
        arrays = [sum_abs, sum_sq] + ([_upper_triangle(g)] if g is not None else [])
        del g
        self.group.all_sum(arrays, "statistics")
        from ..stats import _from_state

        full = _symmetric(arrays[2], self.k) if gram else None
        return _from_state(self.k, gram, (self.rows, arrays[0], arrays[1], bounds[0], full), bounds)

    def sample(self, step: int) -> torch.Tensor:
        """Rows 0, step, 2 step, ... of the whole input, on every rank. A collective."""
        first = -(-self.offset // step) * step - self.offset  # the first local row on the global stride
        if isinstance(self.store, DiskActivations):
            mine = self.store.strided(step, first)
        else:
            mine = self.store[first::step].clone() if first < self.local_rows else self.store[:0].clone()
        if self.group.world == 1:
            return mine
        return torch.cat(self.group.all_gather(mine, "clip samples"))

    def load(self) -> torch.Tensor:
        """This rank's rows in memory."""
        return self.store.load() if isinstance(self.store, DiskActivations) else self.store

    def close(self) -> None:
        if isinstance(self.store, DiskActivations):
            self.store.close()


def _upper_triangle(g: np.ndarray) -> np.ndarray:
    k = g.shape[0]
    out = np.empty(k * (k + 1) // 2, dtype=np.float64)
    o = 0
    for i in range(k):
        out[o : o + k - i] = g[i, i:]
        o += k - i
    return out


def _symmetric(u: np.ndarray, k: int) -> np.ndarray:
    g = np.empty((k, k), dtype=np.float64)
    o = 0
    for i in range(k):
        g[i, i:] = u[o : o + k - i]
        g[i:, i] = u[o : o + k - i]
        o += k - i
    return g


def gather_input_layout(inputs: dict[str, CapturedInput], group: SingleProcess,
                        make_empty) -> dict[str, CapturedInput]:
    """Make every rank's captured inputs agree: the same names grouped the same way (an
    expert this rank's tokens never reached gets an empty local input, ``make_empty(k)``),
    each with its global row count and this rank's offset in it. Names no rank captured
    are left out (no calibration token reached them)."""
    groups: dict[int, list[str]] = {}
    for name, x in inputs.items():
        groups.setdefault(id(x), []).append(name)
    mine = [(tuple(names), inputs[names[0]].k, inputs[names[0]].local_rows) for names in groups.values()]
    if group.world == 1:
        seen = [mine]
    else:
        seen = group.all_gather(mine, "captured rows")
    layout: dict[tuple[str, ...], tuple[int, list[int]]] = {}
    for r, rank_groups in enumerate(seen):
        for names, k, rows in rank_groups:
            layout.setdefault(names, (k, [0] * len(seen)))[1][r] = rows
    out: dict[str, CapturedInput] = {}
    for names, (k, per_rank) in layout.items():
        if sum(per_rank) == 0:
            continue
        x = inputs[names[0]] if names[0] in inputs else CapturedInput(make_empty(k), [], k, group)
        x.rows = sum(per_rank)
        x.offset = sum(per_rank[: group.rank])
        for name in names:
            out[name] = x
    return out
