"""Checkpoints: write (``save_quantized``, any registered format, ``awqkit.formats``) and read
back (``load_quantized``); and the AutoAWQ "gemm" format's own writer and reader.

Layout, as AutoAWQ/transformers/vLLM expect: for each quantized linear ``<name>.qweight``
int32 [K, N/8], ``<name>.qzeros`` int32 [G, N/8], ``<name>.scales`` float16 [G, N] (and
``<name>.bias``); every other tensor as in the source model (its dtype from the source
config); safetensors, sharded above ``max_shard_size`` with a ``model.safetensors.index.json``;
``config.json`` gains ``quantization_config``; tokenizer files are copied.

A checkpoint is written into a sibling folder and renamed into place, so a folder at the
output path is always one whole checkpoint; the loader refuses folders whose weight files
do not match their index. Which linears the layout holds: ``awqkit.layout``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .. import _core
from ..config import AWQConfig
from ..footprint import parse_memory
from ..formats import format_named
from ..kernels import _ALIGN, _aligned_empty
from ..layout import check_gemm_layout, group_size_problem
from ..packing import pack_awq
from .capture import set_submodule
from .conversions import convert_blocks
from .families import family_for, layout_for
from .interop import add_legacy_config_keys, modules_to_not_convert, tokenizer_class_for_v4
from .qlinear import AWQLinear, QuantizedLinear
from .weight_files import TensorReader, assign_tensor, parameters_on_meta, weight_files

__all__ = ["check_output_folder", "checkpoint_dtype", "load_quantized", "round_module_to", "round_to_checkpoint_dtype",
           "save_quantized"]

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_named(d) -> torch.dtype | None:
    if isinstance(d, torch.dtype):
        return d if d in _DTYPES.values() else None
    return _DTYPES.get(str(d).replace("torch.", "")) if d else None


def _source_dtype(config) -> torch.dtype:
    return _dtype_named(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)) or torch.float32


def checkpoint_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a checkpoint of ``model`` stores its unquantized tensors in: the source
    model's. In order: what ``load_model`` recorded from the source's config.json
    (``_awqkit_source_dtype``); for a model loaded elsewhere, the dtype in the config.json of
    the folder it came from (``config._name_or_path``: transformers sets ``config.dtype`` to
    the dtype it was *loaded* in, float32 for a bf16 model loaded as float32); else its
    config's ``dtype``; else float32."""
    d = _dtype_named(getattr(model, "_awqkit_source_dtype", None))
    if d is not None:
        return d
    src = getattr(getattr(model, "config", None), "_name_or_path", None)
    if src and os.path.isfile(os.path.join(src, "config.json")):
        try:
            with open(os.path.join(src, "config.json")) as f:
                raw = json.load(f)
            d = _dtype_named(raw.get("dtype") or raw.get("torch_dtype"))
        except (OSError, ValueError):
            d = None
        if d is not None:
            return d
    return _source_dtype(model.config)


