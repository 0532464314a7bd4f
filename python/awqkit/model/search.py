"""Per-mapping scale search: the native quadratic loss on the linears (``inspect="linears"``,
``awqkit.search_scale``) or AutoAWQ's module loss (``inspect="module"``: run the attention or
MLP module in PyTorch for each candidate). Under grouped-query attention every candidate is
tied per KV head before it is scored."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import AWQConfig
from ..quantizer import pseudo_quantize

__all__ = ["ScaleChoice", "search_linears", "search_module"]


@dataclass
class ScaleChoice:
    scales: torch.Tensor  # [K] float32 over the linears' inputs (already tied under GQA)
    ratio: float | None  # None = identity (plain rounding)
    loss: float
    rtn_loss: float
    duo: bool | None = None


def _pq(w: torch.Tensor, cfg: AWQConfig) -> torch.Tensor:
    return torch.from_numpy(pseudo_quantize(w.detach().contiguous().numpy(), cfg.bits, cfg.group_size, cfg.zero_point))


def search_linears(x: torch.Tensor, weights: list[torch.Tensor], cfg: AWQConfig, tie=None) -> tuple[ScaleChoice, object]:
    """``awqkit.search_scale`` over the mapping's linears, on streamed statistics with a Gram
    matrix. With ``tie`` (grouped-query attention), every candidate of the search is tied
    and re-scored natively (``awqkit.scale_loss``), so the best *tied* candidate wins."""
    from .. import ActivationStats, scale_loss, search_scale  # the native search engine (issue 3)

    k = x.shape[1]
    stats = ActivationStats(k, gram=True)
    for i in range(0, x.shape[0], 8192):
        stats.update(np.ascontiguousarray(x[i : i + 8192].numpy()))
    ws = [np.ascontiguousarray(w.detach().numpy()) for w in weights]
    qkw = dict(bits=cfg.bits, group_size=cfg.group_size, zero_point=cfg.zero_point)
    res = search_scale(stats, ws, n_grid=cfg.n_grid, duo_scaling=cfg.duo_scaling, include_identity=True,
                       saliency=cfg.saliency, **qkw)
    if tie is None:
        best = int(res.best)
        scales = np.asarray(res.scales, dtype=np.float32)
        loss = float(res.loss)
    else:
        tied = np.stack([tie(torch.from_numpy(np.asarray(c, dtype=np.float32))).numpy() for c in res.candidates])
        losses = np.asarray(scale_loss(stats, ws, tied, **qkw), dtype=np.float64)
        best = int(np.argmin(losses))  # first minimum: ties keep the earlier candidate
        scales, loss = tied[best], float(losses[best])
    ratio = None if bool(res.identity[best]) else float(res.ratios[best])
    choice = ScaleChoice(torch.from_numpy(np.array(scales, dtype=np.float32)), ratio, loss, float(res.rtn_loss))
    choice.duo = None if ratio is None else bool(res.duo[best])
    return choice, res


def _candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor, ratio: float, duo: bool) -> torch.Tensor:
    if duo:
        s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
    else:
        s = x_mean.pow(ratio).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    s[~torch.isfinite(s)] = 1.0
    return s


def _w_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    w = torch.cat([w.detach() for w in weights], dim=0)
    n, k = w.shape
    gs = k if group_size == -1 else group_size
    wg = w.view(n, k // gs, gs).abs()
    wg = wg / (wg.amax(dim=2, keepdim=True) + 1e-6)
    return wg.view(n, k).mean(0)


@torch.no_grad()
def search_module(x: torch.Tensor, layers: list[nn.Linear], run_module, cfg: AWQConfig, tie=None) -> ScaleChoice:
    """AutoAWQ's ``_search_best_scale``: for each ratio, put Q(W s)/s into the layers, run
    the inspected module on the calibration chunks and score the output MSE against the
    full-precision output. ``run_module()`` returns the module outputs (list of tensors).
    ``tie`` maps a [K] scale vector to the vector actually applied (GQA)."""
    x_mean = x.abs().mean(0).to(torch.float32)
    w_mean = _w_mean([l.weight for l in layers], cfg.group_size)
    originals = [l.weight.detach().clone() for l in layers]
    ref = [o.to(torch.float32) for o in run_module()]
    n_ref = sum(r.numel() for r in ref)
    duo_families = [True, False] if cfg.duo_scaling == "both" else [bool(cfg.duo_scaling)]
    candidates: list[tuple[float | None, bool | None, torch.Tensor]] = [(None, None, torch.ones_like(x_mean))]
    for duo in duo_families:
        for i in range(cfg.n_grid):
            candidates.append((i / cfg.n_grid, duo, _candidate_scales(x_mean, w_mean, i / cfg.n_grid, duo)))
    best = None
    rtn_loss = None
    try:
        for ratio, duo, s in candidates:
            s_applied = tie(s) if tie is not None else s
            for lin, w in zip(layers, originals):
                lin.weight.copy_(_pq(w * s_applied.view(1, -1), cfg) / s_applied.view(1, -1))
            out = run_module()
            loss = sum(float((o.to(torch.float32) - r).double().pow(2).sum()) for o, r in zip(out, ref)) / n_ref
            if ratio is None:
                rtn_loss = loss
            if best is None or loss < best[0]:
                best = (loss, ratio, duo, s_applied)
    finally:
        for lin, w in zip(layers, originals):
            lin.weight.copy_(w)
    loss, ratio, duo, s = best
    return ScaleChoice(s, ratio, loss, rtn_loss, duo)
