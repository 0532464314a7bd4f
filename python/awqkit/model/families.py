"""Model families as data: one registry entry per architecture says where the decoder blocks
are, which activation scales which linears (the AWQ mappings), how each previous op takes the
scales (the fold kind), what is never clipped or never quantized, and which structural
conversions the blocks need (Conv1D, fused 3-D experts).

A mapping (names relative to one decoder block):

- ``prev_op``: the module whose output is the shared input; the scales are divided into it.
  ``prev_kind`` says how: ``"norm"`` (the family's norm kind: ``"scale"`` divides weight and
  bias, ``"offset_one"`` is Gemma's ``x * (1 + w)``: ``w <- (1 + w) / s - 1``) or ``"linear"``
  (output rows and bias; ``prev_rows`` picks the rows of a fused projection: ``"qkv:v"`` the v
  slice of ``[q | k | v]``, ``"chunk:1/2"`` the second half of ``[gate | up]``). A linear is
  a previous op only where the op between it and ``layers`` is linear in its output (attention
  in v; ``act(gate) * up`` in up; ReLU, which is positively homogeneous), never across GELU.
- ``layers``: the linears that read that input (their input columns take the scales; they are
  quantized). ``also_scaled``: modules that read it too and stay in full precision (MoE
  routers): their input columns take the scales, their error is not searched.
- ``inp``: the module whose input is captured (default ``layers[0]``); ``module2inspect``: what
  ``inspect="module"`` runs per candidate.
- ``gqa``: the v -> o mapping under grouped-query attention: scales tied per KV head, with the
  head counts read from the model config (never inferred from a width mismatch).
- ``"{e}"`` in a name: one copy per expert (MoE), ``e`` in ``range(num_experts)``.

Adding a family: one ``register_family(ModelFamily(...))`` below plus its test in
``tests/test_model_families.py``. A model without a family gets an error that shows how to
pass mappings (``AWQConfig(mappings=[...], layers_path=...)``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FAMILIES",
    "BlockLayout",
    "Mapping",
    "MoEExperts",
    "ModelFamily",
    "attention_shape",
    "family_for",
    "layout_for",
    "register_family",
]

_NORM_KINDS = ("scale", "offset_one")


@dataclass(frozen=True)
class MoEExperts:
    """Fused 3-D experts (transformers 5: ``gate_up_proj`` [E, 2I, H], ``down_proj`` [E, H, I])
    that the pipeline turns into one ``nn.Linear`` per expert and projection, named
    ``{path}.{e}.{gate|up|down}`` as the family's per-expert checkpoints name them."""

    path: str  # relative to the block, e.g. "mlp.experts"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    num_experts_attr: tuple[str, ...] = ("num_local_experts", "num_experts")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    layers_path: str
    mappings: tuple[dict, ...]
    norm: str = "scale"  # how a "norm" prev_op takes the scales (see the module docstring)
    no_clip: tuple[str, ...] = ("q_proj", "k_proj")  # leaf names AutoAWQ never clips (softmax amplifies)
    keep_fp: tuple[str, ...] = ()  # block-relative names never quantized (routers)
    moe: MoEExperts | None = None
    conv1d: bool = False  # transformers Conv1D (weight [in, out]) becomes nn.Linear first
    # Picks the mapping list from the model config where a family has variants (Falcon).
    select: Callable[[object], tuple[dict, ...]] | None = None

    def mappings_for(self, config) -> tuple[dict, ...]:
        return self.select(config) if self.select is not None else self.mappings


FAMILIES: dict[str, ModelFamily] = {}  # model_type -> family


def register_family(family: ModelFamily) -> ModelFamily:
    """Add (or replace) a family for each of its ``model_types``."""
    if family.norm not in _NORM_KINDS:
        raise ValueError(f"norm must be one of {_NORM_KINDS}, got {family.norm!r}")
    for t in family.model_types:
        FAMILIES[t] = family
    return family


def family_for(model_type: str | None) -> ModelFamily | None:
    return FAMILIES.get(model_type) if model_type is not None else None


def attention_shape(config) -> tuple[int | None, int | None, int | None]:
    """(query heads, KV heads, head_dim) from a transformers config, by the names the
    supported families use; None where the config does not say."""
    heads = _first_attr(config, ("num_attention_heads", "n_head", "num_heads"))
    kv = _first_attr(config, ("num_key_value_heads", "num_kv_heads", "n_head_kv"))
    if kv is None and heads is not None:
        multi_query = getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False)
        kv = 1 if multi_query else heads
    head_dim = _first_attr(config, ("head_dim",))
    hidden = _first_attr(config, ("hidden_size", "n_embd"))
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    return heads, kv, head_dim


