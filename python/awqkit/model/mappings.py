"""Scaling mappings as data: which activation scales which linears, per decoder block.

A mapping is a dict like AMD Quark's ``scaling_layers`` entries (names are relative to one
decoder block):

- ``prev_op``: the module whose output is the shared input (a norm or a linear); the
  scales are divided into it.
- ``layers``: the linears that read that input; the scales are multiplied into their
  input columns.
- ``inp``: the module whose input is captured as the activation (default ``layers[0]``).
- ``module2inspect``: the module run per candidate with ``inspect="module"`` (default:
  the single linear, or ``inp``'s parent for several).

A preset is the mapping list plus ``layers_path``, the dotted path of the decoder-block
list. Users pass their own for other architectures (see ``AWQConfig.mappings``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

__all__ = ["PRESETS", "Mapping", "ModelLayout", "layout_for", "normalize_mappings"]

_LLAMA = {
    "layers_path": "model.layers",
    "mappings": [
        {"prev_op": "input_layernorm", "layers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
         "inp": "self_attn.q_proj", "module2inspect": "self_attn"},
        # Under grouped-query attention v_proj has fewer outputs than o_proj has inputs:
        # the pipeline ties the scales per KV head (see folding.tie_gqa_scales).
        {"prev_op": "self_attn.v_proj", "layers": ["self_attn.o_proj"],
         "inp": "self_attn.o_proj", "module2inspect": "self_attn.o_proj"},
        {"prev_op": "post_attention_layernorm", "layers": ["mlp.gate_proj", "mlp.up_proj"],
         "inp": "mlp.gate_proj", "module2inspect": "mlp"},
        {"prev_op": "mlp.up_proj", "layers": ["mlp.down_proj"],
         "inp": "mlp.down_proj", "module2inspect": "mlp.down_proj"},
    ],
}

# Llama, Mistral, Qwen2 and Qwen3 share the block layout (Qwen2's q/k/v biases and Qwen3's
# q/k norms sit after the scaled input columns, so the same folding is exact).
PRESETS: dict[str, dict] = {name: _LLAMA for name in ("llama", "mistral", "qwen2", "qwen3")}


@dataclass(frozen=True)
class Mapping:
    prev_op: str
    layers: tuple[str, ...]
    inp: str
    module2inspect: str

    @property
    def name(self) -> str:
        return f"{self.prev_op}->{'+'.join(n.rsplit('.', 1)[-1] for n in self.layers)}"


@dataclass(frozen=True)
class ModelLayout:
    layers_path: str
    mappings: tuple[Mapping, ...]


def normalize_mappings(mappings: list[dict]) -> tuple[Mapping, ...]:
    out = []
    for m in mappings:
        layers = tuple(m["layers"])
        inp = m.get("inp") or layers[0]
        if m.get("module2inspect"):
            inspect = m["module2inspect"]
        elif len(layers) == 1:
            inspect = layers[0]
        else:
            inspect = inp.rsplit(".", 1)[0] if "." in inp else inp
        out.append(Mapping(prev_op=m["prev_op"], layers=layers, inp=inp, module2inspect=inspect))
    return tuple(out)


def layout_for(model_config, mappings: list[dict] | None = None, layers_path: str | None = None) -> ModelLayout:
    """The layout for a model: the user's mappings if given, else the preset of its
    ``model_type``; a clear error for an architecture without either."""
    model_type = getattr(model_config, "model_type", None)
    if mappings is None:
        if model_type not in PRESETS:
            raise ValueError(
                f"no built-in AWQ mappings for model_type {model_type!r} (presets: {sorted(PRESETS)}); "
                "pass AWQConfig(mappings=[{prev_op, layers, inp, module2inspect}, ...], layers_path=...)"
            )
        preset = copy.deepcopy(PRESETS[model_type])
        mappings = preset["mappings"]
        layers_path = layers_path or preset["layers_path"]
    if layers_path is None:
        layers_path = PRESETS.get(model_type, {}).get("layers_path")
        if layers_path is None:
            raise ValueError("custom mappings need AWQConfig.layers_path (the dotted path of the decoder-block list)")
    return ModelLayout(layers_path=layers_path, mappings=normalize_mappings(mappings))
