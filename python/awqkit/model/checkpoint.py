"""AutoAWQ "gemm" checkpoints: write (``save_quantized``) and read back onto the fused
kernel (``load_quantized``).

Layout, as AutoAWQ/transformers/vLLM expect: for each quantized linear ``<name>.qweight``
int32 [K, N/8], ``<name>.qzeros`` int32 [G, N/8], ``<name>.scales`` float16 [G, N] (and
``<name>.bias``); every other tensor as in the source model (its dtype from the source
config); safetensors, sharded above ``max_shard_size`` with a ``model.safetensors.index.json``;
``config.json`` gains ``quantization_config``; tokenizer files are copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import torch
from torch import nn

from ..config import AWQConfig
from ..footprint import parse_memory
from ..kernels import contiguous_layers
from .capture import set_submodule
from .qlinear import AWQLinear, QuantizedLinear

__all__ = ["load_quantized", "save_quantized"]

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _source_dtype(config) -> torch.dtype:
    d = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(d, torch.dtype):
        return d
    return _DTYPES.get(str(d).replace("torch.", ""), torch.float32)


def _checkpoint_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    src = getattr(model, "_awqkit_source_dtype", None)
    dtype = _DTYPES.get(str(src), torch.float32) if src else _source_dtype(model.config)
    qnames = {name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(qnames):
        m = model.get_submodule(name)
        if m.packed is None:
            raise ValueError(f"{name} is {m.bits}-bit: the AWQ gemm checkpoint format holds 4-bit weights only")
        for key in ("qweight", "qzeros", "scales"):
            tensors[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(m.packed[key]))
        if m.bias is not None:
            tensors[f"{name}.bias"] = m.bias.detach().to(torch.float16).contiguous()
    seen: dict[int, str] = {}
    for key, t in model.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if owner in qnames:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # tied weights (lm_head = embed_tokens): stored once, as transformers does
            continue
        seen[ptr] = key
        tensors[key] = t.detach().to(dtype if t.is_floating_point() else t.dtype).contiguous()
    return tensors, sorted(qnames)


def save_quantized(model: nn.Module, out_dir: str, tokenizer=None, max_shard_size="2GB", report=None) -> str:
    """Write ``model`` (from ``quantize_model``) as an AutoAWQ gemm checkpoint in ``out_dir``."""
    from safetensors.torch import save_file

    report = report if report is not None else getattr(model, "_awqkit_report", None)
    if report is None:
        raise ValueError("save_quantized takes a model returned by awqkit.quantize_model")
    cfg = AWQConfig.from_dict(report.config)
    if cfg.bits != 4:
        raise ValueError(f"the AWQ gemm checkpoint format holds 4-bit weights only, this model is {cfg.bits}-bit")
    os.makedirs(out_dir, exist_ok=True)
    tensors, qnames = _checkpoint_tensors(model)
    limit = max_shard_size if isinstance(max_shard_size, int) else parse_memory(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for j, shard in enumerate(shards):
            fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    not_converted = [e["module"] for e in report.not_converted]
    config = model.config.to_dict()
    config["quantization_config"] = cfg.quantization_config(sorted(set(cfg.modules_to_not_convert) | set(not_converted)))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    src = getattr(model, "_awqkit_source_dir", None)
    if src and os.path.isdir(src):
        for fname in _TOKENIZER_FILES:
            p = os.path.join(src, fname)
            if os.path.isfile(p) and not os.path.exists(os.path.join(out_dir, fname)):
                shutil.copy2(p, out_dir)
    report.to_json(os.path.join(out_dir, "awq_report.json"))
    log.info("saved %d quantized linears in %d shard(s) to %s", len(qnames), len(shards), out_dir)
    return out_dir


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out: dict[str, torch.Tensor] = {}
    for fname in files:
        out.update(load_file(os.path.join(path, fname)))
    return out


def load_quantized(path: str, return_tokenizer: bool = False):
    """A transformers model from an AWQ gemm checkpoint whose quantized linears are
    ``AWQLinear`` modules on the native fused kernel (float32 activations, CPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with open(os.path.join(path, "config.json")) as f:
        raw = json.load(f)
    qcfg = raw.get("quantization_config")
    if not qcfg or qcfg.get("quant_method") != "awq" or qcfg.get("version", "gemm") != "gemm":
        raise ValueError(f"{path} is not an AWQ gemm checkpoint (quantization_config: {qcfg})")
    if qcfg.get("bits") != 4:
        raise ValueError(f"only 4-bit AWQ checkpoints are supported, got bits={qcfg.get('bits')}")
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we build the quantized modules ourselves
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    tensors = _read_tensors(path)
    qnames = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    for name in qnames:
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"{name} in the checkpoint is not a Linear in {type(model).__name__}")
        bias = tensors.pop(f"{name}.bias", None)
        mod = AWQLinear(tensors.pop(f"{name}.qweight").numpy(), tensors.pop(f"{name}.qzeros").numpy(),
                        tensors.pop(f"{name}.scales").numpy(), int(qcfg["group_size"]),
                        None if bias is None else bias.to(torch.float32).numpy())
        set_submodule(model, name, mod)
    missing, unexpected = model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}, strict=False)
    if unexpected:
        raise ValueError(f"unexpected tensors in {path}: {unexpected[:5]}")
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied]
    if missing:
        raise ValueError(f"tensors missing from {path}: {missing[:5]}")
    if tied:
        model.tie_weights()
    # Module order is the order a forward pass calls them: decode then streams one arena.
    contiguous_layers([m.lin for m in model.modules() if isinstance(m, AWQLinear)])
    model._awqkit_source_dir = os.fspath(path)
    if return_tokenizer:
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(path)
    return model

