"""Layer-by-layer AWQ (and the plain-rounding baseline) on a Hugging Face causal LM.

The model's family (``awqkit.model.families``) gives the decoder blocks, the mappings and
their fold kinds; the blocks are first converted where needed (Conv1D -> Linear, fused 3-D
experts -> per-expert linears; ``awqkit.model.conversions``). One full-precision forward of
the calibration text records the first block's inputs and every block's own call arguments
(masks, rotary embeddings, layer type). Then, for each decoder block: run it once with hooks
(every linear's input, the inspected modules' arguments), search the scales of each mapping,
fold them and **check the fold on the block's output** (a calibration chunk through the folded
and the unfolded block: a relative error above ``fold_tolerance`` is an error naming the
mapping and the numbers, or with ``on_fold_error="drop"`` the mapping is undone and reported),
search the clipping of every quantized linear except q/k projections, quantize, replace the
linears by ``QuantizedLinear``, measure the block's output error against plain rounding's,
and compute the next block's inputs (full-precision outputs with ``propagation="fp"``,
quantized outputs with ``"quantized"``). Only one block's activations are held at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import AWQConfig
from ..formats import format_named
from ..quant_methods import method_named
from ..quantizer import QuantizedTensor, pseudo_quantize, quantize
from .calibration import get_calib_blocks
from .capture import BlockCalls, capture_block, capture_block_calls, get_submodule, run_block, set_submodule
from .checkpoint import checkpoint_dtype, round_module_to, round_to_checkpoint_dtype
from .conversions import convert_blocks
from .distributed import SingleProcess, chunk_owners, from_environment
from .families import BlockLayout, Mapping, layout_for
from .folding import fold_mapping, mapping_tie, restore, snapshot
from .mapping_search import search_linears, search_module
from .method_stages import RANGE_SEARCHES, ROUNDINGS, BlockInputs, LinearJob, concat_rows, merge_entries, row_shares
from .qlinear import QuantizedLinear
from .report import QuantizationReport, StageMeter

__all__ = ["BlockRun", "load_model", "quantize_block", "quantize_model", "rtn_quantize_model"]

log = logging.getLogger(__name__)

_CHUNK_SEQS = 8  # calibration sequences per forward: bounds attention scratch memory
_FP_WARN_SHARE = 0.10  # warn when more than this share of a block's weights stays in full precision


def load_model(path: str | os.PathLike):
    """(model float32 in eval mode, tokenizer or None if the folder has none) from a Hugging
    Face model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    model._awqkit_source_dir = os.fspath(path)
    # We compute in float32; the checkpoint keeps the source's dtype for unquantized tensors.
    try:
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
        model._awqkit_source_dtype = raw.get("dtype") or raw.get("torch_dtype")
    except (OSError, ValueError):
        pass
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        # Token calibration and RTN need none; text calibration then says it is missing.
        log.info("no tokenizer in %s (%s)", path, str(e).splitlines()[0])
        tok = None
    return model, tok


def _exclusion_reason(name: str, lin: nn.Linear, cfg: AWQConfig) -> str | None:
    for pat in cfg.modules_to_not_convert:
        if pat in name:
            return f"matches modules_to_not_convert entry {pat!r}"
    n, k = lin.weight.shape
    return format_named(cfg.format).layout_problem(n, k, cfg)


def _quantize_weight(w: torch.Tensor, bias: torch.Tensor | None, cfg: AWQConfig) -> QuantizedLinear:
    """Plain rounding of ``w`` (the block fallback's)."""
    qt = quantize(w.detach().to(torch.float32).contiguous().numpy(), cfg.bits, cfg.group_size, cfg.zero_point,
                  rule=cfg.rule)
    return _quantized_linear(qt, bias, cfg)


def _quantized_linear(qt: QuantizedTensor, bias: torch.Tensor | None, cfg: AWQConfig) -> QuantizedLinear:
    fmt = format_named(cfg.format)
    # The format's tensors, made now (the float weight is dropped as this module replaces it);
    # None where the format cannot hold this width (the writer then says so).
    stored = fmt.module().linear_tensors(qt, bias) if fmt.config_problem(cfg) is None else None
    deq = torch.from_numpy(qt.dequantize())
    return QuantizedLinear(deq, bias, cfg.bits, qt.group_size, cfg.zero_point, stored)


def rtn_quantize_model(model_or_path, config: AWQConfig | None = None):
    """Plain round-to-nearest baseline with the same layer selection as AWQ: (model, report)."""
    return quantize_model(model_or_path, config, method="rtn")


