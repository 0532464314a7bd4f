"""The method workbench: several quantization methods and bit widths on one model, side by side.

``compare_methods(model_path, methods, bits, ...)`` loads the model once in float32, tokenises
the calibration text once (the same token tensor goes to every method and bit width), and for
each (bits, method) quantizes a deep copy of the float model in memory
(``quantize_model(copy, cfg, calib=tokens, method=m)``), measures it, evaluates it and drops it
before the next one: at most the float model and one quantized copy are held at a time. The
float model itself is the ``fp`` row; existing checkpoints (``extras``: name -> folder, read by
``load_quantized``, e.g. llm-compressor's compressed-tensors output) are evaluated the same way.

Per row:

- **perplexity** on each evaluation text: ``evaluate_perplexity``'s protocol (non-overlapping
  ``seqlen`` windows of the first ``eval_tokens`` tokens, the same batches, the same sums), so
  the number is the one ``evaluate_perplexity`` returns for that model;
- on the same windows and positions, **KL divergence** ``KL(P_fp || P_q)`` of the next-token
  distribution against the float model (mean over predicted positions) and **top-1 agreement**
  (share of positions whose argmax is the float model's). The float model runs beside the
  quantized one batch by batch: no logits are kept beyond one batch;
- **gap closed** versus plain rounding at the same bit width, when ``rtn`` is among the
  methods: ``(ppl_rtn - ppl) / (ppl_rtn - ppl_fp)`` per text (1 = full precision, 0 = RTN;
  None where RTN is not worse than full precision on that text: no gap to close);
- **size**: the bytes of the weight files of the checkpoint as saved in the configured format
  (``save_quantized`` to a temporary folder, deleted after); None, with the reason, when the
  format cannot hold the width (the AWQ gemm format holds 4-bit only);
- **seconds**: wall time of the ``quantize_model`` call; **peak_rss_mb**: the pipeline's own
  meter (``report.peak_rss_mb``: the process's resident high-water mark during the run, in MiB,
  the float model included); **peak_delta_mb**: that peak (the model copy included) minus the
  resident memory before the copy, i.e. what quantizing this row added on top of what was
  already resident. The kernel's high-water mark (VmHWM) is reset before each row (Linux
  ``/proc/self/clear_refs``; ``hwm_reset`` says whether it worked: if not, the peak is the
  process's lifetime peak). ``ru_maxrss_mb`` is ``getrusage``'s figure after the row: on Linux
  the same high-water mark, which the resets above (and the pipeline's per-stage resets) lower,
  so it is not the process's lifetime peak and may be below ``peak_rss_mb``. Memory a
  previous row freed may stay mapped in the allocator and count in ``rss_before_mb``;
- greedy continuations (``do_sample=False``) of each prompt, next to the float model's.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import AWQConfig
from ..formats import format_named
from ..quant_methods import METHODS
from .perplexity import eval_windows, window_logits, window_nll
from .report import _peak_rss_mb, _proc_status_mb, _reset_peak_rss

__all__ = ["ComparisonResult", "ComparisonRow", "available_methods", "check_methods", "compare_methods", "load_prompts",
           "parse_bits"]

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin")
_RESERVED_NAMES = ("fp",)


def available_methods() -> dict[str, str]:
    """Method name -> one-line summary: the methods of ``awqkit.quant_methods.METHODS`` that
    quantize (not diagnostics such as ``fold``, which keeps full precision)."""
    return {name: m.summary for name, m in METHODS.items() if m.quantizes}


def check_methods(methods: Iterable[str], configs: Iterable[AWQConfig] = ()) -> list[str]:
    """The method names, in order and without repeats, or a ``ValueError`` naming the unknown
    one and the known ones, or a method that cannot produce one of ``configs`` (a format whose
    rounding it does not do). Cheap: nothing is loaded."""
    names = [m.strip() for m in methods]
    if not names or any(not m for m in names):
        raise ValueError("methods: give one or more method names separated by commas, e.g. rtn,awq")
    known = available_methods()
    configs = list(configs)
    for m in names:
        if m not in known:
            if m in METHODS:
                raise ValueError(f"method {m!r} keeps full precision (a diagnostic): there is nothing to compare; "
                                 f"choose among {', '.join(known)}")
            raise ValueError(f"unknown method {m!r}: choose among {', '.join(known)}")
        for cfg in configs:
            problem = METHODS[m].problem(cfg)
            if problem:
                raise ValueError(problem)
    return list(dict.fromkeys(names))


def parse_bits(bits: Iterable[int | str]) -> list[int]:
    """Bit widths as integers in 2..8, in order and without repeats, or a ``ValueError``."""
    out = []
    for b in bits:
        text = str(b).strip()
        try:
            v = int(text)
        except ValueError:
            raise ValueError(f"bits: {text!r} is not an integer (give widths in 2..8 separated by commas, e.g. 4,3)") from None
        if isinstance(b, bool) or not 2 <= v <= 8:
            raise ValueError(f"bits: {text!r} is out of range (widths 2..8)")
        out.append(v)
    if not out:
        raise ValueError("bits: give one or more widths in 2..8 separated by commas, e.g. 4,3")
    return list(dict.fromkeys(out))


def load_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a ``.jsonl`` file (one ``{"prompt": "..."}`` a line) or a text file (one
    prompt a line); empty lines are skipped."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompts file {path}: no such file; pass a .jsonl ({{\"prompt\": ...}} a line) or .txt file")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    raise ValueError(f"{path}:{i + 1}: not a JSON line ({e})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                    raise ValueError(f"{path}:{i + 1}: a prompts JSONL line needs a \"prompt\" string field")
                prompts.append(obj["prompt"])
            else:
                prompts.append(line.rstrip("\r\n"))
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


@dataclass
class ComparisonRow:
    """One model evaluated: the float model (``kind="fp"``), a method at a bit width
    (``"quantized"``) or an existing checkpoint (``"extra"``). Perplexity, KL divergence and
    top-1 agreement are per evaluation text (keyed by its label); ``kld`` / ``top1`` pool all
    texts' positions. Memory in MiB; None where not measured."""

    name: str
    kind: str
    method: str
    bits: int | None
    ppl: dict[str, float] = field(default_factory=dict)
    kld_per_text: dict[str, float] = field(default_factory=dict)
    top1_per_text: dict[str, float] = field(default_factory=dict)
    kld: float | None = None
    top1: float | None = None
    gap_closed: dict[str, float | None] | None = None
    size_bytes: int | None = None
    size_note: str | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    rss_before_mb: float | None = None
    peak_delta_mb: float | None = None
    ru_maxrss_mb: float | None = None
    hwm_reset: bool | None = None
    eval_seconds: float | None = None
    quantized_layers: int | None = None
    summary: dict[str, Any] | None = None
    stage_seconds: dict[str, float] | None = None  # the pipeline's stages (capture, searches, checks, ...)
    source: str | None = None
    run_json: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def size_mib(self) -> float | None:
        return None if self.size_bytes is None else self.size_bytes / 2**20


