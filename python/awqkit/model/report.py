"""What a quantization run did: per-mapping search results, per-layer clip losses, skipped
layers, and wall time plus peak memory per stage. Saved as JSON beside the checkpoint."""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["QuantizationReport", "StageMeter"]


def _reset_peak_rss() -> bool:
    # Linux: writing 5 to clear_refs resets VmHWM, so each stage gets its own peak.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status ("VmHWM", "VmRSS") in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageMeter:
    """Accumulates seconds and the peak resident memory (MiB) of named stages, and the peak
    of the whole run (``peak_mb``).

    Each stage resets the kernel's high-water mark (VmHWM) when it starts, so that it gets
    its own peak. Stages nest (a fold check runs inside the scale search): before every reset
    the mark reached so far is folded into every open stage and the run's peak, so a reset
    never hides an outer stage's peak, nor memory used between stages."""

    def __init__(self):
        self.stages: dict[str, dict[str, float]] = {}
        self.peak_mb = 0.0
        self._open: list[str] = []

    def update_peak(self) -> None:
        hwm = _peak_rss_mb()
        self.peak_mb = max(self.peak_mb, hwm)
        for name in self._open:
            s = self.stages[name]
            s["peak_rss_mb"] = max(s["peak_rss_mb"], hwm)

    @contextmanager
    def stage(self, name: str):
        self.update_peak()
        self.stages.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
        _reset_peak_rss()
        self._open.append(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.update_peak()
            self._open.pop()
            s = self.stages[name]
            s["seconds"] += dt
            s["calls"] += 1


@dataclass
class QuantizationReport:
    method: str
    config: dict[str, Any]
    model_type: str | None = None
    family: str | None = None  # the awqkit.model.families entry used (None: user mappings)
    n_blocks: int = 0
    calib_tokens: int = 0
    mappings: list[dict[str, Any]] = field(default_factory=list)
    clip: list[dict[str, Any]] = field(default_factory=list)
    gptq: list[dict[str, Any]] = field(default_factory=list)  # per linear: GPTQ's proxy loss, the dampening used
    not_converted: list[dict[str, str]] = field(default_factory=list)
    quantized_layers: int = 0
    # Per block: the relative output error (mean squared error over mean square of the
    # full-precision output, on the verification tokens) of AWQ and of plain rounding.
    block_errors: list[dict[str, Any]] = field(default_factory=list)
    # Per folded mapping: max|y - y_ref| / max|y_ref| of the block output after the fold.
    fold_checks: list[dict[str, Any]] = field(default_factory=list)
    # Weights of the blocks left in full precision (routers, layers the format cannot hold),
    # with their share of the model's parameters.
    full_precision: list[dict[str, Any]] = field(default_factory=list)
    # MoE: tokens routed to each expert during calibration (0: plain rounding, flagged).
    experts: list[dict[str, Any]] = field(default_factory=list)
    # Streaming runs: the peak memory estimated before the run (awqkit.model.memory_plan).
    memory_plan: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    total_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    # A distributed run: the world size and the bytes each rank sent per kind of message.
    distributed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | None = None) -> str:
        """The report as strict JSON: a NaN or Inf (a loss from non-finite weights or
        activations) is an error naming where it is, since most JSON readers reject them."""
        d = self.to_dict()
        where = _first_non_finite(d, "report")
        if where:
            raise ValueError(f"{where} is not a finite number: the quantization met NaN or Inf; "
                             "check the model's weights and the calibration text")
        text = json.dumps(d, indent=2, allow_nan=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def summary(self) -> dict[str, float | None]:
        """A one-line health check. ``block_error_over_rtn``: mean over blocks of the method's
        (AWQ's, GPTQ's, ...) block output error over plain rounding's, measured on the blocks' real outputs (what the search
        optimises only through the linears); ``mean_awq_over_rtn``: the searched linears' losses;
        ``mean_clip_after_over_before``: the clip gain; ``blocks_kept_rtn``: blocks where AWQ lost to
        plain rounding at the output and kept plain rounding. None where there is nothing to average
        (an RTN run searches nothing)."""
        searched = [m for m in self.mappings if m.get("rtn_loss")]
        clipped = [c for c in self.clip if c.get("loss_before")]
        blocks = [b for b in self.block_errors if b.get("rtn")]
        return {
            # what the model holds: a block that kept plain rounding counts as 1
            "block_error_over_rtn": sum((1.0 if b.get("kept") == "rtn" else b["error"] / b["rtn"]) for b in blocks) / len(blocks)
            if blocks else None,
            "blocks_kept_rtn": sum(b.get("kept") == "rtn" for b in self.block_errors) if self.block_errors else None,
            "mean_awq_over_rtn": sum(m["awq_loss"] / m["rtn_loss"] for m in searched) / len(searched) if searched else None,
            "mean_clip_after_over_before": sum(c["loss_after"] / c["loss_before"] for c in clipped) / len(clipped) if clipped else None,
        }


def _first_non_finite(value, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} = {value}"
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, v in items:
        found = _first_non_finite(v, f"{path}[{key!r}]")
        if found:
            return found
    return None