def _first_attr(config, names):
    for n in names:
        v = getattr(config, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


# --- the layout one run uses -----------------------------------------------------------------

@dataclass(frozen=True)
class Mapping:
    prev_op: str
    layers: tuple[str, ...]
    inp: str
    module2inspect: str
    prev_kind: str | None = "norm"  # "norm" | "linear" | None: by the prev_op's type (user mappings)
    prev_rows: str | None = None  # "qkv:v" | "chunk:i/n" | None (every row)
    gqa: bool = False
    also_scaled: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.prev_op}->{'+'.join(n.rsplit('.', 1)[-1] for n in self.layers[:4])}" + (
            f"+{len(self.layers) - 4} more" if len(self.layers) > 4 else "")


@dataclass(frozen=True)
class BlockLayout:
    """What one run uses: the family (None for user mappings on an unknown model type), the
    block path, the mappings expanded for this config, and the config-derived shapes."""

    family: ModelFamily | None
    layers_path: str
    mappings: tuple[Mapping, ...]
    norm: str
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    num_experts: int = 0
    no_clip: tuple[str, ...] = ("q_proj", "k_proj")
    keep_fp: tuple[str, ...] = ()
    moe: MoEExperts | None = None
    conv1d: bool = False

    def never_clipped(self, rel: str) -> bool:
        leaf = rel.rsplit(".", 1)[-1]
        return leaf in self.no_clip

    def kept_fp(self, rel: str) -> bool:
        return any(rel == k or rel.endswith("." + k) for k in self.keep_fp)


def _per_expert(m: dict, e: int) -> dict:
    return {k: v.format(e=e) if isinstance(v, str) else [x.format(e=e) for x in v] if isinstance(v, (list, tuple)) else v
            for k, v in m.items()}


def _over_experts(m: dict, num_experts: int) -> dict:
    """``{e}`` entries of ``layers`` / ``also_scaled`` become one entry per expert."""
    out = dict(m)
    for key in ("layers", "also_scaled"):
        names: list[str] = []
        for name in m.get(key, ()):
            names.extend([name.format(e=e) for e in range(num_experts)] if "{e}" in name else [name])
        out[key] = names
    return out


def _expand(m: dict, num_experts: int) -> list[dict]:
    """A mapping whose prev_op names an expert is one mapping per expert; any other mapping
    spans every expert its layers name."""
    if "{e}" in m["prev_op"]:
        return [_per_expert(m, e) for e in range(num_experts)]
    return [_over_experts(m, num_experts)]


def _normalize(m: dict) -> Mapping:
    unknown = set(m) - {"prev_op", "layers", "inp", "module2inspect", "prev_kind", "prev_rows", "gqa", "also_scaled"}
    if unknown:
        raise ValueError(f"unknown mapping keys {sorted(unknown)} in {m}")
    layers = tuple(m["layers"])
    if not layers:
        raise ValueError(f"mapping {m} has no layers")
    inp = m.get("inp") or layers[0]
    if m.get("module2inspect"):
        inspect = m["module2inspect"]
    elif len(layers) == 1:
        inspect = layers[0]
    else:
        inspect = inp.rsplit(".", 1)[0] if "." in inp else inp
    kind = m.get("prev_kind")  # None (user mappings): a Linear prev_op is "linear", anything else "norm"
    if kind not in (None, "norm", "linear"):
        raise ValueError(f"prev_kind must be 'norm' or 'linear', got {kind!r} in {m}")
    rows = m.get("prev_rows")
    if rows is not None and not re.fullmatch(r"qkv:v|chunk:\d+/\d+", rows):
        raise ValueError(f"prev_rows must be 'qkv:v' or 'chunk:i/n', got {rows!r}")
    return Mapping(prev_op=m["prev_op"], layers=layers, inp=inp, module2inspect=inspect, prev_kind=kind,
                   prev_rows=rows, gqa=bool(m.get("gqa", False)), also_scaled=tuple(m.get("also_scaled", ())))