@dataclass
class ComparisonResult:
    """What ``compare_methods`` measured: ``rows`` (fp first, then bits x methods, then the
    extras), the prompts, the evaluation texts' token counts and the run's settings and machine."""

    config: dict[str, Any]
    rows: list[ComparisonRow]
    prompts: list[str]
    eval_texts: list[dict[str, Any]]
    calib: dict[str, Any]
    environment: dict[str, Any]

    def row(self, name: str) -> ComparisonRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row named {name!r}: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["size_mib"] = r.size_mib
            rows.append(d)
        return {"config": self.config, "environment": self.environment, "calib": self.calib, "eval_texts": self.eval_texts,
                "prompts": self.prompts, "rows": rows}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Strict JSON (a non-finite number becomes null)."""
        text = json.dumps(_finite(self.to_dict()), indent=2, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def table(self) -> str:
        """One line per row: method, bits, perplexity per text, gap closed versus RTN per text
        (when RTN ran), KL divergence and top-1 agreement against full precision (pooled over
        the texts), checkpoint size, quantization seconds, peak memory."""
        labels = [t["label"] for t in self.eval_texts]
        ok = [r for r in self.rows if not r.error]
        gaps = any(r.gap_closed for r in ok)
        head = ["method", "bits", *[f"ppl {l}" for l in labels]]
        if gaps:
            head += [f"gap {l}" for l in labels]
        head += ["KLD", "top-1", "size MiB", "seconds", "peak MiB", "+MiB"]
        lines = [head]
        for r in ok:
            cells = [r.method, _fmt(r.bits), *[_fmt(r.ppl.get(l), ".3f") for l in labels]]
            if gaps:
                cells += [_fmt(None if r.gap_closed is None else r.gap_closed.get(l), ".0%") for l in labels]
            size = r.size_mib
            cells += [_fmt(r.kld, ".4f"), _fmt(r.top1, ".1%"), _fmt(size, ".3f" if size is not None and size < 10 else ".1f"),
                      _fmt(r.seconds, ".1f"), _fmt(r.peak_rss_mb, ".0f"), _fmt(r.peak_delta_mb, ".0f")]
            lines.append(cells)
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in lines]
        out += [f"{r.name}: size n/a ({r.size_note})" for r in ok if r.size_bytes is None and r.size_note]
        out += [f"{r.name}: failed: {r.error}" for r in self.rows if r.error]
        return "\n".join(out)

    def outputs_table(self) -> str:
        """Each prompt with every row's greedy continuation under it."""
        if not self.prompts:
            return ""
        rows = [r for r in self.rows if not r.error]
        width = max(len(r.name) for r in rows)
        out = []
        for i, p in enumerate(self.prompts):
            out.append(f"prompt {i + 1}: {p!r}")
            for r in rows:
                text = r.outputs[i] if i < len(r.outputs) else ""
                out.append(f"  {r.name:<{width}} | {' '.join(text.split())}")
        return "\n".join(out)


