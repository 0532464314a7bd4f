"""Fold AWQ scales into torch modules, in place, by the kind each mapping declares.

For a mapping ``prev_op -> layers`` and scales ``s`` over the shared input channels: the
previous op's output is divided by ``s`` and every module reading it (the quantized ``layers``
and the full-precision ``also_scaled``) has its input columns multiplied by ``s``. How the
previous op divides its output is declared (``awqkit.model.families``), never guessed:

- norm, ``"scale"`` (RMSNorm, LayerNorm): ``w <- w / s``, ``b <- b / s``;
- norm, ``"offset_one"`` (Gemma: ``normed(x) * (1 + w)``): ``w <- (1 + w) / s - 1``;
- linear: its output rows ``prev_rows`` (all of them, the v slice of a fused ``[q | k | v]``,
  or one chunk of ``[gate | up]``) and their bias.

Grouped-query attention: v has ``n_kv * head_dim`` outputs while o has ``n_heads * head_dim``
inputs; query head ``h`` reads KV head ``h // (n_heads / n_kv)``. A scale on an o input column
can only be moved into v if every query head of the group wants the same value, so the scales
are tied per KV head: the max over the head's query group (AMD Quark's choice; max keeps every
salient channel protected). The head counts come from the model config. The search ties every
candidate before scoring it, so the best *tied* candidate wins, and plain rounding (s = 1)
stays a candidate.

The pipeline checks every fold on the block's output (``awqkit.model.pipeline``): these
functions state the algebra, the check holds them to it on real tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import BlockLayout, Mapping

__all__ = ["expand_gqa_scales", "fold_mapping", "fold_scales", "mapping_tie", "prev_rows", "tie_gqa_scales"]


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


def prev_kind(prev: nn.Module, m: Mapping) -> str:
    return m.prev_kind or ("linear" if isinstance(prev, nn.Linear) else "norm")


def prev_rows(prev: nn.Linear, m: Mapping, layout: BlockLayout) -> slice:
    """The output rows of a linear prev_op that feed the mapping's layers."""
    n = prev.out_features
    if m.prev_rows is None:
        return slice(0, n)
    if m.prev_rows == "qkv:v":
        heads, kv, hd = layout.heads, layout.kv_heads, layout.head_dim
        if not (heads and kv and hd) or n != (heads + 2 * kv) * hd:
            raise ValueError(f"{m.prev_op}: {n} outputs are not [q | k | v] for {heads} query heads, {kv} KV heads "
                             f"and head_dim {hd} (from the model config)")
        return slice((heads + kv) * hd, n)
    i, parts = (int(v) for v in m.prev_rows.split(":")[1].split("/"))
    if n % parts:
        raise ValueError(f"{m.prev_op}: {n} outputs do not split into {parts} equal chunks")
    return slice(i * n // parts, (i + 1) * n // parts)


def mapping_tie(prev: nn.Module, m: Mapping, layout: BlockLayout, k: int):
    """(n scales the prev op takes, tie) for a mapping whose layers read ``k`` channels; ``tie``
    maps a candidate [k] to the [k] actually applied (None where every channel is free)."""
    if prev_kind(prev, m) != "linear":
        return k, None
    if not isinstance(prev, nn.Linear):
        raise ValueError(f"{m.prev_op} is declared a linear prev_op but is a {type(prev).__name__}")
    rows = prev_rows(prev, m, layout)
    p = rows.stop - rows.start
    if not m.gqa:
        if p != k:
            raise ValueError(f"{m.name}: {m.prev_op} gives {p} channels but {m.layers[0]} reads {k}; if this is the "
                             "v -> o mapping of grouped-query attention, declare it with 'gqa': True")
        return k, None
    heads, kv, hd = layout.heads, layout.kv_heads, layout.head_dim
    if not (heads and kv and hd) or p != kv * hd or k != heads * hd:
        raise ValueError(f"{m.name}: v gives {p} and o reads {k} channels, but the model config says {heads} query "
                         f"heads, {kv} KV heads, head_dim {hd}")
    if p == k:
        return k, None
    return p, lambda s: expand_gqa_scales(tie_gqa_scales(s, p, hd), k, hd)


@torch.no_grad()
def _divide_prev(prev: nn.Module, m: Mapping, layout: BlockLayout, s_prev: torch.Tensor) -> None:
    if prev_kind(prev, m) == "linear":
        if not isinstance(prev, nn.Linear):
            raise ValueError(f"{m.prev_op} is declared a linear prev_op but is a {type(prev).__name__}")
        rows = prev_rows(prev, m, layout)
        prev.weight[rows].div_(s_prev.view(-1, 1).to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias[rows].div_(s_prev.to(prev.bias.dtype))
        return
    weight = getattr(prev, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != s_prev.shape:
        raise ValueError(f"cannot fold scales into {m.prev_op} ({type(prev).__name__}): a norm prev_op needs a "
                         f"per-channel weight of shape {tuple(s_prev.shape)}")
    if layout.norm == "offset_one":
        # normed(x) * (1 + w) / s = normed(x) * (1 + w'), w' = (1 + w) / s - 1 (in float32)
        w32 = weight.to(torch.float32)
        weight.copy_(((1.0 + w32) / s_prev - 1.0).to(weight.dtype))
    else:
        weight.div_(s_prev.to(weight.dtype))
    bias = getattr(prev, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.div_(s_prev.to(bias.dtype))


@torch.no_grad()
def _scale_inputs(mod: nn.Module, name: str, s_layers: torch.Tensor) -> None:
    weight = getattr(mod, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != s_layers.numel():
        raise ValueError(f"{name} ({type(mod).__name__}) must have a [out, {s_layers.numel()}] weight to take scales")
    weight.mul_(s_layers.view(1, -1).to(weight.dtype))


def fold_mapping(block: nn.Module, m: Mapping, layout: BlockLayout, s: torch.Tensor) -> None:
    """Fold the scales ``s`` [K] (already tied where the mapping needs it) into ``block``."""
    s = s.to(torch.float32)
    prev = block.get_submodule(m.prev_op)
    p, tie = mapping_tie(prev, m, layout, s.numel())
    s_prev = tie_gqa_scales(s, p, layout.head_dim) if tie is not None and layout.head_dim else s
    _divide_prev(prev, m, layout, s_prev)
    for name in (*m.layers, *m.also_scaled):
        _scale_inputs(block.get_submodule(name), name, s)


def fold_scales(prev: nn.Module, layers: list[nn.Module], s_prev: torch.Tensor, s_layers: torch.Tensor,
                norm: str = "scale") -> None:
    """The fold on bare modules (a norm with ``norm`` kind, or every output row of a Linear)."""
    m = Mapping(prev_op="prev", layers=tuple(f"layers.{i}" for i in range(len(layers))), inp="layers.0",
                module2inspect="layers.0", prev_kind=None)
    layout = BlockLayout(None, "", (m,), norm, None, None, None)
    _divide_prev(prev, m, layout, s_prev.to(torch.float32))
    for i, lin in enumerate(layers):
        _scale_inputs(lin, f"layers.{i}", s_layers.to(torch.float32))


def snapshot(block: nn.Module, m: Mapping) -> dict[str, torch.Tensor]:
    """Copies of every tensor ``fold_mapping`` changes, for ``restore``."""
    out = {}
    for name in (m.prev_op, *m.layers, *m.also_scaled):
        mod = block.get_submodule(name)
        for pname in ("weight", "bias"):
            t = getattr(mod, pname, None)
            if isinstance(t, torch.Tensor):
                out[f"{name}.{pname}"] = t.detach().clone()
    return out


@torch.no_grad()
def restore(block: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for key, t in saved.items():
        name, pname = key.rsplit(".", 1)
        getattr(block.get_submodule(name), pname).copy_(t)
