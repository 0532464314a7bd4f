"""Layer-by-layer AWQ (and the plain-rounding baseline) on a Hugging Face causal LM.

For each decoder block: run it once with hooks (every linear's input, the inspected
modules' arguments), search the scales of each mapping, fold them, search the clipping of
every quantized linear except q/k projections, quantize, replace the linears by
``QuantizedLinear``, and compute the next block's inputs (full-precision outputs with
``propagation="fp"``, quantized outputs with ``"quantized"``). Only one block's
activations are held at a time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

import numpy as np
import torch
from torch import nn

from ..config import AWQConfig
from ..layout import gemm_layout_problem
from ..packing import pack_awq
from ..quantizer import quantize
from ..search import apply_clip, search_clip
from .calibration import get_calib_blocks
from .capture import BlockInputs, capture_block, capture_first_block_inputs, get_submodule, run_block, set_submodule
from .folding import expand_gqa_scales, fold_scales, tie_gqa_scales
from .mappings import layout_for
from .qlinear import QuantizedLinear
from .report import QuantizationReport, StageMeter, _peak_rss_mb
from .search import search_linears, search_module

__all__ = ["load_model", "quantize_model", "rtn_quantize_model"]

log = logging.getLogger(__name__)

# AutoAWQ never clips q/k: their error is amplified by the softmax and clipping hurts.
_NO_CLIP = re.compile(r"(^|\.)(q_proj|k_proj|q|k|query|key|qkv_proj|query_key_value|Wqkv|c_attn)$")
_CHUNK_SEQS = 8  # calibration sequences per forward: bounds attention scratch memory


def load_model(path: str):
    """(model float32 in eval mode, tokenizer) from a Hugging Face model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    model._awqkit_source_dir = os.fspath(path)
    # We compute in float32; the checkpoint keeps the source's dtype for unquantized tensors.
    try:
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        model._awqkit_source_dtype = raw.get("dtype") or raw.get("torch_dtype")
    except (OSError, ValueError):
        pass
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


def _head_dim(cfg) -> int | None:
    hd = getattr(cfg, "head_dim", None)
    if hd:
        return int(hd)
    h, n = getattr(cfg, "hidden_size", None), getattr(cfg, "num_attention_heads", None)
    return h // n if h and n else None


def _exclusion_reason(name: str, lin: nn.Linear, cfg: AWQConfig) -> str | None:
    for pat in cfg.modules_to_not_convert:
        if pat in name:
            return f"matches modules_to_not_convert entry {pat!r}"
    n, k = lin.weight.shape
    return gemm_layout_problem(n, k, cfg.group_size)


def _quantize_linear(lin: nn.Linear, w: torch.Tensor, cfg: AWQConfig) -> QuantizedLinear:
    qt = quantize(w.detach().to(torch.float32).contiguous().numpy(), cfg.bits, cfg.group_size, cfg.zero_point)
    packed = pack_awq(qt) if cfg.bits == 4 else None
    deq = torch.from_numpy(qt.dequantize())
    return QuantizedLinear(deq, lin.bias, cfg.bits, qt.group_size, cfg.zero_point, packed)


def rtn_quantize_model(model_or_path, config: AWQConfig | None = None):
    """Plain round-to-nearest baseline with the same layer selection as AWQ: (model, report)."""
    return quantize_model(model_or_path, config, method="rtn")


