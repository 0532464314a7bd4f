"""The stages of the quantization methods (``awqkit.quant_methods``): one handler per range
search and per rounding, keyed by the names that registry lists.

Every linear reading one input shares one Gram matrix and one GPTQ factor, computed once per
block in :class:`BlockInputs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import quant_methods as _registry
from ..config import AWQConfig
from ..gptq import gptq_factor, gptq_quantize
from ..quantizer import QuantizedTensor, quantize
from ..scale_clip_search import ClipResult, apply_clip, search_clip
from ..stats import ActivationStats, _from_state

__all__ = ["NEEDS_STATS", "RANGE_SEARCHES", "ROUNDINGS", "SAMPLE_TOKENS", "BlockInputs", "LinearJob", "RangeChoice",
           "concat_rows", "merge_entries", "row_shares"]


class BlockInputs:
    """What is derived once per captured input of a stage's linears (linears fed the same
    input share it): the Gram statistics and the GPTQ factor (``prepare``, a collective)."""

    def __init__(self) -> None:
        self._stats: dict[int, tuple[Any, ActivationStats]] = {}
        self._factors: dict[tuple, tuple[Any, Any]] = {}

    def prepare(self, jobs: list[LinearJob], spec) -> None:
        """The statistics of every input a job's stages need, and each job's token sample for
        the range search, on every rank (each rounds a share of every linear's rows). A
        collective: every rank calls it with the same jobs."""
        needed: dict[int, Any] = {}
        for job in jobs:
            if job.x is not None and (NEEDS_STATS[spec.ranges](job) or NEEDS_STATS[spec.rounding](job)):
                needed.setdefault(id(job.x), job.x)
        for x in needed.values():
            self._stats[id(x)] = (x, x.stats(gram=True))
        for job in jobs:
            tokens = SAMPLE_TOKENS[spec.ranges](job)
            if tokens:
                job.sample = job.x.sample(max(1, job.x.rows // tokens))

    def stats(self, x) -> ActivationStats:
        hit = self._stats.get(id(x))
        assert hit is not None and hit[0] is x, "BlockInputs.prepare did not bring these statistics here"
        return hit[1]

    def factor(self, x, damp: float, act_order: bool):
        key = (id(x), damp, act_order)
        hit = self._factors.get(key)
        if hit is None or hit[0] is not x:
            hit = (x, gptq_factor(self.stats(x), damp=damp, act_order=act_order))
            self._factors[key] = hit
        return hit[1]


@dataclass
class LinearJob:
    """One linear of a block, ready to be quantized: its weight after any fold, its captured
    input (None where no calibration token reached it), whether the family forbids clipping
    it (q/k projections), and where the search results are reported."""

    weight: torch.Tensor
    x: Any
    cfg: AWQConfig
    inputs: BlockInputs
    never_clipped: bool
    report: Any  # where the stages' entries go (report.clip, report.gptq)
    block: int
    name: str
    sample: torch.Tensor | None = None  # the range search's token sample (BlockInputs.prepare)


@dataclass
class RangeChoice:
    """The weight to take each group's scale and zero from (clipped or as it is), and with GGUF's
    refit the search's chosen codes and stored values."""

    weight: np.ndarray
    clipped: bool = False
    refit: ClipResult | None = None


_CLIP_TOKENS = 512  # AutoAWQ's token subsampling for the clip search
_REFIT_TOKENS = 16384  # the GGUF refit's token sample: every token up to 16384, a stride beyond
_GGUF_EXPANDED_SCALES = 8  # GGUF refit: also the plain scale times 1 + k/80, k = 1..8 (make_qx_quants' range)


def _minmax(job: LinearJob) -> RangeChoice:
    return RangeChoice(np.ascontiguousarray(job.weight.detach().to(torch.float32).numpy()))


def _clip_tokens(job: LinearJob) -> int | None:
    """The clip search's token sample size, or None where the weight is not clipped."""
    cfg = job.cfg
    refit = cfg.rule != "awq" and cfg.gguf_refit
    if job.x is None or (job.never_clipped and not refit) or not cfg.clip:
        return None
    # The refit fits each block's stored values to the tokens' Gram block: on AutoAWQ's 512-token
    # sample it would fit that sample's noise, so it takes (nearly) every calibration token.
    return _REFIT_TOKENS if refit else _CLIP_TOKENS


def _clip(job: LinearJob) -> RangeChoice:
    """AWQ's clip search (AutoAWQ's auto_clip on 512 tokens, rows 0, T // 512, ...); with a
    GGUF rule and ``gguf_refit`` each block's stored values are also refit on (nearly) every
    token, and q/k projections, never clipped, get the refit alone."""
    cfg = job.cfg
    wn = np.ascontiguousarray(job.weight.detach().to(torch.float32).numpy())
    refit = cfg.rule != "awq" and cfg.gguf_refit
    refit_only = refit and job.never_clipped
    if _clip_tokens(job) is None:
        return RangeChoice(wn)
    kw: dict[str, Any] = dict(bits=cfg.bits, group_size=cfg.group_size, zero_point=cfg.zero_point, n_grid=cfg.clip_n_grid,
                              # refit only: one shrink candidate, 1.0 (1.5 / n: int(n * 1.5 / n) is 1 despite rounding)
                              max_shrink=min(1.0, 1.5 / cfg.clip_n_grid) if refit_only else cfg.clip_max_shrink,
                              rule=cfg.rule, refit_scales=refit, n_expand=_GGUF_EXPANDED_SCALES if refit else 0)
    assert job.sample is not None
    res = search_clip(np.ascontiguousarray(job.sample.numpy()), wn, n_sample_tokens=None, **kw)
    # Per (row, group): a share of the rows gives its share of the entry (merge_entries).
    job.report.clip.append({"block": job.block, "layer": job.name, "loss_before": res.group_loss_before,
                            "loss_after": res.group_loss_after, **({"refit_only": True} if refit_only else {})})
    return RangeChoice(apply_clip(wn, res), clipped=True, refit=res if refit else None)


def _imatrix(job: LinearJob) -> RangeChoice:
    """The clip search with a diagonal objective: each group's rounding error weighted by the
    inputs' E[x_k^2] (llama.cpp's imatrix), on every calibration token; the lower and upper
    bounds are searched separately with a zero point."""
    cfg = job.cfg
    wn = np.ascontiguousarray(job.weight.detach().to(torch.float32).numpy())
    if job.x is None or job.never_clipped:
        return RangeChoice(wn)
    stats = job.inputs.stats(job.x)
    res = search_clip(_diagonal_stats(stats), wn, bits=cfg.bits, group_size=cfg.group_size, zero_point=cfg.zero_point,
                      n_grid=cfg.clip_n_grid, max_shrink=cfg.clip_max_shrink, n_sample_tokens=None,
                      asymmetric=cfg.zero_point and cfg.rule == "awq", rule=cfg.rule)
    job.report.clip.append({"block": job.block, "layer": job.name, "loss_before": res.group_loss_before,
                            "loss_after": res.group_loss_after, "objective": "imatrix"})
    return RangeChoice(apply_clip(wn, res), clipped=True)


def _diagonal_stats(stats: ActivationStats) -> ActivationStats:
    """Statistics whose Gram matrix is the diagonal of ``stats``' (sum of x_k^2 per channel)."""
    n, sum_abs, sum_sq, max_abs, _ = stats._impl.state()
    return _from_state(stats.in_features, True, (n, sum_abs, sum_sq, max_abs, np.diag(sum_sq)))


RANGE_SEARCHES: dict[str, Callable[[LinearJob], RangeChoice]] = {
    "minmax": _minmax,
    "clip": _clip,
    "imatrix": _imatrix,
}

# What each stage reads from the captured input besides the weight, for BlockInputs.prepare
# to bring to the rank that runs it: the input's statistics, a token sample of this size.
NEEDS_STATS: dict[str, Callable[[LinearJob], bool]] = {
    "minmax": lambda job: False,
    "clip": lambda job: False,
    "imatrix": lambda job: job.x is not None and not job.never_clipped,
    "nearest": lambda job: False,
    "gptq": lambda job: job.x is not None,
}
SAMPLE_TOKENS: dict[str, Callable[[LinearJob], int | None]] = {
    "minmax": lambda job: None,
    "clip": _clip_tokens,
    "imatrix": lambda job: None,
}


def _nearest(job: LinearJob, r: RangeChoice) -> QuantizedTensor:
    cfg = job.cfg
    if r.refit is not None:  # GGUF: the clip search chose each block's codes and refit stored values
        from ..gguf_blocks import BLOCK_TYPES

        t = BLOCK_TYPES[cfg.rule]
        res = r.refit
        assert res.codes is not None and res.scales is not None
        return QuantizedTensor(codes=res.codes, scales=res.scales.astype(np.float16),
                               zeros=np.full(res.scales.shape, t.zero, np.uint8), bits=cfg.bits,
                               group_size=cfg.group_size, zero_point=cfg.zero_point, rule=cfg.rule,
                               offsets=None if res.offsets is None else res.offsets.astype(np.float16))
    return quantize(r.weight, cfg.bits, cfg.group_size, cfg.zero_point, rule=cfg.rule)


def _gptq(job: LinearJob, r: RangeChoice) -> QuantizedTensor:
    cfg = job.cfg
    if job.x is None:  # no calibration token reached it (an expert): nothing to compensate with
        return _nearest(job, r)
    w = np.ascontiguousarray(job.weight.detach().to(torch.float32).numpy())
    factor = job.inputs.factor(job.x, cfg.gptq_damp, cfg.gptq_act_order)
    fixed: dict[str, Any] = {}
    if r.clipped:  # the range search's group scales and zeros; GPTQ rounds the unclipped weight with them
        qt = quantize(r.weight, cfg.bits, cfg.group_size, cfg.zero_point)
        fixed = {"scales": qt.scales, "zeros": qt.zeros}
    res = gptq_quantize(w, factor, bits=cfg.bits, group_size=cfg.group_size, zero_point=cfg.zero_point,
                        block_size=cfg.gptq_block_size, static_groups=cfg.gptq_static_groups, **fixed)
    job.report.gptq.append({"block": job.block, "layer": job.name, "loss": res.loss, "damp": res.damp})
    return res.quantized


ROUNDINGS: dict[str, Callable[[LinearJob, RangeChoice], QuantizedTensor]] = {
    "nearest": _nearest,
    "gptq": _gptq,
}


# How the per-row arrays of the stages' report entries become the entry's number: the rows of
# every share, in order, then the mean (clip losses per (row, group)) or the sum (GPTQ per row).
_ENTRY_TOTALS: dict[str, Callable[[np.ndarray], float]] = {
    "loss_before": lambda a: float(a.mean()),
    "loss_after": lambda a: float(a.mean()),
    "loss": lambda a: float(a.sum()),
}


def merge_entries(shares: list[list[dict]]) -> list[dict]:
    """One linear's report entries from the entries of its row shares (in row order)."""
    out = []
    for parts in zip(*shares):
        entry = dict(parts[0])
        for key, total in _ENTRY_TOTALS.items():
            if key in entry:
                entry[key] = total(np.concatenate([np.ravel(p[key]) for p in parts]))
        out.append(entry)
    return out


def row_shares(n_rows: int, world: int) -> list[tuple[int, int]]:
    """Each rank's rows [r0, r1) of an [n_rows, K] weight: contiguous, as even as possible, cut
    at multiples of 96 rows so that every native kernel's row blocks (48 and 12 rows in the
    clip search, 32 in GPTQ) are those of the whole weight: a row's results do not depend on
    the rows beside it, so the shares, put together, are the whole weight's bits."""
    align = 96
    blocks = -(-n_rows // align)
    cuts = [min(n_rows, align * ((blocks * r) // world)) for r in range(world + 1)]
    return [(cuts[r], cuts[r + 1]) for r in range(world)]


def concat_rows(parts: list[QuantizedTensor]) -> QuantizedTensor:
    if len(parts) == 1:
        return parts[0]
    p = parts[0]
    return QuantizedTensor(codes=np.concatenate([q.codes for q in parts]), scales=np.concatenate([q.scales for q in parts]),
                           zeros=np.concatenate([q.zeros for q in parts]), bits=p.bits, group_size=p.group_size,
                           zero_point=p.zero_point, rule=p.rule,
                           offsets=None if p.offsets is None else np.concatenate([q.offsets for q in parts]))


# The registry's stage names, each with its handler (a test checks the two agree).
if (set(RANGE_SEARCHES) != set(_registry.RANGE_SEARCHES) or set(ROUNDINGS) != set(_registry.ROUNDINGS)
        or set(SAMPLE_TOKENS) != set(RANGE_SEARCHES) or set(NEEDS_STATS) != set(RANGE_SEARCHES) | set(ROUNDINGS)):
    raise ImportError("awqkit.quant_methods and awqkit.model.method_stages list different stages")
