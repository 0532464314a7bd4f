"""Per-mapping scale search: the native quadratic loss on the linears (``inspect="linears"``,
``awqkit.search_scale``) or AutoAWQ's module loss (``inspect="module"``: run the attention or
MLP module in PyTorch for each candidate). Under grouped-query attention every candidate is
tied per KV head before it is scored."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import AWQConfig
from ..quantizer import pseudo_quantize
from ..scale_clip_search import scale_loss, search_scale
from ..stats import ActivationStats

__all__ = ["ScaleChoice", "search_linears", "search_module"]


@dataclass
class ScaleChoice:
    scales: torch.Tensor  # [K] float32 over the linears' inputs (already tied under GQA)
    ratio: float | None  # None = identity (plain rounding)
    loss: float
    rtn_loss: float
    duo: bool | None = None
    # The whole search, as scored by the objective that chose: ratios, duo, identity, losses.
    curve: dict | None = None


def _pq(w: torch.Tensor, cfg: AWQConfig) -> torch.Tensor:
    return torch.from_numpy(pseudo_quantize(w.detach().contiguous().numpy(), cfg.bits, cfg.group_size, cfg.zero_point,
                                            rule=cfg.rule))


def _fits_fp16_scales(w: torch.Tensor, cfg: AWQConfig) -> bool:
    """Whether every group scale of ``w`` is representable in float16 (quantize's rule)."""
    if cfg.rule != "awq":  # a GGUF type's own scale (and Q4_1 minimum) rule: ask its quantizer
        try:
            _pq(w.to(torch.float32), cfg)
        except ValueError as e:
            if "overflows float16" in str(e):
                return False
            raise
        return True
    k = w.shape[1]
    g = k if cfg.group_size == -1 else cfg.group_size
    grouped = w.detach().to(torch.float32).reshape(-1, g)
    if cfg.zero_point:
        spread = (grouped.amax(dim=1) - grouped.amin(dim=1)) / (2**cfg.bits - 1)
    else:
        spread = grouped.abs().amax(dim=1) / (2 ** (cfg.bits - 1) - 1)
    return bool(torch.isfinite(spread.to(torch.float16)).all())  # the stored scale: rounded to float16


def _native_search(stats: ActivationStats, weights: list[torch.Tensor], cfg: AWQConfig, group=None):
    """``awqkit.search_scale`` over ``weights`` on the input's statistics (with Gram): the
    candidate scale vectors (with the configured saliency) and their native losses. With a
    ``group`` of several ranks (each holding the statistics), each rank scores every n-th
    candidate and the losses are gathered: the same numbers, a candidate's loss depending on
    it alone."""
    ws = [np.ascontiguousarray(w.detach().numpy()) for w in weights]
    parts = 1 if group is None else group.world
    res = search_scale(stats, ws, n_grid=cfg.n_grid, duo_scaling=cfg.duo_scaling, include_identity=True,
                       saliency=cfg.saliency, bits=cfg.bits, group_size=cfg.group_size, zero_point=cfg.zero_point,
                       rule=cfg.rule, _part=(0 if group is None else group.rank, parts))
    if parts > 1:
        losses = _gathered(res.losses, group)
        res = dataclasses.replace(res, losses=losses, excluded=np.isinf(losses))
    return ws, res


def _gathered(mine: np.ndarray, group) -> np.ndarray:
    """Candidate c's loss from rank c % world (each scored its share)."""
    every = group.all_gather(np.asarray(mine, dtype=np.float64), "scale losses")
    out = np.array(mine, dtype=np.float64)
    for c in range(len(out)):
        out[c] = every[c % group.world][c]
    return out


def _choose(res, scales: np.ndarray, losses: np.ndarray) -> ScaleChoice:
    """The first lowest loss among the candidates (ties keep the earlier one). Excluded
    candidates (scaled weights beyond the float16 scale range) carry +inf and never win."""
    if not np.isfinite(losses).any():
        raise ValueError("every scale candidate of this mapping needs a group scale beyond float16 "
                         "(the weights times the candidate scales overflow it); use scale_dtype='float32' "
                         "or check the weights and activations for outliers")
    best = int(np.argmin(losses))
    identity = bool(res.identity[best])
    ident_idx = int(np.flatnonzero(res.identity)[0])
    curve = {"ratios": res.ratios.tolist(), "duo": res.duo.tolist(), "identity": res.identity.tolist(),
             "losses": [float(v) if np.isfinite(v) else None for v in losses]}  # None: excluded candidate
    return ScaleChoice(
        scales=torch.from_numpy(np.array(scales[best], dtype=np.float32)),
        ratio=None if identity else float(res.ratios[best]),
        loss=float(losses[best]),
        rtn_loss=float(losses[ident_idx]),
        duo=None if identity else bool(res.duo[best]),
        curve=curve,
    )


def search_linears(stats: ActivationStats, weights: list[torch.Tensor], cfg: AWQConfig,
                   tie=None, group=None) -> tuple[ScaleChoice, float]:
    """``awqkit.search_scale`` over the mapping's linears, on the statistics (with a Gram
    matrix) of their input: the choice and the lowest untied loss. With ``tie`` (grouped-query
    attention), every candidate of the search is tied and re-scored natively
    (``awqkit.scale_loss``), so the best *tied* candidate wins. ``group``: the ranks that
    share the scoring (every rank calls it, with the same statistics)."""
    ws, res = _native_search(stats, weights, cfg, group)
    untied = float(np.min(res.losses))
    if tie is None:
        return _choose(res, res.candidates, np.asarray(res.losses, dtype=np.float64)), untied
    tied = np.stack([tie(torch.from_numpy(np.asarray(c, dtype=np.float32))).numpy() for c in res.candidates])
    kw: dict[str, Any] = dict(bits=cfg.bits, group_size=cfg.group_size, zero_point=cfg.zero_point, rule=cfg.rule)
    if group is None or group.world == 1:
        losses = np.asarray(scale_loss(stats, ws, tied, **kw), dtype=np.float64)
    else:
        mine = np.full(len(tied), np.nan)
        share = list(range(group.rank, len(tied), group.world))
        if share:
            mine[share] = scale_loss(stats, ws, tied[share], _require_storable=False, **kw)
        losses = _gathered(mine, group)
        if not np.isfinite(losses).any():
            scale_loss(stats, ws, tied, **kw)  # the single process's error: no tied candidate can be stored
    return _choose(res, tied, losses), untied


@torch.no_grad()
def search_module(stats: ActivationStats, layers: list[nn.Linear], run_module, cfg: AWQConfig, tie=None) -> ScaleChoice:
    """AutoAWQ's ``_search_best_scale``: for each candidate of the native search (same
    scale vectors, same saliency), put Q(W s)/s into the layers, run the inspected module
    on the calibration chunks and score the output MSE against the full-precision output.
    ``run_module()`` returns the module outputs (list of tensors). ``tie`` maps a [K] scale
    vector to the vector actually applied (GQA)."""
    _, res = _native_search(stats, [l.weight for l in layers], cfg)
    originals = [l.weight.detach().clone() for l in layers]
    ref = [o.to(torch.float32) for o in run_module()]
    n_ref = sum(r.numel() for r in ref)
    applied, losses = [], []
    try:
        for cand, excluded in zip(res.candidates, res.excluded):
            s = torch.from_numpy(np.asarray(cand, dtype=np.float32))
            s = tie(s) if tie is not None else s
            applied.append(s.numpy())
            # As in the native search: a candidate whose scaled weights overflow the float16
            # group scale (also only once tied across a GQA group) cannot be stored; it is
            # scored +inf instead of being run.
            if excluded or not all(_fits_fp16_scales(w * s.view(1, -1), cfg) for w in originals):
                losses.append(float("inf"))
                continue
            for lin, w in zip(layers, originals):
                lin.weight.copy_(_pq(w * s.view(1, -1), cfg) / s.view(1, -1))
            out = run_module()
            # numpy's sum: the same bits for any thread count
            losses.append(sum(float(np.sum(np.square((o.to(torch.float32) - r).double().numpy()))) for o, r in zip(out, ref))
                          / n_ref)
    finally:
        for lin, w in zip(layers, originals):
            lin.weight.copy_(w)
    return _choose(res, np.stack(applied), np.asarray(losses, dtype=np.float64))