def quantize_model(model_or_path, config: AWQConfig | None = None, calib=None, tokenizer=None, method: str = "awq",
                   out: str | os.PathLike | None = None, overwrite: bool = False, group: SingleProcess | None = None):
    """Quantize a causal LM (a model folder or a loaded transformers model) with AWQ.

    ``calib``: list of strings, a .txt/.jsonl path, an int64 tensor [n, seqlen] of tokens,
    or None for the built-in default text. Returns ``(model, report)``: the model's
    quantized linears are ``QuantizedLinear`` (dequantized weights, AutoAWQ tensors kept for
    ``save_quantized``); ``report`` is a ``QuantizationReport``. ``method="rtn"`` is plain
    rounding; ``method="fold"`` is a diagnostic for new mappings: search and fold the scales
    but keep every weight in full precision (the model must compute what it did before).

    Without ``out`` the whole model is held in float32. With ``out`` (and a model folder) the
    run streams: ``quantize_to_checkpoint`` reads one block at a time from the folder and
    writes each finished block to the checkpoint ``out`` (resumable; ``awqkit quantize`` does
    that), and the model returned is ``load_quantized(out)``: packed weights on the fused
    kernel (``AWQLinear``), about the checkpoint's size in memory.

    ``group``: the ranks of a distributed run (``awqkit.model.distributed``; by default the
    group torchrun started, if any). Each rank holds the model, calibration and searches are
    split among them, and every rank returns the model one process would.
    """
    if out is not None:
        if not isinstance(model_or_path, (str, os.PathLike)):
            raise ValueError("out= streams a model folder from disk: pass its path (for a loaded model, call "
                             "quantize_model(model) and then save_quantized)")
        if method == "fold":
            raise ValueError("method='fold' keeps full-precision weights: it writes no checkpoint, so it takes no out=")
        from .checkpoint import load_quantized
        from .streaming import quantize_to_checkpoint

        report = quantize_to_checkpoint(model_or_path, out, config, calib=calib, tokenizer=tokenizer, method=method,
                                        overwrite=overwrite, group=group)
        return load_quantized(os.fspath(out)), report
    cfg = AWQConfig() if config is None else config
    cfg.validate()
    spec = method_named(method)
    problem = spec.problem(cfg)
    if problem:
        raise ValueError(problem)
    meter = StageMeter()
    t_start = time.perf_counter()
    with meter.stage("load"):
        if isinstance(model_or_path, (str, os.PathLike)):
            _check_fits_in_memory(os.fspath(model_or_path))
            model, tok = load_model(model_or_path)
            tokenizer = tokenizer or tok
        else:
            model = model_or_path
            model.eval()
    layout = layout_for(model.config, cfg.mappings, cfg.layers_path)
    blocks = decoder_blocks(model, layout)
    convert_blocks(blocks, layout)
    group = from_environment() if group is None else group
    if group.world > 1 and cfg.inspect == "module":
        raise ValueError(_MODULE_INSPECTION_UNSPLIT)
    run = BlockRun(layout, cfg, method, meter, plan_linears(model, blocks, layout, cfg, method), group=group)
    dtype = checkpoint_dtype(model)

    with torch.no_grad():
        hidden: list[torch.Tensor] = []
        calls: list[BlockCalls] = []
        if run.searched:
            tokens = calibration_tokens(run, calib, tokenizer)
            run.local = local_calibration(tokens, group)
            with meter.stage("capture_block_calls"):
                hidden, calls = capture_block_calls(model, blocks, run.local.batches, _CHUNK_SEQS)
        bar = tqdm_blocks(len(blocks), method, quiet=group.rank != 0)
        for i in bar:
            hidden = quantize_block(run, i, blocks[i], hidden, calls[i] if calls else None, bar, dtype)
            return_freed_memory()  # the block's freed buffers: otherwise the heap keeps them, block after block
        bar.close()
    if spec.quantizes:  # fold is a diagnostic: its function check stays exact in float32
        # What is evaluated is what the checkpoint holds: the kept tensors outside the blocks
        # (embeddings, final norm, head) rounded to the dtype they will be stored in.
        round_to_checkpoint_dtype(model)
    report = run.finish(t_start)
    report.distributed = group.summary()
    model._awqkit_report = report  # save_quantized reads the config and the skipped layers from it
    log.info("quantized %d linears in %.1f s (%s)", report.quantized_layers, report.total_seconds, report.summary())
    return model, report


_MODULE_INSPECTION_UNSPLIT = ("inspect='module' runs the inspected module on every calibration token per candidate: "
                              "it is not split across ranks; use inspect='linears' (the default) or one process")


