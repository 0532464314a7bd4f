"""A native decode runtime for reloaded Llama-family models, and their quantized output head.

``NativeDecoder(model)`` runs a model that :func:`awqkit.model.load_quantized` built (or any
Llama-family transformers model: float layers run as float) without torch between the
layers: per token, one native call (``_core.LlamaDecoder``) runs every layer's norms, INT4
linears, rotary embedding, KV cache and attention; Python only looks up the embedding and
calls the output head. q/k/v and gate/up each become one fused INT4 call where their
shapes allow (the bits of every output are unchanged: each output channel is computed alone).

Which architectures it runs is a table, :data:`DECODER_ARCHITECTURES` (model_type ->
:class:`DecoderArchitecture`); anything outside it is refused with the reason, before any
work. The rotary tables are computed by the model's own rotary module, so every RoPE
variant and scaling a family's config selects is the model's.

The output head (:func:`quantize_head`): ``"int8"`` (default) per output channel,
symmetric, float16 scale, run through the same INT4 kernel as two 4-bit digits of each code
(``q + 128 = 16 * hi + lo``: the layer's inputs are [x, x], group one holds ``hi`` with
scale ``16 * s`` and zero 8, group two ``lo`` with scale ``s`` and zero 0, so the product
is exactly ``s * (q . x)`` with the kernel's integer dot products); ``"int4"``: 4-bit
groups of 32 (round to nearest); ``"float"``: the model's own head. The input embedding is
never touched (a tied head is quantized from a copy). Its accuracy is measured in
benchmarks/README.md ("Decode runtime").

Results: the linears return the same bits as the transformers path (same kernels, same
inputs); norms, rotary embedding, softmax and SiLU follow transformers' float32 operations
(the AVX-512 engine sums in another order and its exp is within a few ulp), so logits agree
to float32 rounding and greedy tokens agree with ``model.generate`` (tests/test_model_decode_runtime.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _core
from ..kernels import PackedLinear, _aligned_empty, _read_only
from ..packing import pack_awq
from ..quantizer import QuantizedTensor, quantize
from .qlinear import AWQLinear, QuantizedLinear

__all__ = [
    "DECODER_ARCHITECTURES",
    "DecoderArchitecture",
    "HEAD_KINDS",
    "NativeDecoder",
    "QuantizedHead",
    "quantize_head",
    "quantize_output_head",
    "register_decoder_architecture",
]

_TAIL = 64  # zero bytes after a packed buffer's last block (csrc/int4_linear/packed_layout.h)
# How prompts (calls of at least 16 tokens) feed the INT4 linears (csrc/runtime/llama_decoder.h).
PREFILL_MODES = {"exact": 0, "int8": 1, "int16": 2, "auto": 3}


# ---------------------------------------------------------------------------------------------
# The output head


def _int8_head(weight: np.ndarray) -> tuple[PackedLinear, bool]:
    """Per-channel int8 as two 4-bit digits of one INT4 layer over [x, x] (see the module docstring)."""
    v, h = weight.shape
    absmax = np.abs(weight).max(axis=1)
    scale = (absmax / 127.0).astype(np.float16)
    scale[scale == 0] = np.float16(1.0)  # an all-zero row: codes 0 whatever the scale
    q = np.clip(np.rint(weight / scale.astype(np.float32)[:, None]), -127, 127).astype(np.int16) + 128
    hi, lo = (q >> 4).astype(np.uint8), (q & 15).astype(np.uint8)
    codes = np.concatenate([hi, lo], axis=1)  # [V, 2H]: group 0 = hi, group 1 = lo
    scales = np.stack([scale.astype(np.float32) * 16.0, scale.astype(np.float32)], axis=1).astype(np.float16)
    zeros = np.stack([np.full(v, 8, np.uint8), np.zeros(v, np.uint8)], axis=1)
    qt = QuantizedTensor(codes=codes, scales=scales, zeros=zeros, bits=4, group_size=h, zero_point=True)
    t = pack_awq(qt)
    return PackedLinear.from_awq(t["qweight"], t["qzeros"], t["scales"], h), True


def _int4_head(weight: np.ndarray, group_size: int = 32) -> tuple[PackedLinear, bool]:
    h = weight.shape[1]
    gs = next((g for g in (group_size, 64, 128) if h % g == 0), h)
    qt = quantize(weight, bits=4, group_size=gs, zero_point=True)
    t = pack_awq(qt)
    return PackedLinear.from_awq(t["qweight"], t["qzeros"], t["scales"], gs), False


HEAD_KINDS: dict[str, Callable[[np.ndarray], tuple[PackedLinear, bool]] | None] = {
    "int8": _int8_head,
    "int4": _int4_head,
    "float": None,  # the model's own head
}


class QuantizedHead(nn.Module):
    """An output head on the INT4 kernel: ``logits = x @ W_q.T`` (float32 activations).

    ``doubled``: the int8 head's layer takes [x, x] (its two 4-bit digits)."""

    def __init__(self, lin: PackedLinear, doubled: bool, kind: str):
        super().__init__()
        self.lin, self.doubled, self.kind = lin, doubled, kind
        self.in_features = lin.in_features // 2 if doubled else lin.in_features
        self.out_features = lin.out_features

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x float32 [M, H] (C-contiguous) -> logits float32 [M, V]."""
        return self.lin(np.concatenate([x, x], axis=1) if self.doubled else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.detach().reshape(-1, self.in_features).to(torch.float32).contiguous().numpy()
        y = torch.from_numpy(self.logits(x2))
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"


def quantize_head(weight: torch.Tensor | np.ndarray, kind: str = "int8") -> QuantizedHead:
    """A :class:`QuantizedHead` of an output head's weight [V, H] (``kind`` in :data:`HEAD_KINDS`, not "float")."""
    make = HEAD_KINDS.get(kind)
    if make is None:
        raise ValueError(f"head must be one of {sorted(k for k, f in HEAD_KINDS.items() if f)} to quantize, got {kind!r}")
    w = weight.detach().to(torch.float32).numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, np.float32)
    if w.ndim != 2 or w.shape[0] % 8:
        raise ValueError(f"the head weight must be [V, H] with V a multiple of 8, got {w.shape}")
    lin, doubled = make(np.ascontiguousarray(w))
    return QuantizedHead(lin, doubled, kind)


