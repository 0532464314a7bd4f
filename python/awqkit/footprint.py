"""How big a model is before and after AWQ, and whether it fits a memory budget, from its
``config.json`` or its safetensors headers only (no weights are read; no torch needed).

Quantized: every 2-D ``*.weight`` inside the decoder blocks that the AutoAWQ gemm layout
and the fused kernels can hold (``awqkit.layout``: the layers ``quantize_model`` would
convert); each costs ``N*K*bits/8`` bytes of codes plus, per group, a float16 scale and a
``bits``-bit zero per output. Everything else keeps its source dtype.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass

from ._safetensors import read_header
from .layout import gemm_layout_problem, group_size_problem

__all__ = ["Footprint", "estimate_footprint", "parse_memory"]

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "float32": 4, "float16": 2, "bfloat16": 2}
_BLOCK = re.compile(r"(^|\.)(layers|h|blocks|decoder\.layers)\.\d+\.")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(s: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(s))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {s!r} (e.g. 8GB, 512MiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


@dataclass
class Footprint:
    params: int
    quantized_params: int
    bytes_before: int
    bytes_after: int
    source: str
    memory: int | None = None

    @property
    def fits(self) -> bool | None:
        return None if self.memory is None else self.bytes_after <= self.memory

    def to_dict(self):
        d = asdict(self)
        d["fits"] = self.fits
        d["ratio"] = self.bytes_before / self.bytes_after if self.bytes_after else float("nan")
        return d


def _quantized_bytes(n: int, k: int, bits: int, group_size: int) -> int:
    g = 1 if group_size == -1 else k // group_size
    return (n * k * bits + 7) // 8 + g * n * 2 + (g * n * bits + 7) // 8


def _shapes_from_safetensors(folder: str) -> list[tuple[str, list[int], int]]:
    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    out = []
    for fname in files:
        header, _ = read_header(os.path.join(folder, fname))
        for name, info in header.items():
            out.append((name, info["shape"], _DTYPE_BYTES.get(info["dtype"], 4)))
    return out


def _shapes_from_config(cfg: dict) -> list[tuple[str, list[int], int]]:
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise ValueError(f"config.json lacks {missing}: the config-only estimate covers Llama-style models")
    h, inter, n_layers, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    hd = cfg.get("head_dim") or h // heads
    nb = _DTYPE_BYTES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"), 4)
    out = [("model.embed_tokens.weight", [cfg["vocab_size"], h], nb), ("model.norm.weight", [h], nb)]
    if not cfg.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [cfg["vocab_size"], h], nb))
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", [heads * hd, h], nb), (p + "self_attn.k_proj.weight", [kv * hd, h], nb),
                (p + "self_attn.v_proj.weight", [kv * hd, h], nb), (p + "self_attn.o_proj.weight", [h, heads * hd], nb),
                (p + "mlp.gate_proj.weight", [inter, h], nb), (p + "mlp.up_proj.weight", [inter, h], nb),
                (p + "mlp.down_proj.weight", [h, inter], nb),
                (p + "input_layernorm.weight", [h], nb), (p + "post_attention_layernorm.weight", [h], nb)]
    return out


def estimate_footprint(model_or_config: str, bits: int = 4, group_size: int = 128, memory: str | int | None = None) -> Footprint:
    """Estimate from a model folder (safetensors headers if present, else config.json) or a config.json path."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
    problem = group_size_problem(group_size)
    if problem:
        raise ValueError(problem)
    path = os.fspath(model_or_config)
    if os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path)):
        tensors, source = _shapes_from_safetensors(path), "safetensors headers"
    else:
        cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"no config.json or safetensors at {path}")
        with open(cfg_path) as f:
            tensors, source = _shapes_from_config(json.load(f)), "config.json"
    params = qparams = before = after = 0
    for name, shape, nb in tensors:
        numel = math.prod(shape)
        params += numel
        before += numel * nb
        if len(shape) == 2 and name.endswith(".weight") and _BLOCK.search(name) and gemm_layout_problem(shape[0], shape[1], group_size) is None:
            qparams += numel
            after += _quantized_bytes(shape[0], shape[1], bits, group_size)
        else:
            after += numel * nb
    mem = None if memory is None else (memory if isinstance(memory, int) else parse_memory(memory))
    return Footprint(params, qparams, before, after, source, mem)