@dataclass
class LocalCalibration:
    """What one rank runs through the blocks: ``batches`` of calibration sequences, the first
    ``skip_chunks`` run for the checks only (not captured), the first ``check_batches`` those
    the checks (fold checks, block errors, fallbacks) run on; ``owners``: the rank of each
    chunk; ``check_sequences``: chunk 0's sequences (every rank's checks together), each
    ``seqlen`` tokens."""

    batches: list[torch.Tensor]
    owners: list[int]
    skip_chunks: int
    check_batches: int
    check_sequences: int
    seqlen: int

    @property
    def check_tokens(self) -> int:
        return self.check_sequences * self.seqlen

    @property
    def n_tokens(self) -> int:
        return sum(int(b.numel()) for b in self.batches)


def local_calibration(tokens: torch.Tensor, group: SingleProcess) -> LocalCalibration:
    """This rank's calibration. Chunks of _CHUNK_SEQS sequences, each rank a contiguous range
    (rank 0 the first). Chunk 0 runs one sequence per batch: the checks are measured on its
    sequences, each rank a contiguous share of them (rank 0 from its own chunk 0, the others
    as extra batches ahead of their chunks, not captured). Every sequence thus runs in a batch
    of the same shape whatever the number of ranks, so the bits do not depend on how torch's
    kernels treat batch sizes (an MoE layer's experts see token counts that depend on them)."""
    n_chunks = -(-int(tokens.shape[0]) // _CHUNK_SEQS)
    owners = chunk_owners(n_chunks, group.world)
    first = tokens[:_CHUNK_SEQS]
    units = [first[j : j + 1] for j in range(int(first.shape[0]))]
    n = len(units)
    a, b = (n * group.rank) // group.world, (n * (group.rank + 1)) // group.world
    own = [tokens[c * _CHUNK_SEQS : (c + 1) * _CHUNK_SEQS] for c in range(1, n_chunks) if owners[c] == group.rank]
    seqlen = int(tokens.shape[1])
    if group.rank == 0:  # chunk 0 is rank 0's: its share of the checks is its first b units
        return LocalCalibration(units + own, owners, 0, b, n, seqlen)
    return LocalCalibration(units[a:b] + own, owners, b - a, b - a, n, seqlen)


def return_freed_memory() -> None:
    """Give the freed block back to the system. glibc raises its mmap threshold each time a
    large buffer is freed, so the next blocks' buffers come from the heap, whose free pages
    it keeps: without a trim the resident size would grow with the number of blocks."""
    import ctypes
    import ctypes.util

    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None


def _check_fits_in_memory(path: str) -> None:
    """The in-memory path holds the whole model in float32: refuse, before loading it, a
    model whose float32 weights exceed the available memory, and point to the streaming path."""
    from ..footprint import estimate_footprint
    from .memory_plan import available_memory

    avail = available_memory()
    if avail is None or not os.path.isdir(path):
        return
    try:
        params = estimate_footprint(path).params
    except (OSError, ValueError):
        return
    if 4 * params > avail:
        raise MemoryError(f"{path} holds {params / 1e9:.2f}B parameters, {4 * params / 2**30:.1f} GiB in float32, and "
                          f"{avail / 2**30:.1f} GiB is available: quantize it from disk block by block instead "
                          "(quantize_model(path, cfg, out=folder), quantize_to_checkpoint, or awqkit quantize)")


def decoder_blocks(model: nn.Module, layout: BlockLayout) -> nn.ModuleList:
    blocks = get_submodule(model, layout.layers_path)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"{layout.layers_path} is a {type(blocks).__name__}, not the ModuleList of decoder blocks")
    return blocks


def tqdm_blocks(n: int, method: str, initial: int = 0, quiet: bool = False):
    from tqdm.auto import tqdm

    return tqdm(range(initial, n), desc=f"AWQ {method}", unit="block", disable=True if quiet else None, total=n,
                initial=initial)