def _kept_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The model's state outside its quantized linears, each tensor once: a tied copy
    (``lm_head.weight`` = ``embed_tokens.weight``, per the model's tied-weights table, or any
    second name for the same memory) is left out, as transformers saves it. And the names of
    the quantized linears."""
    qnames = {name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    state = model.state_dict()
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for key, t in state.items():
        if key.rsplit(".", 1)[0] in qnames:
            continue
        if key in tied and tied[key] in state:
            src = state[tied[key]]
            if not (src.shape == t.shape and torch.equal(src, t)):
                raise ValueError(f"{key} differs from {tied[key]}, which the model's config ties it to: a reloaded "
                                 "model would use the latter for both; untie them in the config (tie_word_embeddings) first")
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and ident in seen:  # the same tensor under a second name: stored once
            continue
        seen[ident] = key
        out[key] = t
    return out, qnames


@torch.no_grad()
def round_to_checkpoint_dtype(model: nn.Module) -> torch.dtype:
    """Round, in place, every floating tensor a checkpoint of ``model`` stores unquantized
    (embeddings, norms, head, linears kept in full precision) to ``checkpoint_dtype(model)``
    and back, so the model computes what ``save_quantized`` will write (AWQ's folded norms
    are float32 values a bf16 checkpoint cannot hold). Storage stays float32. Returns the dtype."""
    dtype = checkpoint_dtype(model)
    round_module_to(model, dtype)
    return dtype


@torch.no_grad()
def round_module_to(module: nn.Module, dtype: torch.dtype) -> None:
    """Round, in place, the floating tensors of ``module`` outside its quantized linears to
    ``dtype`` and back (storage keeps its dtype): one block at a time in the pipeline."""
    kept, _ = _kept_tensors(module)
    for t in kept.values():
        if t.is_floating_point() and t.dtype != dtype:
            t.copy_(t.to(dtype))


# The AWQ gemm format (awqkit.formats entry "awq"): a linear's tensors and config block.
def linear_tensors(qt, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """qweight int32 [K, N/8], qzeros int32 [G, N/8], scales float16 [G, N] (and the bias in
    float16, as AutoAWQ stores it) of a 4-bit ``QuantizedTensor``."""
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pack_awq(qt).items()}
    if bias is not None:
        out["bias"] = bias.detach().to(torch.float16).contiguous()
    return out


def quantization_config(cfg: AWQConfig, not_converted: list[str], *, folder: str, model: nn.Module,
                        n_blocks: int) -> dict[str, Any]:
    """The AWQ block, its skip list in the form every loader applies to the same linears
    (``awqkit.model.interop.modules_to_not_convert``), from the quantized linears the weight
    files already written in ``folder`` hold."""
    skip, _ = modules_to_not_convert(not_converted, _quantized_in_folder(folder), _layers_path(model, cfg), n_blocks,
                                     cfg.modules_to_not_convert)
    return cfg.quantization_config(skip)


def module_checkpoint_tensors(module: nn.Module, cfg: AWQConfig, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The checkpoint's tensors of ``module`` (a model or one decoder block; names relative to
    it): the format's tensors of its quantized linears and every other tensor in ``dtype``."""
    fmt = format_named(cfg.format)
    problem = fmt.config_problem(cfg)
    if problem:
        raise ValueError(problem)
    kept, qnames = _kept_tensors(module)
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(qnames):
        m = module.get_submodule(name)
        assert isinstance(m, QuantizedLinear)
        layout = fmt.layout_problem(m.out_features, m.in_features, cfg)  # what the loader will demand
        if m.stored is None or layout:
            raise ValueError(f"{name} ([{m.out_features}, {m.in_features}], {m.bits}-bit) cannot be held in the "
                             f"{fmt.name} format: {layout or 'it was quantized for another format'}")
        for key, t in m.stored.items():
            tensors[f"{name}.{key}"] = t
    for key, t in kept.items():
        tensors[key] = t.detach().to(dtype if t.is_floating_point() else t.dtype).contiguous()
    return tensors, sorted(qnames)


def check_output_folder(out_dir, overwrite: bool = False) -> str:
    """The absolute path ``save_quantized`` would write, or a clear error: ``out_dir`` names
    a file, or a non-empty folder without ``overwrite=True``. Call it before a long run."""
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(out) and not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a folder: name a folder for the checkpoint (--out)")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty: choose another folder, or pass overwrite=True "
                              "(CLI: --overwrite) to replace it as a whole")
    return out