def quantize_output_head(model: Any, kind: str = "int8") -> Any:
    """Replace ``model``'s output head by a :class:`QuantizedHead` (``kind="float"``: no change).
    A tied input embedding stays as it is. Returns the model."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"head must be one of {sorted(HEAD_KINDS)}, got {kind!r}")
    if kind == "float" or isinstance(model.get_output_embeddings(), QuantizedHead):
        return model
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.bias is not None:
        raise ValueError(f"the output head is a {type(head).__name__}; only a bias-free nn.Linear head is quantized")
    model.set_output_embeddings(quantize_head(head.weight, kind))
    return model


# ---------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class DecoderArchitecture:
    """How a family's transformers modules map onto the native decoder layer."""

    name: str
    model_types: tuple[str, ...]
    layers_path: str = "model.layers"
    final_norm: str = "model.norm"
    rotary: str = "model.rotary_emb"
    q_norm: str | None = None  # per-head RMSNorm before RoPE (Qwen3)
    k_norm: str | None = None


DECODER_ARCHITECTURES: dict[str, DecoderArchitecture] = {}


def register_decoder_architecture(arch: DecoderArchitecture) -> DecoderArchitecture:
    for t in arch.model_types:
        DECODER_ARCHITECTURES[t] = arch
    return arch


register_decoder_architecture(DecoderArchitecture("llama", ("llama", "mistral", "qwen2")))
register_decoder_architecture(DecoderArchitecture("qwen3", ("qwen3",), q_norm="self_attn.q_norm", k_norm="self_attn.k_norm"))


def _architecture_problem(config) -> str | None:
    mt = getattr(config, "model_type", None)
    if mt not in DECODER_ARCHITECTURES:
        return f"model_type {mt!r} has no native decoder (supported: {sorted(DECODER_ARCHITECTURES)})"
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        return f"hidden_act {act!r}: the native decoder's MLP is SiLU(gate) * up"
    return None