def _how_to_write_one(model_type) -> str:
    return (
        f"no built-in AWQ family for model_type {model_type!r} (families: {', '.join(sorted(FAMILIES))}); "
        "pass AWQConfig(layers_path='model.layers', mappings=[{'prev_op': 'input_layernorm', "
        "'layers': ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], 'module2inspect': 'self_attn'}, "
        "{'prev_op': 'self_attn.v_proj', 'prev_kind': 'linear', 'layers': ['self_attn.o_proj'], 'gqa': True}, ...]) "
        "or register one with awqkit.model.families.register_family (see that module's docstring); every fold is "
        "verified on the block's output, so a wrong mapping is an error, not a broken model"
    )


def layout_for(model_config, mappings: list[dict] | None = None, layers_path: str | None = None) -> BlockLayout:
    """The layout of one run: the user's mappings if given, else the family of the config's
    ``model_type``; a clear error for a model type with neither."""
    model_type = getattr(model_config, "model_type", None)
    family = family_for(model_type)
    if mappings is None:
        if family is None:
            raise ValueError(_how_to_write_one(model_type))
        raw = copy.deepcopy(list(family.mappings_for(model_config)))
    else:
        raw = copy.deepcopy(list(mappings))
    path = layers_path or (family.layers_path if family else None)
    if path is None:
        raise ValueError("custom mappings need AWQConfig.layers_path (the dotted path of the decoder-block list)")
    heads, kv, head_dim = attention_shape(model_config)
    n_exp = 0
    if family is not None and family.moe is not None:
        n_exp = _first_attr(model_config, family.moe.num_experts_attr) or 0
    expanded = tuple(_normalize(one) for m in raw for one in _expand(m, n_exp))
    if family is None:
        return BlockLayout(None, path, expanded, "scale", heads, kv, head_dim)
    return BlockLayout(family, path, expanded, family.norm, heads, kv, head_dim, n_exp,
                       family.no_clip, family.keep_fp, family.moe, family.conv1d)


# --- the registry ----------------------------------------------------------------------------

def _attn(norm: str, q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
          inspect="self_attn") -> list[dict]:
    return [
        {"prev_op": norm, "layers": [q, k, v], "inp": q, "module2inspect": inspect},
        # attention is linear in v, per head: v's output rows can carry o's input scales
        {"prev_op": v, "prev_kind": "linear", "layers": [o], "gqa": True},
    ]


def _swiglu(norm: str, gate="mlp.gate_proj", up="mlp.up_proj", down="mlp.down_proj", inspect="mlp") -> list[dict]:
    return [
        {"prev_op": norm, "layers": [gate, up], "inp": gate, "module2inspect": inspect},
        # act(gate) * up is linear in up
        {"prev_op": up, "prev_kind": "linear", "layers": [down]},
    ]


_LLAMA_LIKE = tuple(_attn("input_layernorm") + _swiglu("post_attention_layernorm"))

# Llama, Mistral, Qwen2 and Qwen3 share the block layout (Qwen2's q/k/v biases and Qwen3's
# q/k norms sit after the scaled input columns, so the same folding is exact).
register_family(ModelFamily("llama", ("llama", "mistral", "qwen2", "qwen3"), "model.layers", _LLAMA_LIKE))

# Gemma's RMSNorm computes normed(x) * (1 + w). Gemma 2 and 3 put a norm before and after each
# sub-block: the MLP reads pre_feedforward_layernorm (post_* norm the sub-block outputs).
register_family(ModelFamily("gemma", ("gemma",), "model.layers", _LLAMA_LIKE, norm="offset_one"))
register_family(ModelFamily("gemma2", ("gemma2", "gemma3", "gemma3_text"), "model.layers",
                            tuple(_attn("input_layernorm") + _swiglu("pre_feedforward_layernorm")), norm="offset_one"))

# Phi-3: fused qkv_proj [q | k | v] and gate_up_proj [gate | up].
register_family(ModelFamily("phi3", ("phi3",), "model.layers", (
    {"prev_op": "input_layernorm", "layers": ["self_attn.qkv_proj"], "module2inspect": "self_attn"},
    {"prev_op": "self_attn.qkv_proj", "prev_kind": "linear", "prev_rows": "qkv:v", "layers": ["self_attn.o_proj"],
     "gqa": True},
    {"prev_op": "post_attention_layernorm", "layers": ["mlp.gate_up_proj"], "module2inspect": "mlp"},
    {"prev_op": "mlp.gate_up_proj", "prev_kind": "linear", "prev_rows": "chunk:1/2", "layers": ["mlp.down_proj"]},
), no_clip=("qkv_proj",)))