def quantize_model(model_or_path, config: AWQConfig | None = None, calib=None, tokenizer=None, method: str = "awq"):
    """Quantize a causal LM (a model folder or a loaded transformers model) with AWQ.

    ``calib``: list of strings, a .txt/.jsonl path, an int64 tensor [n, seqlen] of tokens,
    or None for the built-in default text. Returns ``(model, report)``: the model's
    quantized linears are ``QuantizedLinear`` (dequantized weights, packed tensors kept for
    ``save_quantized``); ``report`` is a ``QuantizationReport``.
    """
    from tqdm.auto import tqdm

    cfg = AWQConfig() if config is None else config
    cfg.validate()
    if method not in ("awq", "rtn"):
        raise ValueError(f"method must be 'awq' or 'rtn', got {method!r}")
    meter = StageMeter()
    t_start = time.perf_counter()
    with meter.stage("load"):
        if isinstance(model_or_path, (str, os.PathLike)):
            model, tok = load_model(model_or_path)
            tokenizer = tokenizer or tok
        else:
            model = model_or_path
            model.eval()
    layout = layout_for(model.config, cfg.mappings, cfg.layers_path)
    blocks = get_submodule(model, layout.layers_path)
    report = QuantizationReport(method=method, config=cfg.to_dict(), model_type=getattr(model.config, "model_type", None),
                                n_blocks=len(blocks))
    head_dim = _head_dim(model.config)

    # Which linears get quantized (decided up front so what we evaluate is what we can save).
    skip: dict[str, str] = {}
    n_linears = 0
    for i, block in enumerate(blocks):
        for rel, mod in block.named_modules():
            if isinstance(mod, nn.Linear):
                n_linears += 1
                reason = _exclusion_reason(f"{layout.layers_path}.{i}.{rel}", mod, cfg)
                if reason:
                    skip[f"{i}.{rel}"] = reason
    if len(skip) == n_linears:
        # A run that converts nothing would save the source model under an AWQ label.
        raise ValueError(
            f"none of the {n_linears} linears in {layout.layers_path} can be quantized with group_size={cfg.group_size} "
            f"({'; '.join(sorted(set(skip.values()))[:3])}): choose a group size that divides the layers' input sizes "
            "or fewer modules_to_not_convert")
    for key, reason in skip.items():
        report.not_converted.append({"module": f"{layout.layers_path}.{key}", "reason": reason})
    if skip:
        kinds = sorted({k.split(".", 1)[1] for k in skip})
        log.warning("%d linears stay in full precision (%s): %s", len(skip), ", ".join(kinds),
                    sorted({r for r in skip.values()}))

    with torch.no_grad():
        if method == "awq":
            with meter.stage("calibration"):
                if isinstance(calib, torch.Tensor):
                    tokens = calib.to(torch.long)
                else:
                    if tokenizer is None:
                        raise ValueError("quantize_model needs a tokenizer to tokenise calibration text (or pass calib as a token tensor)")
                    tokens = get_calib_blocks(tokenizer, calib, cfg.n_samples, cfg.seqlen, cfg.seed)
            report.calib_tokens = int(tokens.numel())
            with meter.stage("capture_first_block"):
                inputs = capture_first_block_inputs(model, blocks, tokens, _CHUNK_SEQS)

        bar = tqdm(range(len(blocks)), desc=f"AWQ {method}", unit="block", disable=None)
        for i in bar:
            block = blocks[i]
            linears = {rel: m for rel, m in block.named_modules() if isinstance(m, nn.Linear)}
            quant_names = [rel for rel in linears if f"{i}.{rel}" not in skip]
            if method == "awq":
                inspect_names = sorted({m.module2inspect for m in layout.mappings
                                        if cfg.inspect == "module" and not isinstance(get_submodule(block, m.module2inspect), nn.Linear)})
                with meter.stage("capture"):
                    cap, fp_out = capture_block(block, inputs, list(linears), inspect_names)
                with meter.stage("scale_search"):
                    for m in layout.mappings:
                        entry = _search_and_fold(block, i, m, cap, cfg, skip, head_dim, report)
                        if entry.get("awq_loss") is not None:
                            bar.set_postfix(mapping=m.name, loss=f"{entry['awq_loss']:.3g}", rtn=f"{entry['rtn_loss']:.3g}")
            # The weights after folding (AWQ) or as loaded (RTN), clipped below.
            new_weights = {rel: linears[rel].weight.detach().clone() for rel in quant_names}
            if method == "awq" and cfg.clip:
                with meter.stage("clip_search"):
                    for rel in quant_names:
                        if _NO_CLIP.search(rel) or rel not in cap.inputs:
                            continue
                        new_weights[rel] = _clip(new_weights[rel], cap.inputs[rel], cfg, report, i, rel)
            with meter.stage("quantize_pack"):
                for rel in quant_names:
                    set_submodule(block, rel, _quantize_linear(linears[rel], new_weights[rel], cfg))
                    report.quantized_layers += 1
            if method == "awq":
                with meter.stage("propagate"):
                    del cap
                    if cfg.propagation == "quantized":
                        fp_out = run_block(block, inputs)
                    inputs = BlockInputs(fp_out, inputs.kwargs)
        bar.close()
    report.stages = meter.stages
    report.total_seconds = time.perf_counter() - t_start
    report.peak_rss_mb = max((s["peak_rss_mb"] for s in meter.stages.values()), default=_peak_rss_mb())
    model._awqkit_report = report  # save_quantized reads the config and the skipped layers from it
    log.info("quantized %d linears in %.1f s (%s)", report.quantized_layers, report.total_seconds, report.summary())
    return model, report


