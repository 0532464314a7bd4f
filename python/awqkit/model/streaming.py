"""Quantizing a model folder that need not fit in memory, one decoder block at a time, into
a checkpoint that survives a crash: ``quantize_to_checkpoint`` (what ``awqkit quantize`` runs).

The model is built with its parameters on the meta device. For the calibration forward the
tensors outside the decoder blocks (embeddings, final norm, head) and block 0 are read from the
safetensors files in float32, and every block's call arguments are recorded with the other
blocks replaced by recorders that pass the hidden states through; the outside tensors are then
dropped until the last shard. Then for each block: read its tensors from the files, convert it
(``awqkit.model.conversions``), quantize it with the same ``quantize_block`` as the in-memory
pipeline, write its shard of the output and free it. Resident: one block's weights (and the
pipeline's working copies of them) and the calibration activations of one block.

Progress is committed per block in ``<out>.partial``: the block's shard, the next block's
input hidden states and the report so far, each written to a temporary name, flushed and
renamed. Rerunning the same call (same model files, settings and calibration tokens) resumes
after the last committed block and writes the same bytes as an uninterrupted run; other
settings are refused. The finished checkpoint is renamed to ``out`` only when complete.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import AWQConfig
from ..formats import format_named
from .capture import BlockCalls, capture_block_calls, get_submodule, set_submodule
from .checkpoint import (
    check_output_folder,
    finalize_checkpoint,
    fsync_dir,
    fsync_tree,
    module_checkpoint_tensors,
    move_into_place,
    round_module_to,
    sibling_dir,
    write_checkpoint_metadata,
)
from .conversions import convert_blocks
from .distributed import SingleProcess, from_environment
from .families import layout_for
from .memory_plan import MemoryPlan, available_memory, plan_memory
from .pipeline import (
    _CHUNK_SEQS,
    _MODULE_INSPECTION_UNSPLIT,
    BlockRun,
    calibration_tokens,
    decoder_blocks,
    local_calibration,
    plan_linears,
    quantize_block,
    return_freed_memory,
    tqdm_blocks,
)
from .report import QuantizationReport, StageMeter
from .weight_files import TensorReader, assign_tensor, parameters_on_meta, weight_files

__all__ = ["StreamingUnsupported", "quantize_to_checkpoint"]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_RESUME_DIR = "awqkit-resume"  # inside the partial folder; removed before it becomes the checkpoint
_FORMAT = 2  # of the resume state (2: chunk 0's hidden states per sequence); a different one is refused


class StreamingUnsupported(ValueError):
    """The folder's tensor names or shapes do not match the model transformers builds from its
    config (a checkpoint whose weights transformers renames or fuses while loading)."""


class SourceModel:
    """A Hugging Face model folder read one tensor at a time onto a skeleton built on meta."""

    def __init__(self, path: str):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.path = os.fspath(path)
        try:
            files = weight_files(self.path)
        except ValueError as e:
            raise StreamingUnsupported(f"{self.path}: {e}") from None
        self.files = files
        self.config = AutoConfig.from_pretrained(self.path)
        with parameters_on_meta():
            model: Any = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32)
        model.eval()
        model._awqkit_source_dir = self.path
        with open(os.path.join(self.path, "config.json")) as f:
            raw = json.load(f)
        model._awqkit_source_dtype = raw.get("dtype") or raw.get("torch_dtype")
        self.model = model
        self.reader = TensorReader(self.path, files)
        names = set(self.reader.keys())
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})
        if getattr(self.config, "tie_word_embeddings", False):
            tied.add("lm_head.weight")
        self.tied = tied
        for key, p in model.named_parameters(remove_duplicate=False):
            if key in tied:
                continue
            if key not in names:
                raise StreamingUnsupported(
                    f"{self.path} has no tensor {key} (the model built from its config.json needs it): its weights are "
                    "named or laid out differently (transformers converts them while loading)")
            if tuple(p.shape) != self.reader.shape(key):
                raise StreamingUnsupported(f"{self.path}: {key} has shape {self.reader.shape(key)} in the files, the "
                                           f"model built from config.json expects {tuple(p.shape)}")

    def close(self) -> None:
        self.reader.__exit__(None, None, None)

    def materialize(self, prefix: str, module: nn.Module) -> None:
        """Read the parameters and persistent buffers of ``module`` (the model's module at
        ``prefix``, or a copy of it) from the files, in float32; buffers the files lack keep
        the model's own values."""
        params = dict(module.named_parameters(remove_duplicate=False))
        for rel, p in [*params.items(), *module.named_buffers(remove_duplicate=False)]:
            key = f"{prefix}{rel}"
            if key in self.tied or (rel in params and p.device.type != "meta"):
                continue  # tied, or read already
            if not assign_tensor(module, rel, self.reader, key) and p.device.type == "meta":
                raise StreamingUnsupported(f"{self.path} has no tensor {key}")

    def block_state(self, prefix: str, template: nn.Module, layout) -> dict[str, torch.Tensor]:
        """The state of a block as the pipeline first sees it (read, converted) from a copy
        of its meta ``template``."""
        fresh = copy.deepcopy(template)
        self.materialize(prefix, fresh)
        wrapped = nn.ModuleList([fresh])
        convert_blocks(wrapped, layout)
        return wrapped[0].state_dict()

    def materialize_outside(self, layers_path: str, head: bool = True) -> None:
        """Every tensor outside the decoder blocks (embeddings, final norm, head); ``head=False``
        leaves an untied head on meta (the calibration forward stops before it)."""
        blocks = self.model.get_submodule(layers_path)
        inside = {id(p) for p in blocks.parameters()}
        out_emb = self.model.get_output_embeddings()
        if not head and out_emb is not None and not self.tied:
            inside |= {id(p) for p in out_emb.parameters()}
        for key, p in list(self.model.named_parameters(remove_duplicate=False)):
            if id(p) not in inside and key not in self.tied:
                assign_tensor(self.model, key, self.reader, key)
        if self.tied:
            self.model.tie_weights()
        left = [k for k, p in self.model.named_parameters() if p.device.type == "meta" and id(p) not in inside]
        if left:
            raise StreamingUnsupported(f"{self.path}: no tensor for {left[:3]}")

    def release_outside(self, layers_path: str) -> None:
        """Back to meta for the tensors outside the blocks: only the calibration forward needs
        them (the embeddings); the last shard reads them again."""
        inside = {id(p) for p in self.model.get_submodule(layers_path).parameters()}
        for key, p in list(self.model.named_parameters(remove_duplicate=False)):
            if id(p) not in inside and p.device.type != "meta":
                owner_name, _, leaf = key.rpartition(".")
                owner = self.model.get_submodule(owner_name) if owner_name else self.model
                owner._parameters[leaf] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)


