"""Capturing activations: what the model passes to every decoder block (the first block's
hidden states, and each block's own arguments: attention mask, position embeddings, layer
type), and every linear's input (plus the arguments of the modules inspected per candidate)
while a block runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .captured_input import CapturedInput, gather_input_layout
from .distributed import SingleProcess

__all__ = [
    "BlockCalls",
    "BlockCapture",
    "capture_block",
    "capture_block_calls",
    "get_submodule",
    "run_block",
    "set_submodule",
]


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root``'s submodule at a dotted path (``"layers.3.self_attn"``; ``""`` is root)."""
    return root.get_submodule(path)


def set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path."""
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent), leaf, new)


@dataclass
class BlockCalls:
    """How the model called one decoder block, per calibration chunk: the positional
    arguments after the hidden states and the keyword arguments. Sliding-window and
    full-attention layers get different masks and rotary embeddings, so every block keeps
    its own (the tensors are shared between blocks where the model shares them)."""

    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)


class _StopForward(Exception):
    pass


def _no_cache(v):
    # A KV cache object would grow with every replay: blocks are replayed without one.
    from transformers.cache_utils import Cache

    return None if isinstance(v, Cache) else v


@torch.no_grad()
def capture_block_calls(model: nn.Module, blocks: nn.ModuleList, tokens: torch.Tensor | list[torch.Tensor],
                        chunk: int) -> tuple[list[torch.Tensor], list[BlockCalls]]:
    """One full-precision forward of the calibration tokens (``chunk`` sequences at a time, or
    the given list of batches): the first block's hidden states per chunk, and every block's
    call arguments."""
    first_hidden: list[torch.Tensor] = []
    calls = [BlockCalls() for _ in blocks]
    handles = []
    for i, block in enumerate(blocks):
        def pre_hook(module, args, kwargs, i=i):
            kw = {k: _no_cache(v) for k, v in kwargs.items()}
            if args:
                h, rest = args[0], tuple(_no_cache(a) for a in args[1:])
            else:
                h, rest = kw.pop("hidden_states"), ()
            if "use_cache" in kw:
                kw["use_cache"] = False
            if i == 0:
                first_hidden.append(h.detach())
            calls[i].args.append(rest)
            calls[i].kwargs.append(kw)
            if i == len(blocks) - 1:
                # Nothing after the last block's arguments is needed: skip that block, the final
                # norm and the head (a 262k-token vocabulary costs more than the blocks).
                raise _StopForward
        handles.append(block.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        batches = tokens if isinstance(tokens, list) else [tokens[s : s + chunk] for s in range(0, tokens.shape[0], chunk)]
        for batch in batches:
            try:
                model(input_ids=batch, use_cache=False)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return first_hidden, calls


def _block_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_block(block: nn.Module, hidden: list[torch.Tensor], calls: BlockCalls, chunks: int | None = None) -> list[torch.Tensor]:
    """The block's outputs for the first ``chunks`` chunks (all by default)."""
    n = len(hidden) if chunks is None else min(chunks, len(hidden))
    return [_block_output(block(hidden[c], *calls.args[c], **calls.kwargs[c])) for c in range(n)]


@dataclass
class BlockCapture:
    """Inputs of every linear of a block ([tokens, K] float32, shared tensors stay shared:
    q/k/v read one tensor) and the call arguments of inspected modules per chunk."""

    inputs: dict[str, CapturedInput] = field(default_factory=dict)
    module_calls: dict[str, list[tuple[tuple, dict]]] = field(default_factory=dict)


@torch.no_grad()
def capture_block(block: nn.Module, hidden: list[torch.Tensor], calls: BlockCalls, linear_names: list[str],
                  inspect_names: list[str], on_disk: bool = False, disk_folder: str | None = None,
                  inputs_only: bool = False, group: SingleProcess | None = None,
                  skip_chunks: int = 0) -> tuple[BlockCapture, list[torch.Tensor]]:
    """Run ``block`` on every chunk with hooks; returns the capture and the block outputs.
    ``on_disk``: the linears' inputs go to ``DiskActivations`` files (in ``disk_folder``)
    chunk by chunk instead of memory. ``inputs_only`` (in memory): each chunk's forward stops
    once every linear named has run (GPTQ's re-capture of o_proj's inputs needs no MLP); no
    outputs are returned. ``group``: the ranks of a distributed run (each holds its own
    chunks, ``CapturedInput`` knows where they sit in the whole); the first ``skip_chunks``
    chunks (the check chunk another rank owns) are run but not captured. A collective."""
    group = SingleProcess() if group is None else group
    if on_disk:
        cap, outs = _capture_to_disk(block, hidden, calls, linear_names, inspect_names, disk_folder, skip_chunks, group)
    else:
        cap, outs = _capture_in_memory(block, hidden, calls, linear_names, inspect_names, inputs_only, skip_chunks,
                                       group)
    cap.inputs = gather_input_layout(cap.inputs, group, _empty_store(on_disk, disk_folder))
    return cap, outs