def fsync_tree(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for fname in files:
            fd = os.open(os.path.join(root, fname), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sibling_dir(out: str, tag: str) -> str:
    """A new empty folder ``<out>.<tag>-XXXXXXXX`` beside ``out`` (same file system, so a
    rename moves it; made with the process umask, unlike tempfile.mkdtemp's 0700)."""
    while True:
        path = f"{out}.{tag}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _quantized_in_folder(folder: str) -> list[str]:
    """The quantized linears of the checkpoint in ``folder`` (its ``.qweight`` tensors): what a
    loader will find, read from the weight files already written there."""
    from .._safetensors import read_header

    names = []
    for fname in weight_files(folder):
        header, _ = read_header(os.path.join(folder, fname))
        names += [k[: -len(".qweight")] for k in header if k.endswith(".qweight")]
    return sorted(names)


def _layers_path(model: nn.Module, cfg: AWQConfig) -> str | None:
    try:
        return layout_for(cast(Any, model).config, cfg.mappings, cfg.layers_path).layers_path
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        log.warning("checkpoint config: the decoder-block list of this model is unknown (%s): modules_to_not_convert "
                    "lists full paths, which AutoAWQ does not apply", e)
        return None


def _tokenizer_config_for_v4(folder: str, src: str | None) -> None:
    """tokenizer_config.json names a class transformers 4.x knows (transformers 5 writes its own
    ``TokenizersBackend``), see ``interop.tokenizer_class_for_v4``."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        tok_cfg = json.load(f)
    source = None
    if src and os.path.isfile(os.path.join(src, "tokenizer_config.json")):
        try:
            with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
                source = json.load(f).get("tokenizer_class")
        except (OSError, ValueError):
            source = None
    written = tok_cfg.get("tokenizer_class")
    cls = tokenizer_class_for_v4(written, source, os.path.isfile(os.path.join(folder, "tokenizer.json")),
                                 os.path.isfile(os.path.join(folder, "tokenizer.model")))
    if cls != written:
        tok_cfg["tokenizer_class"] = cls
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
            f.write("\n")


def write_checkpoint_metadata(folder: str, model: nn.Module, cfg: AWQConfig, report, dtype: torch.dtype, tokenizer=None) -> None:
    """config.json (with the format's ``quantization_config`` and the stored ``dtype``), the
    tokenizer files and ``awq_report.json`` of a checkpoint, into ``folder``, after its weight
    files.

    Every loader reads it the same (``awqkit.model.interop``): config.json carries the
    transformers-4 keys beside the transformers-5 ones (``rope_theta``, ``rope_scaling``,
    ``torch_dtype``), ``quantization_config`` the AutoAWQ ones beside the transformers/vLLM ones
    and a ``modules_to_not_convert`` that AutoAWQ, vLLM and transformers apply to the same
    linears; tokenizer_config.json a class transformers 4.x knows."""
    not_converted = [e["module"] for e in report.not_converted]
    config = cast(Any, model).config.to_dict()
    config["dtype"] = str(dtype).replace("torch.", "")  # what the tensors are, not what we computed in
    add_legacy_config_keys(config)
    qcfg = format_named(cfg.format).module().quantization_config(
        cfg, not_converted, folder=folder, model=model, n_blocks=report.n_blocks)
    if qcfg is not None:
        config["quantization_config"] = qcfg
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True, allow_nan=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    src = getattr(model, "_awqkit_source_dir", None)
    if src and os.path.isdir(src):
        for fname in _TOKENIZER_FILES:
            p = os.path.join(src, fname)
            if os.path.isfile(p) and not os.path.exists(os.path.join(folder, fname)):
                shutil.copy2(p, folder)
    _tokenizer_config_for_v4(folder, src if src and os.path.isdir(src) else None)
    report.to_json(os.path.join(folder, "awq_report.json"))


def move_into_place(tmp: str, out: str) -> None:
    """Rename the complete folder ``tmp`` to ``out``: rename(2) replaces an absent or empty
    folder atomically. A non-empty one (overwrite) is moved aside first, so ``out`` is never a
    mix of two runs."""
    parent = os.path.dirname(out)
    if os.path.isdir(out) and os.listdir(out):
        old = sibling_dir(out, "old")
        os.rename(out, os.path.join(old, "checkpoint"))
        os.rename(tmp, out)
        fsync_dir(parent)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
        fsync_dir(parent)


def finalize_checkpoint(folder: str, cfg: AWQConfig) -> None:
    """The format's last step on a complete folder before it is moved into place (GGUF: the
    tensors and metadata become one .gguf file)."""
    finalize = getattr(format_named(cfg.format).module(), "finalize", None)
    if finalize is not None:
        finalize(folder, cfg)


def save_quantized(model: nn.Module, out_dir: str, tokenizer=None, max_shard_size="2GB", report=None,
                   overwrite: bool = False) -> str:
    """Write ``model`` (from ``quantize_model``) as a checkpoint in ``out_dir``, in the format
    its config names (``AWQConfig.format``: AutoAWQ gemm by default; ``awqkit.formats``).

    The checkpoint is written into a sibling folder ``<out_dir>.tmp-XXXXXXXX``, flushed to
    disk and renamed into place, so ``out_dir`` is either absent, the old folder, or the
    complete new checkpoint, even if the process is killed (a killed save leaves only the
    sibling folder, which can be deleted). A non-empty ``out_dir`` is refused unless
    ``overwrite=True``, which replaces it as a whole (never merges into it).
    """
    from safetensors.torch import save_file

    report = report if report is not None else getattr(model, "_awqkit_report", None)
    if report is None:
        raise ValueError("save_quantized takes a model returned by awqkit.quantize_model")
    cfg = AWQConfig.from_dict(report.config)
    problem = format_named(cfg.format).config_problem(cfg)
    if problem:
        raise ValueError(problem)
    out = check_output_folder(out_dir, overwrite)
    tensors, qnames = module_checkpoint_tensors(model, cfg, checkpoint_dtype(model))
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

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = sibling_dir(out, "tmp")
    try:
        meta = {"format": "pt"}
        if len(shards) == 1:
            save_file(shards[0], os.path.join(tmp, "model.safetensors"), metadata=meta)
        else:
            weight_map = {}
            for j, shard in enumerate(shards):
                fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, os.path.join(tmp, fname), metadata=meta)
                weight_map.update({k: fname for k in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        write_checkpoint_metadata(tmp, model, cfg, report, checkpoint_dtype(model), tokenizer)
        finalize_checkpoint(tmp, cfg)
        fsync_tree(tmp)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %d quantized linears in %d shard(s) to %s", len(qnames), len(shards), out)
    return out


def load_quantized(path: str, return_tokenizer: bool = False, head: str = "float"):
    """A transformers model from an AWQ gemm checkpoint whose quantized linears are
    ``AWQLinear`` modules on the native fused kernel (float32 activations, CPU). A
    compressed-tensors checkpoint or a GGUF file (or a folder holding one) is read by
    transformers' own loader, its weights decompressed to float32 (to evaluate it here; llama.cpp
    runs a GGUF fast).

    Never builds float32 weights for the quantized linears: the model skeleton is made with
    its parameters on the meta device, each quantized linear's tensors are read from the
    files and repacked straight into one buffer (all layers back to back in the order a
    forward pass calls them), and every other tensor is read and materialised in float32,
    one at a time. Peak memory is about the packed weights plus the float32 size of the
    unquantized tensors (embeddings, norms, head).

    ``head``: ``"float"`` keeps the output head as the checkpoint stores it; ``"int8"`` or
    ``"int4"`` quantize it onto the INT4 kernel (``decode_runtime.quantize_output_head``; a
    tied input embedding is untouched), as the native decode runtime runs it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .decode_runtime import HEAD_KINDS, quantize_output_head

    if head not in HEAD_KINDS:
        raise ValueError(f"head must be one of {sorted(HEAD_KINDS)}, got {head!r}")
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        gguf_module = format_named("gguf").module()
        if path.endswith(".gguf") or gguf_module.gguf_file(path):
            return gguf_module.load(path, return_tokenizer)  # float32, for evaluation; llama.cpp runs it fast
        raise FileNotFoundError(f"{path} is not a checkpoint folder (no config.json there): pass the folder save_quantized wrote")
    with open(config_path) as f:
        raw = json.load(f)
    qcfg = raw.get("quantization_config")
    if qcfg and qcfg.get("quant_method") == "compressed-tensors":
        model = format_named("compressed-tensors").module().load(path)
        if return_tokenizer:
            from transformers import AutoTokenizer

            return model, AutoTokenizer.from_pretrained(path)
        return model
    if not qcfg or qcfg.get("quant_method") != "awq" or qcfg.get("version", "gemm") != "gemm":
        raise ValueError(f"{path} is not an AWQ gemm checkpoint (quantization_config: {qcfg})")
    if qcfg.get("bits") != 4:
        raise ValueError(f"only 4-bit AWQ checkpoints are supported, got bits={qcfg.get('bits')}")
    group_size = qcfg.get("group_size")
    problem = group_size_problem(group_size)
    if problem:
        raise ValueError(f"{path}: quantization_config: {problem}")
    files = weight_files(path)  # an incomplete folder fails here, before the model is built
    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # we build the quantized modules ourselves
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    # The checkpoint names the modules the pipeline quantized: Conv1D and fused experts
    # become per-expert nn.Linear first, as in quantize_model (on meta: no data is copied).
    family = family_for(getattr(config, "model_type", None))
    if family is not None:
        layout = layout_for(config)
        convert_blocks(model.get_submodule(layout.layers_path), layout)

    with TensorReader(path, files) as reader:
        names = set(reader.keys())
        qset = {k[: -len(".qweight")] for k in names if k.endswith(".qweight")}
        # Module order is the order a forward pass calls them: decode then streams one arena.
        order = [name for name, _ in model.named_modules() if name in qset]
        stray = sorted(qset - set(order))
        if stray:
            raise ValueError(f"{stray[0]} in the checkpoint is not a module of {type(model).__name__}")
        sizes = []
        for name in order:
            if not isinstance(model.get_submodule(name), nn.Linear):
                raise ValueError(f"{name} in the checkpoint is not a Linear in {type(model).__name__}")
            for key in ("qzeros", "scales"):
                if f"{name}.{key}" not in names:
                    raise ValueError(f"tensors missing from {path}: {name}.{key}")
            k, n8 = reader.shape(f"{name}.qweight")
            check_gemm_layout(f"{path}: {name}", n8 * 8, k, group_size)
            size = _core.int4_packed_nbytes(n8 * 8, k, k if group_size == -1 else group_size)
            sizes.append(-(-size // _ALIGN) * _ALIGN)
        # What contiguous_layers builds, filled one layer at a time: each layer's repacked
        # bytes are copied in and the temporary freed, so no second copy of the weights exists.
        arena = _aligned_empty(sum(sizes))
        offset = 0
        consumed = set()
        for name, size in zip(order, sizes):
            keys = [f"{name}.{key}" for key in ("qweight", "qzeros", "scales", "bias")]
            qweight, qzeros, scales = (reader.read(key).numpy() for key in keys[:3])
            bias = reader.read(keys[3]).to(torch.float32).numpy() if keys[3] in names else None
            mod = AWQLinear(qweight, qzeros, scales, group_size, bias)
            del qweight, qzeros, scales, bias
            packed = mod.lin.packed
            view = arena[offset : offset + packed.nbytes]
            view[...] = packed
            mod.lin._set_packed(view)
            del packed
            offset += size
            set_submodule(model, name, mod)
            consumed.update(keys)
        arena.flags.writeable = False

        unexpected, loaded = [], set()
        for key in sorted(names - consumed):
            if assign_tensor(model, key, reader, key):
                loaded.add(key)
            else:
                unexpected.append(key)
    if unexpected:
        raise ValueError(f"unexpected tensors in {path}: {unexpected[:5]}")
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    if getattr(config, "tie_word_embeddings", False):
        tied.add("lm_head.weight")
    missing = [k for k in model.state_dict() if k not in loaded and k not in tied]
    if missing:
        raise ValueError(f"tensors missing from {path}: {missing[:5]}")
    if tied:
        model.tie_weights()
    still_meta = [k for k, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
                  if t.device.type == "meta"]
    if still_meta:
        raise ValueError(f"tensors missing from {path}: {still_meta[:5]}")
    model._awqkit_source_dir = os.fspath(path)
    quantize_output_head(model, head)
    if return_tokenizer:
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(path)
    return model


# The format registry's reader for "awq" (awqkit.formats).
load = load_quantized