class BlockRun:
    """What every block of one run shares: the layout, the config, the method, the stage
    meter, the linears kept in full precision (``skip``, "block.rel" -> reason) and the report."""

    def __init__(self, layout: BlockLayout, cfg: AWQConfig, method: str, meter: StageMeter,
                 plan: tuple[dict[str, str], QuantizationReport],
                 reread_block: Callable[[int], dict[str, torch.Tensor]] | None = None,
                 activations_on_disk: bool = False, disk_folder: str | None = None,
                 group: SingleProcess | None = None):
        self.layout, self.cfg, self.method, self.meter = layout, cfg, method, meter
        self.spec = method_named(method)
        self.skip, self.report = plan
        self.searched = self.spec.calibrated
        # Block i's state as loaded, read again from the model files (streaming): the block
        # fallback then keeps no copy of the original weights in memory.
        self.reread_block = reread_block
        # The captured linear inputs in files (DiskActivations) instead of memory.
        self.activations_on_disk, self.disk_folder = activations_on_disk, disk_folder
        # The ranks of a distributed run (awqkit.model.distributed) and this rank's calibration.
        self.group = SingleProcess() if group is None else group
        self.local: LocalCalibration | None = None  # set once the calibration is split (local_calibration)

    @property
    def skip_chunks(self) -> int:
        return 0 if self.local is None else self.local.skip_chunks

    @property
    def check_batches(self) -> int:
        return 0 if self.local is None else self.local.check_batches

    @property
    def check_tokens(self) -> int:
        return 0 if self.local is None else self.local.check_tokens

    def finish(self, t_start: float, seconds_before: float = 0.0) -> QuantizationReport:
        report = self.report
        report.stages = self.meter.stages
        report.total_seconds = seconds_before + time.perf_counter() - t_start
        self.meter.update_peak()  # what was reached since the last stage
        report.peak_rss_mb = max(self.meter.peak_mb, report.peak_rss_mb)
        return report


def calibration_tokens(run: BlockRun, calib, tokenizer) -> torch.Tensor:
    with run.meter.stage("calibration"):
        if isinstance(calib, torch.Tensor):
            tokens = calib.to(torch.long)
        else:
            if tokenizer is None:
                raise ValueError("quantize_model needs a tokenizer to tokenise calibration text (or pass calib as a token tensor)")
            tokens = get_calib_blocks(tokenizer, calib, run.cfg.n_samples, run.cfg.seqlen, run.cfg.seed)
    run.report.calib_tokens = int(tokens.numel())
    return tokens


def plan_linears(model: nn.Module, blocks: nn.ModuleList, layout: BlockLayout, cfg: AWQConfig,
                 method: str) -> tuple[dict[str, str], QuantizationReport]:
    """Which linears get quantized (decided up front so what we evaluate is what we can save):
    ``skip`` ("block.rel" -> why it stays in full precision) and the report started with it.
    ``blocks`` may live on the meta device (only names and shapes are read)."""
    report = QuantizationReport(method=method, config=cfg.to_dict(), model_type=getattr(model.config, "model_type", None),
                                n_blocks=len(blocks))
    if layout.family is not None:
        report.family = layout.family.name
    skip: dict[str, str] = {}
    n_linears = 0
    for i, block in enumerate(blocks):
        for rel, mod in block.named_modules():
            if isinstance(mod, nn.Linear):
                n_linears += 1
                reason = "kept in full precision by the model family (router)" if layout.kept_fp(rel) else \
                    _exclusion_reason(f"{layout.layers_path}.{i}.{rel}", mod, cfg)
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
        log.warning("%d linears stay in full precision (%s): %s", len(skip), ", ".join(kinds[:8]),
                    sorted({r for r in skip.values()}))
    _report_full_precision(sum(p.numel() for p in model.parameters()), blocks, layout, skip, report)
    return skip, report