def _context_limit(config, context: int | None) -> int:
    limit = int(getattr(config, "max_position_embeddings", 4096) or 4096)
    ctx = min(limit, 4096) if context is None else int(context)
    if ctx < 1 or ctx > limit:
        raise ValueError(f"context must be in [1, {limit}] (max_position_embeddings), got {ctx}")
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or ()
    sliding = "sliding_attention" in types or getattr(config, "use_sliding_window", config.model_type == "mistral")
    if window and sliding and ctx > window:
        if context is not None:
            raise ValueError(f"context {ctx} is beyond the sliding window ({window}); the native decoder attends to every position")
        ctx = int(window)
    return ctx


# ---------------------------------------------------------------------------------------------
# The decoder


def _linear_spec(mod: nn.Module, name: str) -> tuple:
    """(buffer, N, K, group_size, bias) as _core.LlamaDecoder takes a linear (group_size 0: float32 [N, K])."""
    if isinstance(mod, AWQLinear):
        lin = mod.lin
        return (lin.packed, lin.out_features, lin.in_features, lin.group_size, lin.bias)
    if isinstance(mod, (nn.Linear, QuantizedLinear)):
        w = np.ascontiguousarray(mod.weight.detach().to(torch.float32).numpy())
        b = None if mod.bias is None else np.ascontiguousarray(mod.bias.detach().to(torch.float32).numpy())
        return (w, w.shape[0], w.shape[1], 0, b)
    raise ValueError(f"{name} is a {type(mod).__name__}; the native decoder runs AWQLinear, QuantizedLinear and nn.Linear")


def _fusable(specs: Sequence[tuple]) -> bool:
    """Packed parts that share K and group size, every part but the last a whole number of
    16-channel blocks: the packed layout is block after block, so their bytes laid end to end
    are the stacked layer's (each output channel is still computed alone: the same bits)."""
    if len(specs) == 1 or any(s[3] == 0 for s in specs):
        return False
    k, gs = specs[0][2], specs[0][3]
    return all(s[2] == k and s[3] == gs for s in specs) and not any(s[1] % 16 for s in specs[:-1])


