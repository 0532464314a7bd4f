"""What a quantization run did: per-mapping search results, per-layer clip losses, skipped
layers, and wall time plus peak memory per stage. Saved as JSON beside the checkpoint."""

from __future__ import annotations

import json
import resource
import time
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


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class StageMeter:
    """Accumulates seconds and the peak resident memory (MiB) of named stages."""

    def __init__(self):
        self.stages: dict[str, dict[str, float]] = {}

    @contextmanager
    def stage(self, name: str):
        _reset_peak_rss()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            s = self.stages.setdefault(name, {"seconds": 0.0, "peak_rss_mb": 0.0, "calls": 0})
            s["seconds"] += dt
            s["peak_rss_mb"] = max(s["peak_rss_mb"], _peak_rss_mb())
            s["calls"] += 1


@dataclass
class QuantizationReport:
    method: str
    config: dict[str, Any]
    model_type: str | None = None
    n_blocks: int = 0
    calib_tokens: int = 0
    mappings: list[dict[str, Any]] = field(default_factory=list)
    clip: list[dict[str, Any]] = field(default_factory=list)
    not_converted: list[dict[str, str]] = field(default_factory=list)
    quantized_layers: int = 0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    total_seconds: float = 0.0
    peak_rss_mb: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    def summary(self) -> dict[str, float]:
        """Mean AWQ/RTN loss ratio over searched mappings and mean clip gain: a one-line health check."""
        searched = [m for m in self.mappings if m.get("rtn_loss")]
        clipped = [c for c in self.clip if c.get("loss_before")]
        return {
            "mean_awq_over_rtn": sum(m["awq_loss"] / m["rtn_loss"] for m in searched) / len(searched) if searched else float("nan"),
            "mean_clip_after_over_before": sum(c["loss_after"] / c["loss_before"] for c in clipped) / len(clipped) if clipped else float("nan"),
        }