@torch.no_grad()
def quantize_block(run: BlockRun, i: int, block: nn.Module, hidden: list[torch.Tensor], calls: BlockCalls | None,
                   bar, dtype: torch.dtype) -> list[torch.Tensor]:
    """Search, fold, check, choose ranges, round block ``i`` in place by the run's method
    (``awqkit.model.quant_methods``): its linears become ``QuantizedLinear``, its kept tensors
    are rounded to ``dtype``, the checkpoint's. Returns the next block's input hidden states
    (empty for plain rounding, which needs no calibration)."""
    cfg, layout, spec, meter, report, skip = run.cfg, run.layout, run.spec, run.meter, run.report, run.skip
    group = run.group
    linears = {rel: m for rel, m in block.named_modules() if isinstance(m, nn.Linear)}
    quant_names = [rel for rel in linears if f"{i}.{rel}" not in skip]
    cap = None
    # GPTQ's true-sequential order re-captures the inputs of later linears from the block as
    # rounded so far: it needs every chunk of the block's input until the last linear.
    stages = _rounding_stages(quant_names, layout) if spec.sequential and cfg.gptq_true_sequential else [quant_names]
    if run.searched:
        assert calls is not None
        inspect_names = sorted({m.module2inspect for m in layout.mappings
                                if cfg.inspect == "module" and not isinstance(get_submodule(block, m.module2inspect), nn.Linear)})
        input_names = list(dict.fromkeys([*linears, *(m.inp for m in layout.mappings)]))
        if spec.quantizes:
            # Before the capture, so that the rounded copy of the block and the captured
            # activations are never in memory together.
            with meter.stage("block_check"):
                rtn_err = _rtn_block_error(run, block, quant_names, hidden, calls)
        with meter.stage("capture"):
            group.where = f"capturing the inputs of block {i}"
            cap, fp_out = capture_block(block, hidden, calls, input_names, inspect_names, run.activations_on_disk,
                                        run.disk_folder, group=group, skip_chunks=run.skip_chunks)
        if cfg.propagation == "fp" and len(stages) == 1:
            # From here on only the check chunks of the block's input are read (fold and block
            # checks); the next block gets fp_out. The caller's list is this one: trimming it
            # frees the rest of the input during the search.
            del hidden[run.check_batches:]
        if spec.quantizes:
            # The block as loaded, for the fallback below (one block's weights), unless it can be
            # read again from the files.
            keep = cfg.block_fallback and run.reread_block is None
            original = {k: v.detach().clone() for k, v in block.state_dict().items()} if keep else None
        _report_experts(i, layout, cap, report)
        if spec.scales == "awq":
            with meter.stage("scale_search"):
                for m in layout.mappings:
                    group.where = f"searching the scales of block {i}'s {m.name}"
                    entry, x, tie = _prepare_mapping(block, i, m, layout, cap, cfg, skip)
                    report.mappings.append(entry)
                    if "skipped" in entry:
                        continue
                    # Every rank: the statistics reduced, the candidates scored in shares.
                    stats = x.stats(gram=True)
                    searched = _search_mapping(block, m, x, stats, tie, cap, cfg, group)
                    del stats
                    _fold(block, m, layout, cap, entry, searched, tie)
                    if entry.get("ratio") is not None:
                        with meter.stage("fold_check"):
                            _check_fold(run, block, i, m, entry, hidden, calls, fp_out)
                    bar.set_postfix(mapping=m.name, loss=f"{entry['awq_loss']:.3g}", rtn=f"{entry['rtn_loss']:.3g}")
    if not spec.quantizes:  # the fold diagnostic: folded full-precision weights, no clip, no rounding
        del cap
        return fp_out
    # Linear by linear: the weights after folding (AWQ) or as loaded, their ranges chosen and
    # rounded by the method (each linear by one rank, the results sent to all); the float weight
    # is dropped as its quantized module replaces it, so the block never holds a second full copy.
    inputs = BlockInputs()
    # Plain rounding of each linear's weight as the method received it (after any fold): the
    # per-linear fallback below keeps it where it gives the lower block output error.
    plain: dict[str, QuantizedLinear] = {}
    linear_check = run.searched and cfg.linear_fallback
    for si, names in enumerate(stages):
        if si > 0 and cap is not None:
            with meter.stage("capture"):
                group.where = f"capturing the inputs of block {i}'s {', '.join(names)}"
                _recapture_inputs(block, hidden, calls, names, cap, run)
            inputs = BlockInputs()  # the new inputs are new tensors: nothing derived from the old ones applies
        jobs = [LinearJob(weight=linears[rel].weight.detach(), x=cap.inputs.get(rel) if cap is not None else None,
                          cfg=cfg, inputs=inputs, never_clipped=layout.never_clipped(rel), report=_Entries(), block=i,
                          name=rel) for rel in names]
        group.where = f"rounding block {i}'s {', '.join(names)}"
        with meter.stage("clip_search" if spec.ranges != "minmax" else "quantize_pack"):
            inputs.prepare(jobs, spec)
        # Each rank: its share of every linear's rows (a row's range and rounding do not depend
        # on the other rows), then every share to every rank.
        rows_here: dict[str, tuple[QuantizedTensor, _Entries]] = {}
        for job in jobs:
            r0, r1 = row_shares(job.weight.shape[0], group.world)[group.rank]
            if r1 == r0:
                continue
            share = dataclasses.replace(job, weight=job.weight[r0:r1], report=_Entries())
            with meter.stage("clip_search" if spec.ranges != "minmax" else "quantize_pack"):
                ranges = RANGE_SEARCHES[spec.ranges](share)
            with meter.stage("gptq" if spec.rounding == "gptq" else "quantize_pack"):
                rows_here[job.name] = (ROUNDINGS[spec.rounding](share, ranges), share.report)
            del ranges, share
        shares = [rows_here]
        if group.world > 1:
            with meter.stage("quantize_pack"):
                shares = group.all_gather(rows_here, "quantized rows")
        del rows_here
        results: dict[str, tuple[QuantizedTensor, _Entries]] = {}
        for job in jobs:
            got = [s[job.name] for s in shares if job.name in s]  # rank order: row order
            entries = _Entries()
            entries.clip = merge_entries([e.clip for _, e in got])
            entries.gptq = merge_entries([e.gptq for _, e in got])
            results[job.name] = (concat_rows([q for q, _ in got]), entries)
        del shares
        for job in jobs:
            rel = job.name
            qt, entries = results.pop(rel)
            report.clip.extend(entries.clip)
            report.gptq.extend(entries.gptq)
            lin = linears.pop(rel)
            with meter.stage("quantize_pack"):
                set_submodule(block, rel, _quantized_linear(qt, lin.bias, cfg))
                report.quantized_layers += 1
                if linear_check:
                    plain[rel] = _quantize_weight(job.weight, lin.bias, cfg)
            del lin, qt
        del jobs
    del inputs
    with meter.stage("quantize_pack"):
        # What is evaluated (the block check, the quantized propagation) is what the checkpoint
        # holds: AWQ's folded norms are float32 values a bf16 checkpoint cannot hold.
        round_module_to(block, dtype)
    if not run.searched:
        return []
    assert calls is not None
    if cfg.propagation == "fp" and len(stages) > 1:
        del hidden[run.check_batches:]
    with meter.stage("block_check"):
        err = _relative_mse(run, _check_outputs(run, block, hidden, calls), fp_out)
        kept_plain = []
        for rel, alt in plain.items():
            # Each linear's objective ignores what follows it (softmax attention, norms): a
            # rounding that lowers a linear's own error can raise the block's (v_proj under an
            # attention sink). Greedy, in the block's order, measured at the block's output.
            mine = get_submodule(block, rel)
            set_submodule(block, rel, alt)
            e = _relative_mse(run, _check_outputs(run, block, hidden, calls), fp_out)
            if e < err:
                err = e
                kept_plain.append(rel)
            else:
                set_submodule(block, rel, mine)
            del mine
        plain.clear()
        entry = {"block": i, "method": spec.name, "error": err, "rtn": rtn_err, "tokens": run.check_tokens}
        if kept_plain:
            entry["plain_rounding"] = kept_plain
        if spec.scales == "awq":
            entry["awq"] = err  # the key reports written before other methods existed use
        if cfg.block_fallback and err > rtn_err:
            if original is None:
                assert run.reread_block is not None
                original = run.reread_block(i)
            # The method lost to plain rounding at this block's output: the block keeps plain
            # rounding of its original weights, and the report says so.
            own = {f"{rel}.{p}" for rel in quant_names for p in ("weight", "bias")}
            block.load_state_dict({k: v for k, v in original.items() if k not in own}, strict=False)
            for rel in quant_names:
                set_submodule(block, rel, _quantize_weight(original[f"{rel}.weight"], original.get(f"{rel}.bias"), cfg))
            round_module_to(block, dtype)
            entry["kept"] = "rtn"
            for searched_entry in report.mappings:
                if searched_entry["block"] == i and searched_entry.get("ratio") is not None:
                    searched_entry["reverted"] = "the block kept plain rounding (lower block output error)"
        report.block_errors.append(entry)
        original = None
    with meter.stage("propagate"):
        del cap
        return run_block(block, hidden, calls) if cfg.propagation == "quantized" else fp_out