class _Arena:
    """Every INT4 call of the decoder in one buffer, in the order a token runs them (q/k/v and
    gate/up fused where :func:`_fusable`). The model's own AWQLinear modules are moved onto
    views of it (same bytes, so the transformers path keeps its results), so the weights
    exist once; their old buffer is freed when nothing else holds it."""

    def __init__(self) -> None:
        # Per stage: the list handed to its caller (filled by build) and its calls' linears.
        self._stages: list[tuple[list[tuple], list[list[tuple[nn.Module, tuple]]]]] = []

    def stage(self, parts: list[tuple[nn.Module, tuple]]) -> list[tuple]:
        """Queue a stage's linears (module, spec); returns its call list, filled by :meth:`build`."""
        calls: list[tuple] = []
        fused = _fusable([spec for _, spec in parts])
        self._stages.append((calls, [parts] if fused else [[part] for part in parts]))
        return calls

    def build(self) -> np.ndarray:
        def body(spec: tuple) -> int:
            return spec[0].size - _TAIL

        def nbytes(group: list[tuple[nn.Module, tuple]]) -> int:  # 64-byte aligned; 0 for a float linear
            return 0 if group[0][1][3] == 0 else -(-(sum(body(sp) for _, sp in group) + _TAIL) // 64) * 64

        groups = [g for _, gs in self._stages for g in gs]
        arena = _aligned_empty(sum(nbytes(g) for g in groups))
        arena[...] = 0
        off = 0
        for calls, gs in self._stages:
            for group in gs:
                specs = [sp for _, sp in group]
                if specs[0][3] == 0:  # a float linear: as it is
                    calls.append(specs[0])
                    continue
                pos = off
                for mod, sp in group:
                    n = body(sp)
                    arena[pos : pos + n] = sp[0][:n]
                    if isinstance(mod, AWQLinear):
                        mod.lin._set_packed(arena[pos : pos + n + _TAIL])
                    pos += n
                bias = None
                if any(sp[4] is not None for sp in specs):
                    bias = np.concatenate([sp[4] if sp[4] is not None else np.zeros(sp[1], np.float32)
                                           for sp in specs]).astype(np.float32)
                calls.append((_read_only(arena[off : pos + _TAIL]), sum(sp[1] for sp in specs), specs[0][2], specs[0][3], bias))
                off += nbytes(group)
        arena.flags.writeable = False
        return arena


def _check_prefill(mode: str) -> str:
    if mode not in PREFILL_MODES:
        raise ValueError(f"prefill must be one of {sorted(PREFILL_MODES)}, got {mode!r}")
    return mode


def _norm_weight(mod: Any) -> np.ndarray:
    return np.ascontiguousarray(mod.weight.detach().to(torch.float32).numpy())


class NativeDecoder:
    """Greedy decoding and logits of a Llama-family model on the native runtime.

    ``head``: ``"int8"`` (default), ``"int4"`` or ``"float"`` (see :func:`quantize_head`);
    a model whose head is already a :class:`QuantizedHead` keeps it. ``context``: positions
    the KV cache holds (default: the model's maximum, at most 4096).

    ``prefill``: how calls of 16 tokens or more (prompts) feed the INT4 linears.
    ``"exact"``: as decode (the exact digits product, float32-level); ``"int16"``: 16-bit
    activations per row and group (``PackedLinear(x, activation="int16")``, error within
    absmax(group) * 2^-15 per input); ``"int8"``: 8-bit, as llama.cpp's q8_0 activations;
    ``"auto"`` (default): ``"int16"`` where the exact product has no AMX tiles (AVX-512
    VNNI only, where it is 1.27-1.43x faster end to end), else ``"exact"``. Decode steps are always exact.
    Measured speed and perplexity of each: benchmarks/README.md ("Decode runtime").

    The model's INT4 layers are moved into the decoder's one buffer (the same bytes, laid out
    in call order with q/k/v and gate/up fused), which they then share with it, so the weights
    are held once and the transformers path still returns the same results; norms, embedding and
    float layers are read in place. Do not change the model's weights while using the decoder.
    """

    def __init__(self, model: Any, *, head: str = "int8", context: int | None = None, prefill: str = "auto"):
        config = model.config
        problem = _architecture_problem(config)
        if problem:
            raise ValueError(problem)
        arch = DECODER_ARCHITECTURES[config.model_type]
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {sorted(HEAD_KINDS)}, got {head!r}")
        _check_prefill(prefill)  # before any work
        self.config = config
        self.context = _context_limit(config, context)
        layers = model.get_submodule(arch.layers_path)
        first = layers[0].self_attn
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        hidden, inter = int(config.hidden_size), int(config.intermediate_size)
        eps = float(layers[0].input_layernorm.variance_epsilon)
        scale = float(getattr(first, "scaling", head_dim**-0.5))

        specs: list[dict[str, Any]] = []
        arena = _Arena()
        for i, layer in enumerate(layers):
            def stage(*rels: str, i=i, layer=layer) -> list[tuple]:
                mods = [layer.get_submodule(rel) for rel in rels]
                return arena.stage([(m, _linear_spec(m, f"layer {i} {rel}")) for m, rel in zip(mods, rels)])

            spec = {
                "attn_norm": _norm_weight(layer.input_layernorm),
                "mlp_norm": _norm_weight(layer.post_attention_layernorm),
                "qkv": stage("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "o": stage("self_attn.o_proj"),
                "gate_up": stage("mlp.gate_proj", "mlp.up_proj"),
                "down": stage("mlp.down_proj"),
            }
            if arch.q_norm:
                spec["q_norm"] = _norm_weight(layer.get_submodule(arch.q_norm))
                spec["k_norm"] = _norm_weight(layer.get_submodule(arch.k_norm))
            specs.append(spec)

        # The model's own rotary module computes the tables (its RoPE type and scaling).
        rotary = model.get_submodule(arch.rotary)
        with torch.no_grad():
            pos = torch.arange(self.context, dtype=torch.long)[None]
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)
        self._cos = np.ascontiguousarray(cos[0].to(torch.float32).numpy())
        self._sin = np.ascontiguousarray(sin[0].to(torch.float32).numpy())
        final_norm = _norm_weight(model.get_submodule(arch.final_norm))
        self._arena = arena.build()
        # Every linear call of a token, in order: (buffer, N, K, group_size, bias) as the native side takes them.
        self.linear_calls = [call for spec in specs for stage in ("qkv", "o", "gate_up", "down") for call in spec[stage]]
        self._native = _core.LlamaDecoder(hidden, heads, kv_heads, head_dim, inter, self.context, eps, scale, specs,
                                          final_norm, self._cos, self._sin)
        self.prefill = prefill
        self.embed = np.ascontiguousarray(model.get_input_embeddings().weight.detach().to(torch.float32).numpy())
        out_head = model.get_output_embeddings()
        if isinstance(out_head, QuantizedHead):
            self.head: QuantizedHead | None = out_head
            self._head_weight = None
        elif head == "float":
            self.head = None
            self._head_weight = torch.from_numpy(np.ascontiguousarray(out_head.weight.detach().to(torch.float32).numpy()))
        else:
            self.head = quantize_head(out_head.weight, head)
            self._head_weight = None
        self.hidden = hidden
        self.vocab_size = int(self.embed.shape[0])
        self.last_timing: dict[str, float] = {}

    @property
    def prefill(self) -> str:
        """How prompts feed the INT4 linears (see the class docstring); may be changed between calls."""
        return next(name for name, code in PREFILL_MODES.items() if code == self._native.prefill)

    @prefill.setter
    def prefill(self, mode: str) -> None:
        self._native.prefill = PREFILL_MODES[_check_prefill(mode)]

    @property
    def length(self) -> int:
        """Positions in the KV cache (tokens run so far in this sequence)."""
        return self._native.length

    def reset(self, length: int = 0) -> None:
        """Start a new sequence (or keep the first ``length`` cached positions)."""
        self._native.truncate(length)

    def _logits(self, h: np.ndarray) -> np.ndarray:
        if self.head is not None:
            return self.head.logits(h)
        assert self._head_weight is not None
        return torch.nn.functional.linear(torch.from_numpy(h), self._head_weight).numpy()

    def hidden_states(self, input_ids, rows: int = 1) -> np.ndarray:
        """Run ``input_ids`` (appended to the cached sequence); the final-normed hidden states
        of the last ``rows`` tokens, float32 [rows, hidden]."""
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("input_ids is empty")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        x = self.embed[ids]
        out = np.empty((rows, self.hidden), dtype=np.float32)
        self._native.forward(x, out)
        return out

    def forward(self, input_ids, *, all_logits: bool = False) -> np.ndarray:
        """Logits float32 of the last token ([1, V]) or of every token given ([M, V])."""
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        return self._logits(self.hidden_states(ids, rows=ids.size if all_logits else 1))

    def generate(self, input_ids, max_new_tokens: int, eos_token_id: int | Sequence[int] | None = None) -> list[int]:
        """Greedy decoding from a fresh cache: the prompt's tokens followed by up to
        ``max_new_tokens`` new ones (stopping after an end token), as ``model.generate(do_sample=False)``."""
        ids = [int(t) for t in np.asarray(input_ids, dtype=np.int64).reshape(-1)]
        if len(ids) + max_new_tokens > self.context:
            raise ValueError(f"{len(ids)} prompt tokens + {max_new_tokens} new ones exceed the context ({self.context})")
        if eos_token_id is None:
            stops: set[int] = set()
        elif isinstance(eos_token_id, (int, np.integer)):
            stops = {int(eos_token_id)}
        else:
            stops = {int(t) for t in eos_token_id}
        self.reset()
        out = list(ids)
        start = time.perf_counter()
        logits = self.forward(ids)
        prompt_done = time.perf_counter()
        for step in range(max_new_tokens):
            token = int(np.argmax(logits[0]))
            out.append(token)
            if token in stops or step == max_new_tokens - 1:
                break
            logits = self.forward([token])
        end = time.perf_counter()
        # Seconds of the last generate(): the prompt's forward, and the decode steps after it.
        self.last_timing = {"prompt_tokens": len(ids), "prompt_s": prompt_done - start,
                            "decode_steps": len(out) - len(ids) - 1, "decode_s": end - prompt_done}
        return out
