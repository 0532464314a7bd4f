"""The checkpoint formats awqkit writes: one registry entry per format.

An entry states what the format can hold (bit widths, groups, symmetry: ``config_problem``,
checked when a checkpoint is written, so other widths can still be quantized and evaluated),
which linears (``layout_problem``: those it cannot hold stay in full precision, and the
footprint counts only the others), and how it rounds (``rule``: ``"awq"``, or a GGUF block
type whose exact quantizer the searches then use). Writing and reading live in the module
``impl`` names (torch side, imported only when a checkpoint is written or read): it provides
``linear_tensors(qt, bias) -> {suffix: tensor}``, ``quantization_config(cfg, not_converted)
-> dict | None``, ``finalize(folder, config, tokenizer_dir, cfg)`` and ``load(path)``.

Adding a format: one ``register_format`` call here and its module, plus its test.
Pure Python (no torch), like ``awqkit.config``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .layout import gemm_layout_problem

__all__ = ["FORMATS", "CheckpointFormat", "format_named", "register_format"]


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    summary: str
    config_problem: Callable[[Any], str | None]       # why an AWQConfig cannot be stored, or None
    rule: Callable[[Any], str]                        # the rounding rule for an AWQConfig (ValueError if none)
    layout_problem: Callable[[int, int, Any], str | None]  # why a [N, K] linear cannot be held, or None
    impl: str                                         # module with the writer and reader

    def module(self):
        return importlib.import_module(self.impl)


FORMATS: dict[str, CheckpointFormat] = {}


def register_format(fmt: CheckpointFormat) -> CheckpointFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def format_named(name: str) -> CheckpointFormat:
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {name!r}")
    return fmt


def _group_divides(k: int, cfg) -> str | None:
    if cfg.group_size != -1 and k % cfg.group_size:
        return f"input size K={k} is not divisible by group_size={cfg.group_size}"
    return None


# AutoAWQ "gemm": what transformers (through gptqmodel), AutoAWQ, vLLM (AWQ, AWQ-Marlin) and
# awqkit's fused kernels load.
register_format(CheckpointFormat(
    name="awq",
    summary="AutoAWQ gemm safetensors (transformers, vLLM, AutoAWQ, awqkit's fused kernels)",
    config_problem=lambda cfg: None if cfg.bits == 4 else
    f"the AWQ gemm format holds 4-bit weights only, got bits={cfg.bits} (compressed-tensors holds 2..8 bits)",
    rule=lambda cfg: "awq",
    layout_problem=lambda n, k, cfg: gemm_layout_problem(n, k, cfg.group_size),
    impl="awqkit.model.checkpoint",
))


# compressed-tensors pack-quantized (what llm-compressor writes; vLLM's preferred format).
register_format(CheckpointFormat(
    name="compressed-tensors",
    summary="compressed-tensors pack-quantized safetensors (llm-compressor's format, vLLM, transformers)",
    config_problem=lambda cfg: None,
    rule=lambda cfg: "awq",
    layout_problem=lambda n, k, cfg: _group_divides(k, cfg),
    impl="awqkit.model.compressed_tensors_format",
))


_GGUF_TYPES = {(4, False): "q4_0", (4, True): "q4_1", (8, False): "q8_0"}


def _gguf_problem(cfg) -> str | None:
    if cfg.group_size != 32:
        return f"GGUF Q4_0/Q4_1/Q8_0 quantize blocks of 32 weights: use group_size=32 (got {cfg.group_size})"
    if (cfg.bits, cfg.zero_point) not in _GGUF_TYPES:
        return (f"GGUF holds bits=4 (Q4_0 symmetric, Q4_1 with zero_point) or bits=8 symmetric (Q8_0); got "
                f"bits={cfg.bits}, zero_point={cfg.zero_point} (3-bit GGUF types are k-quants, not written yet)")
    return None


def _gguf_rule(cfg) -> str:
    problem = _gguf_problem(cfg)
    if problem:
        raise ValueError(problem)
    return _GGUF_TYPES[(cfg.bits, cfg.zero_point)]


# GGUF for llama.cpp and ollama: the AWQ searches round with the target type's exact quantizer.
register_format(CheckpointFormat(
    name="gguf",
    summary="GGUF Q4_0 / Q4_1 / Q8_0 (llama.cpp, ollama), rounded exactly as llama.cpp's reference quantizer",
    config_problem=_gguf_problem,
    rule=_gguf_rule,
    layout_problem=lambda n, k, cfg: None if k % 32 == 0 else f"input size K={k} is not a multiple of GGUF's 32-weight blocks",
    impl="awqkit.model.gguf_writer",
))