def _rounding_stages(quant_names: list[str], layout: BlockLayout) -> list[list[str]]:
    """The block's quantized linears in true-sequential stages: each mapping's linears (q/k/v,
    o, gate/up, down, in the family's order), then any linear no mapping names."""
    stages: list[list[str]] = []
    seen: set[str] = set()
    for m in layout.mappings:
        names = [n for n in quant_names if n in m.layers and n not in seen]
        if names:
            stages.append(names)
            seen.update(names)
    rest = [n for n in quant_names if n not in seen]
    if rest:
        stages.append(rest)
    return stages


def _recapture_inputs(block: nn.Module, hidden, calls, names: list[str], cap, run: BlockRun) -> None:
    """The inputs of ``names`` from the block as it is now (earlier linears already rounded)."""
    fresh, _ = capture_block(block, hidden, calls, names, [], run.activations_on_disk, run.disk_folder, inputs_only=True,
                             group=run.group, skip_chunks=run.skip_chunks)
    for n in names:
        old = cap.inputs.get(n)
        if n in fresh.inputs:
            cap.inputs[n] = fresh.inputs[n]
        if old is not None and not any(v is old for v in cap.inputs.values()):
            old.close()


def _check_outputs(run: BlockRun, block: nn.Module, hidden, calls) -> list[torch.Tensor]:
    """The block's outputs on this rank's check sequences (none on a rank without a share)."""
    return run_block(block, hidden, calls, run.check_batches)


def _per_sequence(run: BlockRun, values: list[float]) -> list[float]:
    """Every rank's per-sequence values, in sequence order (rank order)."""
    return values if run.group.world == 1 else [v for part in run.group.all_gather(values, "check errors") for v in part]


