"""Fold AWQ scales into torch modules, in place, without changing the network's function.

For a mapping ``prev_op -> layers`` and scales ``s`` over the shared input channels:
the previous op's output is divided by ``s`` (a norm's weight and bias, or the last
output rows and bias of a linear) and each following linear's input columns are
multiplied by ``s``.

Grouped-query attention: v_proj has ``n_kv * head_dim`` outputs while o_proj has
``n_heads * head_dim`` inputs; query head ``h`` reads KV head ``h // (n_heads / n_kv)``.
A scale on an o_proj input column can only be moved into v_proj if every query head of
the group wants the same value, so the scales are tied per KV head: the max over the
head's query group (AMD Quark's choice; max keeps every salient channel protected). The
search ties every candidate before scoring it, so the best *tied* candidate wins, and plain
rounding (s = 1) stays a candidate. Measured on SmolLM2-135M (9 query / 3 KV heads), 4-bit
g64: the tied v->o scales cut o_proj's output error by 10% against plain rounding on average
(the untied, unrealisable optimum would cut 16%), identity won in 3 of 30 blocks; the
perplexity effect of dropping the mapping instead is in benchmarks/README.md.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["expand_gqa_scales", "fold_scales", "tie_gqa_scales"]


def tie_gqa_scales(s: torch.Tensor, n_prev_out: int, head_dim: int) -> torch.Tensor:
    """Scales [n_heads*head_dim] -> per-KV-head scales [n_kv*head_dim] (max over the group)."""
    k = s.numel()
    if n_prev_out % head_dim or k % n_prev_out:
        raise ValueError(f"cannot tie {k} scales to {n_prev_out} outputs with head_dim {head_dim}")
    n_kv, group = n_prev_out // head_dim, k // n_prev_out
    return s.view(n_kv, group, head_dim).amax(dim=1).reshape(-1)


def expand_gqa_scales(s_kv: torch.Tensor, k: int, head_dim: int) -> torch.Tensor:
    """Per-KV-head scales [n_kv*head_dim] -> the o_proj input scales [k] they imply."""
    n_kv = s_kv.numel() // head_dim
    group = k // s_kv.numel()
    return s_kv.view(n_kv, 1, head_dim).expand(n_kv, group, head_dim).reshape(-1)


@torch.no_grad()
def fold_scales(prev: nn.Module, layers: list[nn.Module], s_prev: torch.Tensor, s_layers: torch.Tensor) -> None:
    """Divide ``prev``'s output by ``s_prev`` and multiply ``layers``' inputs by ``s_layers``
    (the same vector except under GQA, where ``s_layers`` is ``s_prev`` expanded)."""
    s_prev = s_prev.to(torch.float32)
    if isinstance(prev, nn.Linear):
        p = s_prev.numel()
        prev.weight[-p:].div_(s_prev.view(-1, 1).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias[-p:].div_(s_prev.to(prev.bias.dtype))
    else:
        weight = getattr(prev, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.shape != s_prev.shape:
            raise ValueError(
                f"cannot fold scales into {type(prev).__name__}: it needs a per-channel weight of shape "
                f"{tuple(s_prev.shape)} (a LayerNorm/RMSNorm or a Linear)"
            )
        weight.div_(s_prev.to(weight.dtype))
        bias = getattr(prev, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.div_(s_prev.to(bias.dtype))
    for lin in layers:
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"scaled layers must be nn.Linear, got {type(lin).__name__}")
        lin.weight.mul_(s_layers.view(1, -1).to(lin.weight.dtype))