def _fmt(v, spec: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a" if v is None else str(v)
    return format(v, spec)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environment() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import awqkit

    env: dict[str, Any] = {"cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "awqkit": awqkit.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        env["transformers"] = version("transformers")
    except PackageNotFoundError:
        pass
    try:
        env["isa"] = awqkit.active_isa()
    except Exception:  # the native module's view is informative only
        pass
    return env


def _weight_bytes(folder: str | os.PathLike) -> int | None:
    """The bytes of the weight files of a checkpoint folder (its *.safetensors, else *.gguf,
    else *.bin files: a folder holding two copies counts one), or of one .gguf file."""
    folder = os.fspath(folder)
    if os.path.isfile(folder):
        return os.path.getsize(folder)
    names = os.listdir(folder)
    for suffix in _WEIGHT_SUFFIXES:
        found = [n for n in names if n.endswith(suffix) and os.path.isfile(os.path.join(folder, n))]
        if found:
            return sum(os.path.getsize(os.path.join(folder, n)) for n in found)
    return None


def _checkpoint_bits(folder: str) -> int | None:
    """The weight bit width a checkpoint's config.json states (AWQ or compressed-tensors), if any."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            q = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError):
        return None
    if isinstance(q.get("bits"), int):
        return q["bits"]
    for group in (q.get("config_groups") or {}).values():
        bits = (group.get("weights") or {}).get("num_bits") if isinstance(group, dict) else None
        if isinstance(bits, int):
            return bits
    return None


def _read_run_json(folder: str) -> dict[str, Any] | None:
    path = os.path.join(folder, "run.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        log.warning("%s: not read (%s)", path, e)
        return None
    return data if isinstance(data, dict) else None


def _number(d: Mapping[str, Any] | None, key: str) -> float | None:
    v = None if d is None else d.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _check_extra(name: str, folder: str) -> None:
    if name in _RESERVED_NAMES:
        raise ValueError(f"extra checkpoint name {name!r} is taken by the full-precision row: choose another name")
    is_gguf = folder.endswith(".gguf") and os.path.isfile(folder)
    if not is_gguf and not os.path.isfile(os.path.join(folder, "config.json")) and not (
            os.path.isdir(folder) and any(f.endswith(".gguf") for f in os.listdir(folder))):
        what = "does not exist" if not os.path.exists(folder) else "has no config.json"
        raise FileNotFoundError(f"extra checkpoint {name}={folder} {what}: pass a folder written by save_quantized, "
                                "llm-compressor or another tool that load_quantized reads")


class _Evaluator:
    """The evaluation every row gets, against the float model: perplexity, KL divergence and
    top-1 agreement on the same windows, and greedy continuations of the prompts."""

    def __init__(self, fp_model, tokenizer, texts: list[tuple[str, torch.Tensor]], prompts: list[str],
                 max_new_tokens: int, batch_size: int):
        self.fp, self.tok, self.texts, self.prompts = fp_model, tokenizer, texts, prompts
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    @torch.no_grad()
    def evaluate(self, model, row: ComparisonRow) -> None:
        t0 = time.perf_counter()
        model.eval()
        is_fp = model is self.fp
        kl_all, agree_all, n_all = 0.0, 0, 0
        for label, windows in self.texts:
            nll, kl, agree, count = 0.0, 0.0, 0, 0
            for i in range(0, windows.shape[0], self.batch_size):
                batch = windows[i : i + self.batch_size]
                logits = window_logits(model, batch)
                nll += window_nll(logits, batch)  # evaluate_perplexity's own sum
                count += batch[:, 1:].numel()
                ref = logits if is_fp else window_logits(self.fp, batch)  # the float model against itself: KL 0, top-1 1
                if ref.shape != logits.shape:
                    raise ValueError(f"{row.name}: logits of shape {tuple(logits.shape)}, the full-precision model's are "
                                     f"{tuple(ref.shape)}: not the same vocabulary")
                for j in range(batch.shape[0]):  # one window at a time: [seqlen, vocab] temporaries only
                    lp = torch.log_softmax(ref[j, :-1], dim=-1)
                    lq = torch.log_softmax(logits[j, :-1], dim=-1)
                    kl += float(F.kl_div(lq, lp, reduction="none", log_target=True).sum(dim=-1).to(torch.float64).sum())
                    agree += int((ref[j, :-1].argmax(dim=-1) == logits[j, :-1].argmax(dim=-1)).sum())
                del ref
            del logits
            row.ppl[label] = math.exp(nll / count)
            row.kld_per_text[label] = kl / count
            row.top1_per_text[label] = agree / count
            kl_all += kl
            agree_all += agree
            n_all += count
        row.kld = kl_all / n_all if n_all else None
        row.top1 = agree_all / n_all if n_all else None
        row.outputs = [self.generate(model, p) for p in self.prompts]
        row.eval_seconds = time.perf_counter() - t0

    def generate(self, model, prompt: str) -> str:
        """The greedy continuation of ``prompt`` (new tokens only), with the float model's
        special tokens for every row."""
        from transformers import GenerationConfig

        base = self.fp.generation_config
        enc = self.tok(prompt, return_tensors="pt")
        n = enc.input_ids.shape[1]
        # max_length (not max_new_tokens): the model's own generation_config sets it, and both
        # together draw a warning per call.
        gen = GenerationConfig(max_length=n + self.max_new_tokens, do_sample=False, bos_token_id=base.bos_token_id,
                               eos_token_id=base.eos_token_id,
                               pad_token_id=base.pad_token_id if base.pad_token_id is not None else _first(base.eos_token_id))
        out = model.generate(**enc, generation_config=gen)
        return self.tok.decode(out[0, n:], skip_special_tokens=True)


def _first(v):
    return v[0] if isinstance(v, (list, tuple)) and v else v


def _label_texts(paths: Sequence[str]) -> list[str]:
    """Short names for the texts: file stems, else file names, else the paths as given."""
    for names in ([Path(p).stem for p in paths], [os.path.basename(p) for p in paths]):
        if len(set(names)) == len(names):
            return names
    return list(paths)


def compare_methods(model_path: str | os.PathLike, methods: Iterable[str], bits: Iterable[int | str] = (4,), *,
                    config: AWQConfig | Mapping[str, Any] | None = None, group_size: int | None = None, calib=None,
                    eval_texts: Sequence[str | os.PathLike] = (), prompts: Sequence[str] | str | os.PathLike = (),
                    max_new_tokens: int = 32, eval_tokens: int | None = 8192, seqlen: int = 512, batch_size: int = 4,
                    extras: Mapping[str, str | os.PathLike] | Sequence[tuple[str, str | os.PathLike]] | None = None,
                    save_calib: str | os.PathLike | None = None) -> ComparisonResult:
    """Quantize ``model_path`` with every method at every bit width and evaluate each result
    (and the float model, and the ``extras`` checkpoints) the same way; see the module docstring.

    ``config``: the base ``AWQConfig`` (or its dict); ``bits`` and ``group_size`` override it per
    row. ``calib``: what ``quantize_model`` takes (a .txt/.jsonl path, a list of strings, None
    for the built-in text, or an int64 token tensor), tokenised once with the config's
    ``n_samples``/``seqlen``/``seed``; ``save_calib``: write those tokens as an .npy file.
    ``eval_texts``: text files; ``seqlen``/``eval_tokens``/``batch_size``: the evaluation windows
    (``evaluate_perplexity``'s parameters). ``prompts``: strings, or a .jsonl/.txt file.
    Arguments are checked before the model is loaded; a row that fails records its error and
    the others still run. The checkpoints whose size is measured are written under the
    temporary folder (``TMPDIR``) and deleted at once.
    """
    # Everything checkable is checked before any work.
    model_path = os.fspath(model_path)
    methods = list(methods)
    check_methods(methods)  # the names first: an unknown one is the likelier mistake
    bit_list = parse_bits(bits)
    base = config.to_dict() if isinstance(config, AWQConfig) else dict(config or AWQConfig().to_dict())
    if group_size is not None:
        base["group_size"] = group_size
    cfgs = {b: AWQConfig.from_dict({**base, "bits": b}) for b in bit_list}  # validates every width with the format
    method_list = check_methods(methods, cfgs.values())
    text_paths = [os.fspath(p) for p in eval_texts]
    if not text_paths:
        raise ValueError("eval_texts: give at least one text file to evaluate on")
    for p in text_paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"eval text {p}: no such file; pass the path of a UTF-8 text file")
    if isinstance(calib, (str, os.PathLike)) and not os.path.isfile(calib):
        raise FileNotFoundError(f"calibration file {os.fspath(calib)}: no such file; pass a .txt or .jsonl file "
                                "(or an .npy of tokens)")
    prompt_list = load_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else [str(p) for p in prompts]
    extra_items = [(str(n), os.fspath(d)) for n, d in (extras.items() if isinstance(extras, Mapping) else extras or [])]
    taken = {"fp"} | {f"{m} w{b}" for m in method_list for b in bit_list}
    for name, folder in extra_items:
        _check_extra(name, folder)
        if name in taken:
            raise ValueError(f"extra checkpoint name {name!r} is used twice: give each checkpoint its own name")
        taken.add(name)
    for what, path in (("save_calib", save_calib),):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(os.fspath(path)))):
            raise FileNotFoundError(f"{what} {os.fspath(path)}: its folder does not exist")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an integer >= 2, got {seqlen!r}")
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(f"model folder {model_path} has no config.json: pass a Hugging Face model folder")

    from .calibration import get_calib_blocks
    from .checkpoint import checkpoint_dtype, load_quantized, save_quantized
    from .pipeline import load_model, quantize_model

    t0 = time.perf_counter()
    fp_model, tok = load_model(model_path)
    load_seconds = time.perf_counter() - t0
    if tok is None:
        raise ValueError(f"{model_path} has no tokenizer: the evaluation texts and prompts need one")
    labels = _label_texts(text_paths)
    texts, text_info = [], []
    for label, path in zip(labels, text_paths):
        windows, total = eval_windows(tok, Path(path), seqlen, eval_tokens)  # a too-short text fails here, before quantizing
        texts.append((label, windows))
        text_info.append({"label": label, "path": path, "text_tokens": total, "windows": int(windows.shape[0]),
                          "tokens_evaluated": int(windows.numel()), "positions_scored": int(windows[:, 1:].numel())})
    first = cfgs[bit_list[0]]
    if isinstance(calib, (str, os.PathLike)) and os.fspath(calib).endswith(".npy"):
        # Tokens saved by --save-calib (or any int [blocks, seqlen] array): other tools' runs on
        # exactly these tokens compare with these rows.
        calib = torch.from_numpy(np.load(os.fspath(calib)).astype(np.int64))
        if calib.dim() != 2:
            raise ValueError(f"calibration tokens must be [blocks, seqlen], got shape {tuple(calib.shape)}")
    if isinstance(calib, torch.Tensor):
        tokens = calib.to(torch.long)
    else:
        tokens = get_calib_blocks(tok, calib, first.n_samples, first.seqlen, first.seed)
    if save_calib is not None:
        np.save(os.fspath(save_calib), tokens.numpy().astype(np.int64))
    calib_info = {"source": None if calib is None else ("token tensor" if isinstance(calib, torch.Tensor) else
                                                         os.fspath(calib) if isinstance(calib, (str, os.PathLike)) else "list of strings"),
                  "tokens": int(tokens.numel()), "shape": list(tokens.shape), "n_samples": first.n_samples,
                  "seqlen": first.seqlen, "seed": first.seed, "saved_to": None if save_calib is None else os.fspath(save_calib)}

    evaluator = _Evaluator(fp_model, tok, texts, prompt_list, max_new_tokens, batch_size)
    dtype = checkpoint_dtype(fp_model)
    fp_row = ComparisonRow(name="fp", kind="fp", method="fp", bits=torch.finfo(dtype).bits, size_bytes=_weight_bytes(model_path),
                           source=model_path)
    log.info("evaluating the full-precision model")
    evaluator.evaluate(fp_model, fp_row)
    rows = [fp_row]

    for b in bit_list:
        cfg = cfgs[b]
        size_problem = format_named(cfg.format).config_problem(cfg)
        for m in method_list:
            row = ComparisonRow(name=f"{m} w{b}", kind="quantized", method=m, bits=b)
            rows.append(row)
            log.info("%s: quantizing (group size %d, format %s)", row.name, cfg.group_size, cfg.format)
            qmodel = None
            try:
                gc.collect()
                row.rss_before_mb = _rss_mb()
                row.hwm_reset = _reset_peak_rss()
                work = copy.deepcopy(fp_model)
                t = time.perf_counter()
                qmodel, report = quantize_model(work, cfg, calib=tokens, tokenizer=tok, method=m)
                row.seconds = time.perf_counter() - t
                del work
                peak = max(report.peak_rss_mb, _peak_rss_mb())
                row.peak_rss_mb = report.peak_rss_mb
                row.peak_delta_mb = None if row.rss_before_mb is None else peak - row.rss_before_mb
                row.ru_maxrss_mb = _ru_maxrss_mb()
                row.quantized_layers = report.quantized_layers
                row.summary = report.summary()
                row.stage_seconds = {k: round(v["seconds"], 2) for k, v in report.stages.items()}
                if size_problem:
                    row.size_note = size_problem
                else:
                    row.size_bytes = _saved_size(qmodel, report, save_quantized)
                log.info("%s: evaluating", row.name)
                evaluator.evaluate(qmodel, row)
            except (ValueError, TypeError, RuntimeError, OSError, MemoryError, NotImplementedError) as e:
                row.error = " ".join(f"{type(e).__name__}: {e}".split())
                log.warning("%s failed: %s", row.name, row.error)
            finally:
                del qmodel
                gc.collect()

    for name, folder in extra_items:
        run = _read_run_json(folder) if os.path.isdir(folder) else None
        row = ComparisonRow(name=name, kind="extra", method=name, bits=_checkpoint_bits(folder), source=folder, run_json=run,
                            seconds=_number(run, "oneshot_seconds"), peak_rss_mb=_number(run, "peak_rss_mb"),
                            size_bytes=_weight_bytes(folder))
        rows.append(row)
        log.info("%s: loading %s", name, folder)
        model = None
        try:
            model = load_quantized(folder)
            evaluator.evaluate(model, row)
        except (ValueError, TypeError, RuntimeError, OSError, MemoryError, NotImplementedError) as e:
            row.error = " ".join(f"{type(e).__name__}: {e}".split())
            log.warning("%s failed: %s", name, row.error)
        finally:
            del model
            gc.collect()

    _gap_closed(rows, labels)
    settings = {"model": model_path, "methods": method_list, "bits": bit_list, "base_config": base,
                "format": first.format, "group_size": first.group_size, "eval_texts": text_paths, "seqlen": seqlen,
                "eval_tokens": eval_tokens, "batch_size": batch_size, "max_new_tokens": max_new_tokens,
                "extras": dict(extra_items), "load_seconds": load_seconds}
    return ComparisonResult(config=settings, rows=rows, prompts=prompt_list, eval_texts=text_info, calib=calib_info,
                            environment=_environment())


def _saved_size(qmodel, report, save_quantized) -> int | None:
    """The bytes of the weight files ``save_quantized`` writes for ``qmodel`` (in a temporary
    folder, deleted after)."""
    tmp = tempfile.mkdtemp(prefix="awqkit-compare-")
    try:
        out = os.path.join(tmp, "checkpoint")
        save_quantized(qmodel, out, report=report)
        return _weight_bytes(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _gap_closed(rows: list[ComparisonRow], labels: list[str]) -> None:
    """(ppl_rtn - ppl) / (ppl_rtn - ppl_fp) per text for every row with an RTN row at its width;
    None for a text on which RTN is not worse than full precision (no gap to close)."""
    fp = rows[0]
    rtn = {r.bits: r for r in rows if r.kind == "quantized" and r.method == "rtn" and not r.error}
    for r in rows:
        ref = rtn.get(r.bits) if r.kind != "fp" else None
        if ref is None or r.error:
            continue
        gaps: dict[str, float | None] = {}
        for l in labels:
            den = ref.ppl[l] - fp.ppl[l]
            gaps[l] = (ref.ppl[l] - r.ppl[l]) / den + 0.0 if den > 0 else None  # + 0.0: no -0.0
        r.gap_closed = gaps