def _search_and_fold(block, i, m, cap, cfg: AWQConfig, skip, head_dim, report) -> dict:
    entry = {"block": i, "mapping": m.name}
    skipped = [l for l in m.layers if f"{i}.{l}" in skip]
    if skipped:
        entry["skipped"] = f"not quantized: {', '.join(skipped)}"
        report.mappings.append(entry)
        return entry
    prev = get_submodule(block, m.prev_op)
    layers = [get_submodule(block, l) for l in m.layers]
    x = cap.inputs[m.inp]
    k = x.shape[1]
    gqa = isinstance(prev, nn.Linear) and prev.out_features != k
    if gqa:
        if not cfg.gqa_tie or head_dim is None:
            entry["skipped"] = f"grouped-query attention ({prev.out_features} -> {k}) and gqa_tie is off"
            report.mappings.append(entry)
            return entry
        p = prev.out_features
        tie = lambda s: expand_gqa_scales(tie_gqa_scales(s, p, head_dim), k, head_dim)  # noqa: E731
    else:
        tie = None

    if cfg.inspect == "module":
        mod = get_submodule(block, m.module2inspect)
        if isinstance(mod, nn.Linear):
            run = lambda: [mod(x)]  # noqa: E731
        else:
            calls = cap.module_calls[m.module2inspect]
            def run():
                outs = [mod(*a, **kw) for a, kw in calls]
                return [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
        choice = search_module(x, layers, run, cfg, tie=tie)
    else:
        choice, res = search_linears(x, [l.weight for l in layers], cfg, tie=tie)
        if tie is not None:
            entry["untied_loss"] = float(res.loss)  # what the same search reaches without the tie
    entry.update({"ratio": choice.ratio, "duo": choice.duo, "rtn_loss": choice.rtn_loss, "awq_loss": choice.loss,
                  "gqa_tied": gqa, "curve": choice.curve})
    report.mappings.append(entry)
    if choice.ratio is None:
        return entry  # identity: nothing to fold
    s = choice.scales.to(torch.float32)
    s_prev = tie_gqa_scales(s, prev.out_features, head_dim) if gqa else s
    fold_scales(prev, layers, s_prev, s)
    # The captured inputs of these linears are now x / s (the folded network's inputs).
    x.div_(s.view(1, -1))
    for l in m.layers:
        if cap.inputs.get(l) is not None and cap.inputs[l] is not x:
            cap.inputs[l].div_(s.view(1, -1))
    return entry


def _clip(w: torch.Tensor, x: torch.Tensor, cfg: AWQConfig, report, i, rel) -> torch.Tensor:
    wn = np.ascontiguousarray(w.to(torch.float32).numpy())
    res = search_clip(np.ascontiguousarray(x.numpy()), wn, bits=cfg.bits, group_size=cfg.group_size,
                      zero_point=cfg.zero_point, n_grid=cfg.clip_n_grid, max_shrink=cfg.clip_max_shrink,
                      n_sample_tokens=512)  # AutoAWQ's token subsampling
    report.clip.append({"block": i, "layer": rel, "loss_before": float(res.loss_before), "loss_after": float(res.loss_after)})
    return torch.from_numpy(apply_clip(wn, res.max_val))