def _empty_store(on_disk: bool, folder: str | None):
    from .disk_activations import DiskActivations

    return (lambda k: DiskActivations(k, folder)) if on_disk else (lambda k: torch.empty((0, k), dtype=torch.float32))


def _capture_in_memory(block, hidden, calls, linear_names, inspect_names, inputs_only, skip_chunks, group):
    per_name: dict[str, list[torch.Tensor]] = {n: [] for n in linear_names}
    mcalls: dict[str, list] = {n: [] for n in inspect_names}
    at = {"chunk": 0}
    handles = []
    for name in linear_names:
        def hook(mod, args, out, name=name):
            if at["chunk"] < skip_chunks:
                return
            per_name[name].append(args[0])
            if inputs_only and all(len(v) == len(per_name[name]) for v in per_name.values()):
                raise _StopForward
        handles.append(get_submodule(block, name).register_forward_hook(hook))
    for name in inspect_names:
        def pre(mod, args, kwargs, name=name):
            if at["chunk"] >= skip_chunks:
                mcalls[name].append((args, dict(kwargs)))
        handles.append(get_submodule(block, name).register_forward_pre_hook(pre, with_kwargs=True))
    outs: list[torch.Tensor] = []
    try:
        for c in range(len(hidden)):
            at["chunk"] = c
            if inputs_only:
                if c < skip_chunks:
                    continue
                try:
                    block(hidden[c], *calls.args[c], **calls.kwargs[c])
                except _StopForward:
                    pass
            else:
                outs.append(_block_output(block(hidden[c], *calls.args[c], **calls.kwargs[c])))
    finally:
        for h in handles:
            h.remove()
    cap = BlockCapture(module_calls=mcalls)
    # Linears fed the very same tensor objects share one concatenated copy, so a scale
    # division applied to it is seen by all of them (and memory holds it once).
    groups: dict[tuple, list[str]] = {}
    for name, parts in per_name.items():
        if parts:
            groups.setdefault(tuple(id(p) for p in parts), []).append(name)
    for names in groups.values():
        parts = per_name[names[0]]
        k = parts[0].shape[-1]
        rows = [p.reshape(-1, k).shape[0] for p in parts]
        joined = torch.cat([p.reshape(-1, k) for p in parts]).to(torch.float32).contiguous()
        x = CapturedInput(joined, rows, k, group)
        for name in names:
            cap.inputs[name] = x
            per_name[name] = []  # the chunks go as soon as their copy exists: one transient copy at a time
        del parts
    return cap, outs


def _capture_to_disk(block: nn.Module, hidden: list[torch.Tensor], calls: BlockCalls, linear_names: list[str],
                     inspect_names: list[str], folder: str | None, skip_chunks: int,
                     group: SingleProcess) -> tuple[BlockCapture, list[torch.Tensor]]:
    from .disk_activations import DiskActivations

    # Linears that read the same tensor object share one file, as they share one tensor in
    # memory. The chunk's tensors are held until the chunk ends, so that an id is never reused.
    group_of: dict[str, str] = {}
    files: dict[str, DiskActivations] = {}
    parts: dict[str, list[int]] = {}
    mcalls: dict[str, list] = {n: [] for n in inspect_names}
    chunk: dict[str, Any] = {"written": {}, "keep": [], "index": 0}

    def record(name: str, x: torch.Tensor) -> None:
        if chunk["index"] < skip_chunks:
            return
        written = chunk["written"]
        if name not in group_of:  # first call (a later chunk for an expert no earlier token reached)
            shared = [g for g, seen in written.items() if seen is x]
            group_of[name] = shared[0] if shared else name
        g = group_of[name]
        if g in written:
            if written[g] is not x:
                raise ValueError(f"{name} and {g} read the same tensor in one calibration chunk and different ones "
                                 "in another: their captured inputs cannot share a file")
            return
        written[g] = x
        chunk["keep"].append(x)
        if g not in files:
            files[g] = DiskActivations(x.shape[-1], folder)
            parts[g] = []
        before = files[g].rows
        files[g].append(x)
        parts[g].append(files[g].rows - before)

    handles = []
    for name in linear_names:
        def hook(mod, args, out, name=name):
            record(name, args[0])
        handles.append(get_submodule(block, name).register_forward_hook(hook))
    for name in inspect_names:
        def pre(mod, args, kwargs, name=name):
            if chunk["index"] >= skip_chunks:
                mcalls[name].append((args, dict(kwargs)))
        handles.append(get_submodule(block, name).register_forward_pre_hook(pre, with_kwargs=True))
    outs = []
    try:
        for c in range(len(hidden)):
            chunk["written"], chunk["keep"], chunk["index"] = {}, [], c
            outs.append(_block_output(block(hidden[c], *calls.args[c], **calls.kwargs[c])))
    finally:
        for h in handles:
            h.remove()
    chunk["keep"] = []
    cap = BlockCapture(module_calls=mcalls)
    captured = {g: CapturedInput(f, parts[g], f.k, group) for g, f in files.items()}
    for name, g in group_of.items():
        cap.inputs[name] = captured[g]
    return cap, outs
