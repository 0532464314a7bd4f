"""Capturing activations: the first decoder block's inputs, and every linear's input
(plus the arguments of the modules inspected per candidate) while a block runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["BlockCapture", "BlockInputs", "capture_block", "capture_first_block_inputs", "get_submodule", "run_block", "set_submodule"]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root``'s submodule at a dotted path (``"layers.3.self_attn"``; ``""`` is root)."""
    return root.get_submodule(path)


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path."""
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent), leaf, new)


class _Stop(Exception):
    pass


@dataclass
class BlockInputs:
    """The first block's inputs per calibration chunk: hidden states and the keyword
    arguments the model passes to every block (masks, rotary embeddings, ...)."""

    hidden: list[torch.Tensor]
    kwargs: list[dict]


@torch.no_grad()
def capture_first_block_inputs(model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor, chunk: int) -> BlockInputs:
    hidden, kwargs_list = [], []

    def pre_hook(module, args, kwargs):
        kw = dict(kwargs)
        h = args[0] if args else kw.pop("hidden_states")
        if len(args) > 1:
            raise RuntimeError("decoder block called with several positional arguments; cannot replay it")
        kw.pop("past_key_values", None)
        kw.pop("past_key_value", None)
        kw["use_cache"] = False
        hidden.append(h.detach())
        kwargs_list.append(kw)
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        for i in range(0, tokens.shape[0], chunk):
            try:
                model(input_ids=tokens[i : i + chunk], use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return BlockInputs(hidden, kwargs_list)


def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    return [_block_output(block(h, **kw)) for h, kw in zip(inputs.hidden, inputs.kwargs)]


@dataclass
class BlockCapture:
    """Inputs of every linear of a block ([tokens, K] float32, shared tensors stay shared:
    q/k/v read one tensor) and the call arguments of inspected modules per chunk."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    module_calls: dict[str, list[tuple[tuple, dict]]] = field(default_factory=dict)


@torch.no_grad()
def capture_block(block: nn.Module, inputs: BlockInputs, linear_names: list[str], inspect_names: list[str]) -> tuple[BlockCapture, list[torch.Tensor]]:
    """Run ``block`` on every chunk with hooks; returns the capture and the block outputs."""
    per_name: dict[str, list[torch.Tensor]] = {n: [] for n in linear_names}
    calls: dict[str, list] = {n: [] for n in inspect_names}
    handles = []
    for name in linear_names:
        def hook(mod, args, out, name=name):
            per_name[name].append(args[0])
        handles.append(get_submodule(block, name).register_forward_hook(hook))
    for name in inspect_names:
        def pre(mod, args, kwargs, name=name):
            calls[name].append((args, dict(kwargs)))
        handles.append(get_submodule(block, name).register_forward_pre_hook(pre, with_kwargs=True))
    try:
        outs = run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    cap = BlockCapture(module_calls=calls)
    # Linears fed the very same tensor objects share one concatenated copy, so a scale
    # division applied to it is seen by all of them (and memory holds it once).
    by_ids: dict[tuple, torch.Tensor] = {}
    for name, parts in per_name.items():
        if not parts:
            continue
        key = tuple(id(p) for p in parts)
        if key not in by_ids:
            k = parts[0].shape[-1]
            by_ids[key] = torch.cat([p.reshape(-1, k) for p in parts]).to(torch.float32).contiguous()
        cap.inputs[name] = by_ids[key]
    return cap, outs
