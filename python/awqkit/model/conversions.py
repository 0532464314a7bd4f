"""Structural conversions that make every weight the pipeline quantizes an ``nn.Linear``,
computing exactly what the original modules compute:

- transformers ``Conv1D`` (GPT-2; weight [in, out], ``x @ W + b``) -> ``nn.Linear`` with the
  transposed weight;
- fused 3-D experts (transformers 5 MoE: ``gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I])
  -> ``UnfusedExperts``: one ``nn.Linear`` per expert and projection, named as the family's
  per-expert checkpoints name them (``experts.{e}.w1`` for Mixtral, ``gate_proj`` for Qwen).

The pipeline applies them before quantizing and ``load_quantized`` before loading, so the
checkpoint's tensor names are the converted modules'.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .families import BlockLayout, MoEExperts

# Module attributes (weight, gate_up_proj, act_fn) type as Tensor | Module to mypy: the
# conversions read them as the tensors and callables these transformers modules hold.

__all__ = ["UnfusedExperts", "convert_blocks", "linear_from_conv1d"]


@torch.no_grad()
def linear_from_conv1d(conv: Any) -> nn.Linear:
    k, n = conv.weight.shape
    lin = nn.Linear(k, n, bias=conv.bias is not None, dtype=conv.weight.dtype, device=conv.weight.device)
    lin.weight.copy_(conv.weight.t())
    if conv.bias is not None:
        lin.bias.copy_(conv.bias)
    return lin


class _Expert(nn.Module):
    def __init__(self, names: MoEExperts, hidden: int, inter: int, dtype, device):
        super().__init__()
        self._names = (names.gate, names.up, names.down)
        for name, (o, i) in zip(self._names, ((inter, hidden), (inter, hidden), (hidden, inter))):
            setattr(self, name, nn.Linear(i, o, bias=False, dtype=dtype, device=device))


class UnfusedExperts(nn.ModuleList):
    """The fused experts' forward (same signature, same routing arithmetic) over per-expert
    linears: ``act(gate(x)) * up(x) -> down``, weighted by the router and summed per token."""

    def __init__(self, fused: Any, names: MoEExperts):
        gu, down = fused.gate_up_proj, fused.down_proj
        n_exp, two_inter, hidden = gu.shape
        inter = two_inter // 2
        if down.shape != (n_exp, hidden, inter):
            raise ValueError(f"{type(fused).__name__}: down_proj {tuple(down.shape)} does not match gate_up_proj "
                             f"{tuple(gu.shape)} ([E, 2I, H] and [E, H, I] expected)")
        super().__init__([_Expert(names, hidden, inter, gu.dtype, gu.device) for _ in range(n_exp)])
        self.num_experts = n_exp
        # Not a registered child: the list's children are the experts, named 0 .. E-1 as the
        # per-expert checkpoints name them (the activation has no parameters).
        object.__setattr__(self, "act_fn", fused.act_fn)
        self._names = (names.gate, names.up, names.down)
        self.act_fn: Any
        with torch.no_grad():
            for e in range(n_exp):
                gate, up, dn = (getattr(self[e], n) for n in self._names)
                gate.weight.copy_(gu[e, :inter])
                up.weight.copy_(gu[e, inter:])
                dn.weight.copy_(down[e])

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        gate_n, up_n, down_n = self._names
        for e in range(self.num_experts):
            top_k_pos, token_idx = torch.where((top_k_index == e).t())  # the fused loop's order
            if token_idx.numel() == 0:
                continue
            ex: Any = self[e]
            x = hidden_states[token_idx]
            h = self.act_fn(getattr(ex, gate_n)(x)) * getattr(ex, up_n)(x)
            h = getattr(ex, down_n)(h) * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, h.to(out.dtype))
        return out


def _set(root: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def convert_blocks(blocks: nn.ModuleList, layout: BlockLayout) -> None:
    """Apply the family's conversions to every block, in place (idempotent)."""
    from transformers.pytorch_utils import Conv1D

    for block in blocks:
        if layout.conv1d:
            for name, mod in list(block.named_modules()):
                if isinstance(mod, Conv1D):
                    _set(block, name, linear_from_conv1d(mod))
        if layout.moe is not None:
            fused = block.get_submodule(layout.moe.path)
            if not isinstance(fused, UnfusedExperts):
                if not hasattr(fused, "gate_up_proj"):
                    raise ValueError(f"{layout.moe.path} is a {type(fused).__name__} without fused gate_up_proj / "
                                     "down_proj parameters: this transformers version lays out the experts differently")
                _set(block, layout.moe.path, UnfusedExperts(fused, layout.moe))
