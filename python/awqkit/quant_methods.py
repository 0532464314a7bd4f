"""The quantization methods of the pipeline: one registry entry per method.

A method is three choices applied per decoder block after one capture of the block's inputs:

- ``scales``: AWQ's per-channel scale search, folded into the previous op mapping by mapping
  (``"awq"``), or none;
- ``ranges``: how each group's quantization range is chosen: the weights' own min/max
  (``"minmax"``), AWQ's clip search on the inputs' Gram blocks (``"clip"``), or the range
  search weighted by E[x^2] per input channel (``"imatrix"``, the objective of llama.cpp's
  imatrix and llm-compressor's imatrix_mse observer);
- ``rounding``: round to nearest (``"nearest"``) or GPTQ (``"gptq"``, each column's rounding
  error spread over the later columns through the inverse Hessian).

The stages' handlers live in ``awqkit.model.method_stages`` (torch side), one table entry per
stage name listed here. Adding a method: one ``register_method`` call plus its test; a new
range search or rounding: its name here, its handler in that table, and a method using it.
Pure Python (no torch), like ``awqkit.formats``, so the CLI lists the methods without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["METHODS", "QuantMethod", "RANGE_SEARCHES", "ROUNDINGS", "method_named", "register_method"]

RANGE_SEARCHES = ("minmax", "clip", "imatrix")
ROUNDINGS = ("nearest", "gptq")
_ALL_RULES = ("awq", "q4_0", "q4_1", "q8_0")


@dataclass(frozen=True)
class QuantMethod:
    """One method (see the module docstring). ``quantizes``: False for the ``fold`` diagnostic,
    which folds AWQ's scales and keeps full precision. ``rules``: the rounding rules (``"awq"``,
    GGUF block types) it can produce, so a format it cannot serve is refused before any work."""

    name: str
    summary: str
    scales: str | None = None
    ranges: str = "minmax"
    rounding: str = "nearest"
    quantizes: bool = True
    rules: tuple[str, ...] = field(default=_ALL_RULES)

    @property
    def calibrated(self) -> bool:
        """Whether it captures the blocks' inputs (everything but plain rounding)."""
        return self.scales is not None or self.ranges != "minmax" or self.rounding != "nearest"

    @property
    def sequential(self) -> bool:
        """Whether GPTQ's true-sequential order applies (``AWQConfig.gptq_true_sequential``):
        the inputs of a block's later linears re-captured after its earlier ones are rounded."""
        return self.rounding == "gptq"

    def problem(self, cfg) -> str | None:
        """Why this method cannot produce ``cfg``'s format, or None."""
        if cfg.rule not in self.rules:
            return (f"method {self.name!r} cannot round for the {cfg.format} format's {cfg.rule} blocks "
                    f"(it produces {', '.join(self.rules)}): use --method awq or rtn for it")
        return None


METHODS: dict[str, QuantMethod] = {}


def register_method(method: QuantMethod) -> QuantMethod:
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    if method.scales not in (None, "awq") or method.ranges not in RANGE_SEARCHES or method.rounding not in ROUNDINGS:
        raise ValueError(f"method {method.name!r}: unknown stage (scales {method.scales!r}, ranges {method.ranges!r}, "
                         f"rounding {method.rounding!r}; known: {RANGE_SEARCHES}, {ROUNDINGS})")
    METHODS[method.name] = method
    return method


def method_named(name: str) -> QuantMethod:
    m = METHODS.get(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"method must be one of {', '.join(repr(k) for k in METHODS)}, got {name!r}")
    return m


_AWQ_RULE = ("awq",)
register_method(QuantMethod("rtn", "round to nearest, each group's own min/max: the baseline"))
register_method(QuantMethod("awq", "AWQ: activation-aware scales folded into the previous op, clip search, round to "
                                   "nearest", scales="awq", ranges="clip"))
register_method(QuantMethod("gptq", "GPTQ: each column's rounding error compensated on the later columns through the "
                                    "inverse Hessian", rounding="gptq", rules=_AWQ_RULE))
register_method(QuantMethod("awq+gptq", "AWQ's scales and clip search, then GPTQ rounding within the clipped ranges",
                            scales="awq", ranges="clip", rounding="gptq", rules=_AWQ_RULE))
register_method(QuantMethod("imatrix", "range search weighted by E[x^2] per input channel (llama.cpp's imatrix "
                                       "objective), round to nearest", ranges="imatrix", rules=_AWQ_RULE))
register_method(QuantMethod("fold", "diagnostic: AWQ's scales searched and folded, weights kept in full precision "
                                    "(the model must compute what it did)", scales="awq", quantizes=False))