def _record_calls(model: nn.Module, blocks: nn.ModuleList, tokens) -> tuple[list[torch.Tensor], list[BlockCalls]]:
    """``capture_block_calls`` with only block 0 in memory: the other blocks are recorders
    that return their input (in the type block 0 returns: a tensor or a tuple). The blocks'
    arguments (masks, rotary embeddings) do not depend on the hidden states they are given."""
    returns_tuple: list[bool] = []

    def seen(mod, args, out):
        returns_tuple.append(isinstance(out, (tuple, list)))

    def passthrough(*args, **kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        return (h,) if returns_tuple and returns_tuple[0] else h

    handle = blocks[0].register_forward_hook(seen)
    for block in list(blocks)[1:]:
        block.forward = passthrough  # instance attribute: hooks still run, the weights (meta) are never read
    try:
        return capture_block_calls(model, blocks, tokens, _CHUNK_SEQS)
    finally:
        handle.remove()
        for block in list(blocks)[1:]:
            block.__dict__.pop("forward", None)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def _source_fingerprint(path: str, files: list[str]) -> dict[str, Any]:
    """What identifies the source model without reading its weights: config.json and, per
    weight file, its header, size and modification time (a rewritten file changes them)."""
    with open(os.path.join(path, "config.json"), "rb") as f:
        config = f.read()
    out: dict[str, Any] = {"config.json": _digest(config)}
    for fname in files:
        fpath = os.path.join(path, fname)
        st = os.stat(fpath)
        with open(fpath, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = f.read(n)
        out[fname] = {"header": _digest(header), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


@dataclass
class _Resume:
    """The per-block commits in ``<out>.partial``."""

    folder: str
    fingerprint: dict[str, Any]
    n_blocks: int

    @property
    def state_dir(self) -> str:
        return os.path.join(self.folder, _RESUME_DIR)

    def shard_name(self, j: int) -> str:
        # Shard j (1-based) of n_blocks + 1: one per decoder block, then the rest.
        return f"model-{j:05d}-of-{self.n_blocks + 1:05d}.safetensors"

    def load(self) -> tuple[int, dict | None]:
        """(blocks already committed, the saved state) or (0, None) for a new run; an
        interrupted run with other settings or another model is refused."""
        progress = os.path.join(self.state_dir, "progress.json")
        if not os.path.isdir(self.folder):
            return 0, None
        if not os.path.isfile(progress):
            # Killed before the first commit: nothing to keep.
            shutil.rmtree(self.folder)
            return 0, None
        with open(progress) as f:
            state = json.load(f)
        theirs = state.get("fingerprint", {})
        if theirs != self.fingerprint:
            diff = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
            raise ValueError(
                f"{self.folder} holds an interrupted run with different {', '.join(diff)} (settings, calibration tokens "
                "or source model files): rerun with the same model and settings to resume it, or delete that folder "
                "(CLI: --restart) to start over")
        return int(state["blocks_done"]), state

    def _atomic_write(self, path: str, write) -> None:
        tmp = path + ".tmp"
        try:
            write(tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def commit(self, i: int, tensors: dict[str, torch.Tensor], hidden: list[torch.Tensor],
               report: QuantizationReport, seconds: float) -> None:
        """Block ``i`` done: its shard, then the next block's inputs (a file of their own: the
        previous block's stay until the commit that supersedes them), made durable, then the
        progress file that names both. A crash anywhere leaves the previous commit in force."""
        from safetensors.torch import save_file

        os.makedirs(self.state_dir, exist_ok=True)
        self._atomic_write(os.path.join(self.folder, self.shard_name(i + 1)),
                           lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        hidden_name = None
        if hidden:
            hidden_name = f"hidden-{i + 1:05d}.safetensors"
            self._atomic_write(os.path.join(self.state_dir, hidden_name),
                               lambda p: save_file({f"chunk.{c}": h.contiguous() for c, h in enumerate(hidden)}, p))
        fsync_dir(self.state_dir)
        fsync_dir(self.folder)
        state = {"format": _FORMAT, "fingerprint": self.fingerprint, "blocks_done": i + 1, "hidden": hidden_name,
                 "seconds": seconds, "report": report.to_dict()}

        def write_state(p):
            with open(p, "w") as f:
                json.dump(state, f, allow_nan=True)
        self._atomic_write(os.path.join(self.state_dir, "progress.json"), write_state)
        fsync_dir(self.state_dir)
        for fname in os.listdir(self.state_dir):  # the superseded inputs (and any left by a crash)
            if fname.startswith("hidden-") and fname != hidden_name:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.state_dir, fname))

    def hidden(self, state: dict) -> list[torch.Tensor]:
        from safetensors.torch import load_file

        d = load_file(os.path.join(self.state_dir, state["hidden"]))
        return [d[f"chunk.{c}"] for c in range(len(d))]


def quantize_to_checkpoint(model_path: str | os.PathLike, out: str | os.PathLike, config: AWQConfig | None = None,
                           calib=None, tokenizer=None, method: str = "awq", overwrite: bool = False,
                           restart: bool = False, memory_check: bool = True, activations: str = "auto",
                           group: SingleProcess | None = None) -> QuantizationReport:
    """Quantize the model folder ``model_path`` into the AutoAWQ gemm checkpoint ``out``, one
    decoder block in memory at a time, resumable (see the module docstring). Returns the report.

    ``calib``, ``method`` (a name of ``awqkit.quant_methods.METHODS``): as ``quantize_model``. ``restart=True`` discards an
    interrupted run of ``out`` instead of resuming it. ``memory_check``: before any work, the
    run's peak memory is estimated from the config and the file headers (``report.memory_plan``)
    and a plan above the available memory is an error saying what to reduce. ``activations``:
    where the captured linear inputs of a block live, ``"memory"``, ``"disk"`` (files in the
    partial folder, read back in blocks: ``awqkit.model.disk_activations``; the same bytes
    out) or ``"auto"``: on disk when the plan with them in memory exceeds the available memory.

    A folder whose weights transformers renames or fuses while loading (``StreamingUnsupported``)
    is quantized in memory instead (``quantize_model`` + ``save_quantized``), with a warning.

    ``group``: the ranks of a distributed run (``awqkit.model.distributed``; by default the
    group torchrun started, if any): calibration chunks, statistics and searches are split
    among them, rank 0 writes, and the checkpoint's bytes are the single process's.
    """
    from transformers import AutoTokenizer

    cfg = AWQConfig() if config is None else config
    cfg.validate()
    from ..quant_methods import method_named

    spec = method_named(method)
    if not spec.quantizes:
        raise ValueError(f"method {method!r} keeps full-precision weights: it writes no checkpoint")
    if spec.problem(cfg):
        raise ValueError(spec.problem(cfg))
    problem = format_named(cfg.format).config_problem(cfg)
    if problem:
        raise ValueError(problem)
    if activations not in ("auto", "memory", "disk"):
        raise ValueError(f"activations must be 'auto', 'memory' or 'disk', got {activations!r}")
    group = from_environment() if group is None else group
    if group.world > 1 and cfg.inspect == "module":
        raise ValueError(_MODULE_INSPECTION_UNSPLIT)
    model_path = os.fspath(model_path)
    out_dir = check_output_folder(out, overwrite)
    partial = out_dir + PARTIAL_SUFFIX
    if restart and os.path.isdir(partial) and group.rank == 0:
        # Aside first: an interrupted delete must not leave a progress file without its shards.
        aside = sibling_dir(out_dir, "discarded")
        os.rename(partial, os.path.join(aside, "partial"))
        shutil.rmtree(aside)
    meter = StageMeter()
    t_start = time.perf_counter()
    try:
        with meter.stage("load"):
            src = SourceModel(model_path)
    except StreamingUnsupported as e:
        return _in_memory(model_path, out_dir, cfg, calib, tokenizer, method, overwrite, reason=str(e), group=group)
    try:
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(model_path)
            except (OSError, ValueError) as e:
                # Not needed for token calibration or RTN; otherwise the calibration says so.
                log.info("no tokenizer in %s (%s): the checkpoint will have none", model_path, str(e).splitlines()[0])
        return _stream(src, out_dir, partial, cfg, calib, tokenizer, method, meter, t_start, memory_check, activations,
                       group)
    except BaseException:
        # A run stopped before its first commit leaves nothing behind; after it, the partial
        # folder is what the next run resumes from.
        if group.rank == 0 and not os.path.isfile(os.path.join(partial, _RESUME_DIR, "progress.json")):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        src.close()


def _in_memory(model_path, out_dir, cfg, calib, tokenizer, method, overwrite, reason: str,
               group: SingleProcess) -> QuantizationReport:
    from .checkpoint import save_quantized
    from .pipeline import _check_fits_in_memory, load_model, quantize_model

    if group.rank == 0:
        log.warning("%s; quantizing in memory instead (the whole model in float32 in each process, no resume)", reason)
    _check_fits_in_memory(model_path)
    model, tok = load_model(model_path)
    model, report = quantize_model(model, cfg, calib=calib, tokenizer=tokenizer or tok, method=method, group=group)
    if group.rank == 0:
        save_quantized(model, out_dir, tokenizer=tokenizer or tok, report=report, overwrite=overwrite)
    group.barrier()
    return report


def _stream(src: SourceModel, out_dir: str, partial: str, cfg: AWQConfig, calib, tokenizer, method: str,
            meter: StageMeter, t_start: float, memory_check: bool, activations: str,
            group: SingleProcess) -> QuantizationReport:
    model = src.model
    layout = layout_for(model.config, cfg.mappings, cfg.layers_path)
    blocks = decoder_blocks(model, layout)
    planned = copy.deepcopy(blocks)  # on meta: names and shapes only
    convert_blocks(planned, layout)
    templates: dict[int, nn.Module] = {}  # block i on meta while it is being quantized
    prefix = f"{layout.layers_path}."
    from .checkpoint import checkpoint_dtype

    dtype = checkpoint_dtype(model)
    run = BlockRun(layout, cfg, method, meter, plan_linears(model, planned, layout, cfg, method),
                   reread_block=lambda i: src.block_state(f"{prefix}{i}.", templates[i], layout), group=group)
    tokens = calibration_tokens(run, calib, tokenizer) if run.searched else None
    if tokens is not None:
        run.local = local_calibration(tokens, group)
    n_tokens = 0 if run.local is None else run.local.n_tokens
    seqlen = cfg.seqlen if tokens is None else int(tokens.shape[1])
    plan = plan_memory(model, planned, layout, n_tokens, seqlen)
    avail = available_memory()
    share = getattr(group, "local_world", 1)  # processes on this host share its memory
    if activations == "disk" or (activations == "auto" and n_tokens and avail is not None and plan.peak_bytes * share > avail):
        plan = plan_memory(model, planned, layout, n_tokens, seqlen, activations_on_disk=True)
    run.activations_on_disk = plan.activations_on_disk
    run.disk_folder = os.path.join(partial, _RESUME_DIR)
    del planned
    run.report.memory_plan = plan.to_dict()
    if group.rank == 0:
        log.info("memory plan%s: %s", f" (each of {share} processes here)" if share > 1 else "", plan.describe())
    if memory_check:
        _check_plan(plan, cfg, n_tokens, share)

    fingerprint = {"format": _FORMAT, "method": method, "config": cfg.to_dict(),
                   "source": _source_fingerprint(src.path, src.files),
                   "calibration": None if tokens is None else _digest(tokens.to(torch.int64).numpy().tobytes())}
    resume = _Resume(partial, json.loads(json.dumps(fingerprint)), len(blocks))
    group.hint = (f"The blocks committed so far are kept in {partial}: rerun the same command, with any number of "
                  "processes, to resume")
    # Rank 0 owns the partial folder: it decides whether this run resumes, and tells the others.
    group.where = "reading the resume state"
    outcome: tuple = ("error", "")
    if group.rank == 0:
        try:
            outcome = ("ok", *resume.load())
        except ValueError as e:
            outcome = ("error", str(e))
    outcome = group.broadcast(outcome, 0, "resume state")
    if outcome[0] == "error":
        raise ValueError(outcome[1])
    done, state = outcome[1], outcome[2]
    seconds_before = 0.0
    if state is not None:
        if group.rank == 0:
            log.info("resuming %s: %d of %d blocks done", partial, done, len(blocks))
        saved = dict(state["report"])
        run.report = QuantizationReport(**saved)
        run.report.memory_plan = plan.to_dict()
        meter.stages.update({k: dict(v) for k, v in saved.get("stages", {}).items()})
        seconds_before = float(state["seconds"])
    os.makedirs(resume.state_dir, exist_ok=True)  # also where activations on disk go

    with torch.no_grad():
        hidden: list[torch.Tensor] = []
        calls: list[BlockCalls] = []
        if done < len(blocks):
            if run.searched:
                assert run.local is not None
                with meter.stage("load"):
                    src.materialize_outside(layout.layers_path, head=False)
                    templates[0] = copy.deepcopy(blocks[0])
                    src.materialize(f"{prefix}0.", blocks[0])
                with meter.stage("capture_block_calls"):
                    hidden, calls = _record_calls(model, blocks, run.local.batches)
                src.release_outside(layout.layers_path)
                if done:
                    assert state is not None
                    hidden = _scatter_hidden(resume, state, group, run.local)
                    blocks[0] = nn.Identity()
            bar = tqdm_blocks(len(blocks), method, initial=done, quiet=group.rank != 0)
            for i in bar:
                block = blocks[i]
                templates[i] = copy.deepcopy(block) if i or not run.searched else templates[0]
                with meter.stage("load"):
                    src.materialize(f"{prefix}{i}.", block)
                    convert_blocks(nn.ModuleList([block]), layout)
                hidden = quantize_block(run, i, block, hidden, calls[i] if calls else None, bar, dtype)
                with meter.stage("write"):
                    group.where = f"gathering block {i}'s outputs"
                    every = _gather_hidden(hidden, group, run.skip_chunks)
                    if group.rank == 0:
                        tensors, _ = module_checkpoint_tensors(block, cfg, dtype)
                        tensors = {f"{prefix}{i}.{k}": v for k, v in tensors.items()}
                        elapsed = seconds_before + time.perf_counter() - t_start
                        resume.commit(i, tensors, every, run.finish(t_start, seconds_before), elapsed)
                        del tensors
                    del every
                blocks[i] = nn.Identity()  # frees the block (no later forward reaches it)
                del block, templates[i]
                return_freed_memory()
            bar.close()
        group.where = "finishing"
        distributed = group.summary()
        if group.rank == 0:
            with meter.stage("write"):
                src.materialize_outside(layout.layers_path)
                report = run.finish(t_start, seconds_before)
                report.distributed = distributed
                _finish(resume, model, layout.layers_path, cfg, report, dtype, tokenizer)
                # The resume state goes only once the checkpoint is in place: until then an interrupted
                # finish is resumed (every block is committed) instead of started over.
                move_into_place(partial, out_dir)
                shutil.rmtree(os.path.join(out_dir, _RESUME_DIR), ignore_errors=True)
                fsync_dir(out_dir)
        group.barrier()  # the checkpoint is in place when any rank returns
    report = run.finish(t_start, seconds_before)
    report.distributed = distributed
    if group.rank == 0:
        log.info("quantized %d linears in %.1f s into %s (%s)", report.quantized_layers, report.total_seconds, out_dir,
                 report.summary())
    return report


def _gather_hidden(hidden: list[torch.Tensor], group: SingleProcess, skip_chunks: int) -> list[torch.Tensor]:
    """Every chunk's hidden states on rank 0, in calibration order (what the resume state
    keeps, whatever the world size); [] elsewhere."""
    if group.world == 1:
        return hidden
    got = group.gather(hidden[skip_chunks:], 0, "hidden states")
    return [] if got is None else [h for part in got for h in part]


def _scatter_hidden(resume: _Resume, state: dict, group: SingleProcess, local) -> list[torch.Tensor]:
    """This rank's batches of the committed hidden states (read by rank 0, in the single
    process's batch order: chunk 0's sequences one by one, then the chunks)."""
    if group.world == 1:
        return resume.hidden(state)
    parts = None
    if group.rank == 0:
        every = resume.hidden(state)
        n = local.check_sequences  # chunk 0's sequences come first, one batch each
        units, chunks = every[:n], every[n:]
        parts = []
        for r in range(group.world):
            a, b = (n * r) // group.world, (n * (r + 1)) // group.world
            rest = [h for c, h in zip(range(1, len(local.owners)), chunks) if local.owners[c] == r]
            parts.append((units if r == 0 else units[a:b]) + rest)
    return group.scatter(parts, 0, "hidden states")


def _check_plan(plan: MemoryPlan, cfg: AWQConfig, n_tokens: int, share: int = 1) -> None:
    avail = available_memory()
    if avail is None or plan.peak_bytes * share <= avail:
        return
    gib = 2**30
    if share > 1:
        avail //= share
    change = (f"use fewer calibration tokens (now {n_tokens}, {cfg.n_samples} x {cfg.seqlen} asked; the activations scale "
              "with them: --n-samples / --seqlen), free memory" if n_tokens else "free memory")
    if n_tokens and not plan.activations_on_disk:
        change = "keep the captured activations on disk (activations='disk', CLI: --activations disk), " + change
    raise MemoryError(
        f"this run needs about {plan.peak_bytes / gib:.1f} GiB ({plan.describe()}) and {avail / gib:.1f} GiB is available: "
        f"{change}, or pass memory_check=False (CLI: --no-memory-check) to try anyway")


def _finish(resume: _Resume, model: nn.Module, layers_path: str, cfg: AWQConfig, report: QuantizationReport,
            dtype: torch.dtype, tokenizer) -> None:
    """The last shard (every tensor outside the blocks), the index, config.json, tokenizer and
    report; the resume state removed; everything flushed."""
    from safetensors.torch import save_file

    from .._safetensors import read_header

    folder, n = resume.folder, resume.n_blocks
    blocks = get_submodule(model, layers_path)
    set_submodule(model, layers_path, nn.ModuleList())  # the blocks are in their shards already
    try:
        round_module_to(model, dtype)
        rest, _ = module_checkpoint_tensors(model, cfg, dtype)
    finally:
        set_submodule(model, layers_path, blocks)
    save_file(rest, os.path.join(folder, resume.shard_name(n + 1)), metadata={"format": "pt"})
    weight_map: dict[str, str] = {}
    total = 0
    for j in range(1, n + 2):
        fname = resume.shard_name(j)
        header, _ = read_header(os.path.join(folder, fname))
        for key, info in header.items():
            weight_map[key] = fname
            begin, end = info["data_offsets"]
            total += end - begin
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    write_checkpoint_metadata(folder, model, cfg, report, dtype, tokenizer)
    finalize_checkpoint(folder, cfg)
    fsync_tree(folder)