def _sequence_sums(t: torch.Tensor) -> list[float]:
    # numpy's pairwise sum per sequence: the same bits for any thread count (torch splits a
    # large sum among its threads) and for any split of the sequences among ranks.
    a = t.detach().to(torch.float64).numpy()
    a = a.reshape(a.shape[0], -1) if a.ndim == 3 else a.reshape(1, -1)
    return [float(np.sum(r * r)) for r in a]


def _relative_mse(run: BlockRun, out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """sum (y - y_ref)^2 / sum y_ref^2 over the check sequences (of every rank)."""
    num = _per_sequence(run, [v for o, r in zip(out, ref) for v in _sequence_sums(o.to(torch.float64) - r.to(torch.float64))])
    den = _per_sequence(run, [v for r in ref[: len(out)] for v in _sequence_sums(r)])
    total = float(np.sum(den))
    return float(np.sum(num)) / total if total > 0 else 0.0


def _max_relative(run: BlockRun, out: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    pair = np.zeros(2)
    if out:
        pair[0] = max(float((o.to(torch.float64) - r.to(torch.float64)).abs().max()) for o, r in zip(out, ref))
        pair[1] = max(float(r.abs().max()) for r in ref[: len(out)])
    run.group.all_max([pair], "check errors")
    return pair[0] / pair[1] if pair[1] > 0 else pair[0]


@torch.no_grad()
def _rtn_block_error(run: BlockRun, block: nn.Module, quant_names: list[str], hidden, calls) -> float:
    """Plain rounding's output error on the check sequences: a copy of the block (before any
    fold) with its quantized linears rounded, for the report's AWQ-vs-RTN comparison."""
    cfg = run.cfg
    fp_out = _check_outputs(run, block, hidden, calls)
    rtn = copy.deepcopy(block)
    for rel in quant_names:
        lin: Any = rtn.get_submodule(rel)
        w = lin.weight.detach().to(torch.float32).contiguous().numpy()
        lin.weight.copy_(torch.from_numpy(pseudo_quantize(w, cfg.bits, cfg.group_size, cfg.zero_point, rule=cfg.rule)))
    err = _relative_mse(run, _check_outputs(run, rtn, hidden, calls), fp_out)
    del rtn
    return err


@torch.no_grad()
def _check_fold(run: BlockRun, block, i, m: Mapping, entry: dict, hidden, calls, fp_out) -> None:
    """The folded block must compute what the unfolded one did (before quantization)."""
    cfg, report = run.cfg, run.report
    undo = entry.pop("_undo")
    err = _max_relative(run, _check_outputs(run, block, hidden, calls), fp_out)
    entry["fold_error"] = err
    report.fold_checks.append({"block": i, "mapping": m.name, "max_relative_error": err})
    if err <= cfg.fold_tolerance:
        return
    msg = (f"block {i}, mapping {m.name}: folding the scales changed the block's output by {err:.3g} "
           f"(max |y - y_ref| / max |y_ref| on {run.check_tokens} calibration tokens; tolerance {cfg.fold_tolerance:g}). "
           "The mapping does not preserve the network's function: check prev_op/prev_kind/prev_rows (a fold never "
           "crosses a non-linearity such as GELU) and the family's norm kind")
    if cfg.on_fold_error == "raise":
        raise ValueError(msg + "; AWQConfig(on_fold_error='drop') undoes such mappings instead")
    saved, divided, s = undo
    restore(block, saved)
    for t in divided:
        t.mul_(s.view(1, -1))
    entry.update({"dropped": f"fold check failed: max relative error {err:.3g} > {cfg.fold_tolerance:g}",
                  "ratio": None, "duo": None, "awq_loss": entry["rtn_loss"]})
    log.warning("%s; the mapping was undone (on_fold_error='drop')", msg)


def _report_full_precision(total: int, blocks: nn.ModuleList, layout: BlockLayout, skip: dict, report) -> None:
    """Every weight of the blocks (2-D and more) left in full precision, with its share of the
    model's ``total`` parameters; a warning for blocks that keep more than 10% of theirs."""
    heavy: list[str] = []
    for i, block in enumerate(blocks):
        block_total, kept = 0, 0
        for rel, mod in block.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() < 2:
                    continue
                block_total += p.numel()
                quantized = isinstance(mod, nn.Linear) and pname == "weight" and f"{i}.{rel}" not in skip
                if quantized:
                    continue
                kept += p.numel()
                reason = skip.get(f"{i}.{rel}") or (f"{type(mod).__name__} is not an nn.Linear" if not isinstance(mod, nn.Linear)
                                                    else "not a quantized weight")
                report.full_precision.append({"name": f"{layout.layers_path}.{i}.{rel}.{pname}", "params": p.numel(),
                                              "share_of_model": p.numel() / total, "reason": reason})
        if block_total and kept / block_total > _FP_WARN_SHARE:
            heavy.append(f"{i} ({100 * kept / block_total:.0f}%)")
    if heavy:
        log.warning("blocks keeping more than %.0f%% of their weights in full precision: %s (see report.full_precision)",
                    100 * _FP_WARN_SHARE, ", ".join(heavy))


def _report_experts(i: int, layout: BlockLayout, cap, report) -> None:
    if layout.moe is None:
        return
    for e in range(layout.num_experts):
        name = f"{layout.moe.path}.{e}.{layout.moe.gate}"
        x = cap.inputs.get(name)
        tokens = 0 if x is None else int(x.shape[0])
        entry: dict[str, Any] = {"block": i, "expert": e, "tokens": tokens}
        if tokens == 0:
            entry["flag"] = "no calibration token was routed here: plain rounding, no scale or clip search"
        report.experts.append(entry)


class _Entries:
    """Where one linear's stages put their report entries (sent with its result, then added
    to the report in the block's order)."""

    def __init__(self) -> None:
        self.clip: list[dict] = []
        self.gptq: list[dict] = []


def _prepare_mapping(block, i, m: Mapping, layout: BlockLayout, cap, cfg: AWQConfig, skip) -> tuple[dict, Any, Any]:
    """(report entry, captured input, GQA tie) of a mapping; the entry says ``skipped`` (and
    why) for a mapping that is not searched."""
    entry: dict[str, Any] = {"block": i, "mapping": m.name}
    skipped = [l for l in m.layers if f"{i}.{l}" in skip]
    if skipped:
        entry["skipped"] = f"not quantized: {', '.join(skipped[:3])}" + (" ..." if len(skipped) > 3 else "")
        return entry, None, None
    x = cap.inputs.get(m.inp)
    if x is None or x.rows == 0:
        entry["skipped"] = "no calibration token reached this mapping (an expert no token was routed to)"
        return entry, None, None
    _, tie = mapping_tie(get_submodule(block, m.prev_op), m, layout, x.k)
    if tie is not None and not cfg.gqa_tie:
        entry["skipped"] = f"grouped-query attention ({layout.kv_heads} KV heads for {layout.heads} query heads) and gqa_tie is off"
        return entry, None, None
    return entry, x, tie


def _search_mapping(block, m: Mapping, x, stats, tie, cap, cfg: AWQConfig, group) -> tuple:
    """(ScaleChoice, the lowest untied loss under a GQA tie, else None)."""
    layers: list[Any] = [get_submodule(block, l) for l in m.layers]
    if cfg.inspect == "module":
        local = x.load()  # the module is run on the whole input per candidate
        mod = get_submodule(block, m.module2inspect)
        if isinstance(mod, nn.Linear):
            run = lambda: [mod(local)]  # noqa: E731
        else:
            calls = cap.module_calls[m.module2inspect]

            def run():
                outs = [mod(*a, **kw) for a, kw in calls]
                return [o[0] if isinstance(o, (tuple, list)) else o for o in outs]
        return search_module(stats, layers, run, cfg, tie=tie), None
    choice, untied = search_linears(stats, [l.weight for l in layers], cfg, tie=tie, group=group)
    return choice, (untied if tie is not None else None)


def _fold(block, m: Mapping, layout: BlockLayout, cap, entry: dict, searched: tuple, tie) -> None:
    """Record the mapping's search in its entry and fold its scales (every rank)."""
    choice, untied = searched
    if untied is not None:
        entry["untied_loss"] = untied  # what the same search reaches without the tie
    entry.update({"ratio": choice.ratio, "duo": choice.duo, "rtn_loss": choice.rtn_loss, "awq_loss": choice.loss,
                  "gqa_tied": tie is not None, "curve": choice.curve})
    if choice.ratio is None:
        return  # identity: nothing to fold
    s = choice.scales.to(torch.float32)
    saved = snapshot(block, m)
    fold_mapping(block, m, layout, s)
    # The captured inputs of the modules reading this input are now x / s (the folded
    # network's inputs); linears fed one tensor share it, so each tensor is divided once.
    divided = list({id(t): t for t in (cap.inputs.get(n) for n in (m.inp, *m.layers, *m.also_scaled))
                    if t is not None}.values())
    for t in divided:
        t.div_(s)
    entry["_undo"] = (saved, divided, s)  # taken by _check_fold
