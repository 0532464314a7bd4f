"""``AWQConfig``: every knob of the model pipeline, serialisable to a dict and JSON.

Pure Python (no torch) so a config can be written, validated and stored anywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from numbers import Integral, Real
from typing import Any

from .formats import format_named
from .layout import group_size_problem

__all__ = ["AWQConfig"]

_PROPAGATIONS = ("fp", "quantized")
_INSPECTS = ("linears", "module")
_MAPPING_KEYS = {"prev_op", "layers", "inp", "module2inspect", "prev_kind", "prev_rows", "gqa", "also_scaled"}
_ON_FOLD_ERROR = ("raise", "drop")


def _is_int(v) -> bool:
    # JSON gives 32.0 or 32.7 as floats and true as a bool (an int subclass): neither is a count.
    return isinstance(v, Integral) and not isinstance(v, bool)


@dataclass
class AWQConfig:
    """How to quantize a causal LM with AWQ.

    bits, group_size, zero_point: the weight format (``group_size=-1`` = one group per
    output channel). n_grid, duo_scaling, saliency: the scale search (see
    ``awqkit.search_scale``). clip: run the clip search after scaling (never on q/k
    projections, whose error is amplified by the softmax). n_samples, seqlen: calibration
    (documents taken, block length). modules_to_not_convert: name substrings of linears
    kept in full precision (layers the AutoAWQ gemm layout cannot hold, see
    ``awqkit.layout``, are added automatically). mappings: ``None`` for the built-in preset of the model's
    ``model_type``, else a list of ``{"prev_op", "layers", "inp", "module2inspect"}`` dicts
    (names relative to one decoder block) and ``layers_path`` the dotted path of the
    decoder-block list. propagation: ``"fp"`` feeds each block the previous block's
    full-precision output (AutoAWQ); ``"quantized"`` feeds it the quantized output
    (llm-compressor). inspect: ``"linears"`` scores scale candidates with the native
    quadratic loss on the linears; ``"module"`` runs the PyTorch module (attention, MLP)
    per candidate as AutoAWQ does. fold_tolerance, on_fold_error: every fold is checked on the
    block's output (a calibration chunk through the folded and the unfolded block): a relative
    error max|y - y_ref| / max|y_ref| above ``fold_tolerance`` raises (``"raise"``) or undoes
    that mapping and reports it (``"drop"``). The mapping keys beyond prev_op/layers/inp/
    module2inspect (prev_kind, prev_rows, gqa, also_scaled) are described in
    ``awqkit.model.families``. block_fallback: each block's output error is measured on a
    calibration chunk for AWQ and for plain rounding; where AWQ's is higher, the block keeps plain
    rounding of its original weights (reported in ``report.block_errors`` as ``kept: "rtn"``).
    gptq_*: the GPTQ rounding of the methods that use it (``awqkit.model.quant_methods``):
    relative dampening, activation order (the group scales are then static, so every format
    still loads), static groups, lazy-batch columns, and true-sequential (the inputs of a
    block's later linears re-captured after its earlier ones are rounded).
    """

    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    n_grid: int = 20
    duo_scaling: bool | str = True
    clip: bool = True
    clip_n_grid: int = 20
    clip_max_shrink: float = 0.5
    saliency: str = "mean_abs"
    n_samples: int = 128
    seqlen: int = 512
    seed: int = 42
    modules_to_not_convert: list[str] = field(default_factory=list)
    mappings: list[dict[str, Any]] | None = None
    layers_path: str | None = None
    gqa_tie: bool = True
    propagation: str = "fp"
    inspect: str = "linears"
    fold_tolerance: float = 1e-4
    on_fold_error: str = "raise"
    block_fallback: bool = True
    format: str = "awq"
    gguf_refit: bool = True
    gptq_damp: float = 0.01
    gptq_act_order: bool = False
    gptq_static_groups: bool = False
    gptq_block_size: int = 128
    gptq_true_sequential: bool = True

    def __post_init__(self):
        self.validate()

    def validate(self) -> AWQConfig:
        if not _is_int(self.bits) or not 2 <= self.bits <= 8:
            raise ValueError(f"bits must be an integer in 2..8, got {self.bits!r}")
        problem = group_size_problem(self.group_size)
        if problem:
            raise ValueError(problem)
        for name in ("n_grid", "clip_n_grid"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name in ("zero_point", "clip", "gqa_tie", "block_fallback", "gguf_refit", "gptq_act_order",
                     "gptq_static_groups", "gptq_true_sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.layers_path is not None and not isinstance(self.layers_path, str):
            raise ValueError(f"layers_path must be a dotted module path or None, got {self.layers_path!r}")
        if not (isinstance(self.duo_scaling, bool) or self.duo_scaling == "both"):
            raise ValueError(f"duo_scaling must be True, False or 'both', got {self.duo_scaling!r}")
        if self.propagation not in _PROPAGATIONS:
            raise ValueError(f"propagation must be one of {_PROPAGATIONS}, got {self.propagation!r}")
        if self.inspect not in _INSPECTS:
            raise ValueError(f"inspect must be one of {_INSPECTS}, got {self.inspect!r}")
        if self.on_fold_error not in _ON_FOLD_ERROR:
            raise ValueError(f"on_fold_error must be one of {_ON_FOLD_ERROR}, got {self.on_fold_error!r}")
        if isinstance(self.fold_tolerance, bool) or not isinstance(self.fold_tolerance, Real) \
                or not math.isfinite(self.fold_tolerance) or not 0.0 < self.fold_tolerance < 1.0:
            raise ValueError(f"fold_tolerance must be in (0, 1), got {self.fold_tolerance!r}")
        if isinstance(self.gptq_damp, bool) or not isinstance(self.gptq_damp, Real) \
                or not math.isfinite(self.gptq_damp) or not 0.0 < self.gptq_damp <= 1.0:
            raise ValueError(f"gptq_damp must be in (0, 1], got {self.gptq_damp!r}")
        if not _is_int(self.gptq_block_size) or self.gptq_block_size < 1:
            raise ValueError(f"gptq_block_size must be a positive integer, got {self.gptq_block_size!r}")
        if not _is_int(self.n_samples) or self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {self.n_samples!r}")
        if not _is_int(self.seqlen) or self.seqlen < 1:
            raise ValueError(f"seqlen must be a positive integer, got {self.seqlen!r}")
        if isinstance(self.clip_max_shrink, bool) or not isinstance(self.clip_max_shrink, Real) \
                or not math.isfinite(self.clip_max_shrink) or not 0.0 < self.clip_max_shrink < 1.0:
            raise ValueError(f"clip_max_shrink must be in (0, 1), got {self.clip_max_shrink!r}")
        if not isinstance(self.modules_to_not_convert, list) or not all(isinstance(m, str) for m in self.modules_to_not_convert):
            raise TypeError("modules_to_not_convert must be a list of strings")
        if not isinstance(self.format, str):
            raise ValueError(f"format must be a string, got {self.format!r}")
        format_named(self.format).rule(self)  # a format whose rounding depends on the settings checks them
        if self.mappings is not None:
            if not isinstance(self.mappings, list) or not self.mappings:
                raise ValueError("mappings must be None or a non-empty list of dicts")
            for i, m in enumerate(self.mappings):
                if not isinstance(m, dict) or not {"prev_op", "layers"} <= set(m) or set(m) - _MAPPING_KEYS:
                    raise ValueError(
                        f"mapping {i} must be a dict with keys prev_op, layers and optionally {sorted(_MAPPING_KEYS - {'prev_op', 'layers'})}; got {m!r}"
                    )
                if not isinstance(m["layers"], list) or not m["layers"]:
                    raise ValueError(f"mapping {i}: layers must be a non-empty list of names")
        return self

    @property
    def rule(self) -> str:
        """How the weights are rounded: ``"awq"`` or the GGUF block type of ``format``."""
        return format_named(self.format).rule(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AWQConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown AWQConfig fields: {sorted(unknown)}")
        return cls(**d)

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str) -> AWQConfig:
        s = text_or_path.lstrip()
        if not s.startswith("{"):
            with open(text_or_path, encoding="utf-8") as f:
                s = f.read()
        return cls.from_dict(json.loads(s))

    def quantization_config(self, modules_to_not_convert: list[str] | None = None) -> dict[str, Any]:
        """The ``quantization_config`` block of a checkpoint's config.json, for every reader:
        ``quant_method``, ``bits``, ``group_size``, ``zero_point``, ``version``,
        ``modules_to_not_convert`` (transformers; AutoAWQ reads these from config.json; vLLM's
        AWQ-Marlin reads ``bits``/``group_size``/``zero_point`` only, and ``lm_head``, the
        head being quantized: never here); AutoAWQ's own names ``w_bit``/``q_group_size``
        beside them (its quant_config.json form, which vLLM's AWQ loader prefers when present)."""
        return {
            "quant_method": "awq",
            "bits": self.bits,
            "w_bit": self.bits,
            "group_size": self.group_size,
            "q_group_size": self.group_size,
            "zero_point": self.zero_point,
            "version": "gemm",
            "lm_head": False,
            "modules_to_not_convert": list(modules_to_not_convert if modules_to_not_convert is not None else self.modules_to_not_convert),
        }