def _moe_family(name, model_types, experts: MoEExperts, router="mlp.gate", shared: bool = False) -> ModelFamily:
    e = experts.path + ".{e}."
    layers = [e + experts.gate, e + experts.up]
    also = [router]
    extra: list[dict] = []
    if shared:  # Qwen2-MoE: a shared expert and its sigmoid gate read the same norm output
        layers += ["mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"]
        also.append("mlp.shared_expert_gate")
        extra.append({"prev_op": "mlp.shared_expert.up_proj", "prev_kind": "linear",
                      "layers": ["mlp.shared_expert.down_proj"]})
    mappings = tuple(_attn("input_layernorm") + [
        # every module that reads the scaled norm: the experts' gate/up (quantized) and the
        # router(s) (full precision, scaled so that routing is unchanged)
        # (the activation is the MoE block's input: every token, not one expert's share)
        {"prev_op": "post_attention_layernorm", "layers": layers, "also_scaled": also, "inp": "mlp",
         "module2inspect": "mlp"},
        {"prev_op": e + experts.up, "prev_kind": "linear", "layers": [e + experts.down]},
    ] + extra)
    keep = (router,) + (("mlp.shared_expert_gate",) if shared else ())
    return ModelFamily(name, model_types, "model.layers", mappings, keep_fp=keep, moe=experts)


register_family(_moe_family("mixtral", ("mixtral",), MoEExperts("mlp.experts", gate="w1", up="w3", down="w2")))
register_family(_moe_family("qwen2_moe", ("qwen2_moe",), MoEExperts("mlp.experts"), shared=True))
register_family(_moe_family("qwen3_moe", ("qwen3_moe",), MoEExperts("mlp.experts")))

# OPT: LayerNorm with bias; ReLU(x / s) = ReLU(x) / s for s > 0, so fc1 can carry fc2's scales.
register_family(ModelFamily("opt", ("opt",), "model.decoder.layers", tuple(
    _attn("self_attn_layer_norm", o="self_attn.out_proj") + [
        {"prev_op": "final_layer_norm", "layers": ["fc1"]},
        {"prev_op": "fc1", "prev_kind": "linear", "layers": ["fc2"]},
    ])))

# GPT-NeoX: the fused query_key_value interleaves q, k, v per head and the MLP is GELU, so only
# the norms take scales.
register_family(ModelFamily("gpt_neox", ("gpt_neox",), "gpt_neox.layers", (
    {"prev_op": "input_layernorm", "layers": ["attention.query_key_value"], "module2inspect": "attention"},
    {"prev_op": "post_attention_layernorm", "layers": ["mlp.dense_h_to_4h"], "module2inspect": "mlp"},
), no_clip=("query_key_value",)))


def _falcon_mappings(config) -> tuple[dict, ...]:
    qkv, fc1 = "self_attention.query_key_value", "mlp.dense_h_to_4h"
    if getattr(config, "new_decoder_architecture", False) and getattr(config, "num_ln_in_parallel_attn", 2) == 2:
        return ({"prev_op": "ln_attn", "layers": [qkv], "module2inspect": "self_attention"},
                {"prev_op": "ln_mlp", "layers": [fc1], "module2inspect": "mlp"})
    if getattr(config, "new_decoder_architecture", False) or getattr(config, "parallel_attn", True):
        # one norm feeds attention and MLP in parallel
        return ({"prev_op": "input_layernorm", "layers": [qkv, fc1]},)
    return ({"prev_op": "input_layernorm", "layers": [qkv], "module2inspect": "self_attention"},
            {"prev_op": "post_attention_layernorm", "layers": [fc1], "module2inspect": "mlp"})


# Falcon: GELU MLP, fused (multi-query) qkv: only the norms take scales.
register_family(ModelFamily("falcon", ("falcon",), "transformer.h", (), no_clip=("query_key_value",),
                            select=_falcon_mappings))

# GPT-2: Conv1D layers (turned into nn.Linear), c_attn = [q | k | v] (no GQA), GELU MLP.
register_family(ModelFamily("gpt2", ("gpt2",), "transformer.h", (
    {"prev_op": "ln_1", "layers": ["attn.c_attn"], "module2inspect": "attn"},
    {"prev_op": "attn.c_attn", "prev_kind": "linear", "prev_rows": "qkv:v", "layers": ["attn.c_proj"], "gqa": True},
    {"prev_op": "ln_2", "layers": ["mlp.c_fc"], "module2inspect": "mlp"},
), no_clip=("c_attn",), conv1d=True))
