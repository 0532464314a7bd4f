"""The model pipeline (needs the ``[torch]`` extra): calibration, layer-by-layer AWQ,
AutoAWQ gemm checkpoints, reload on the fused kernel, perplexity."""

from .calibration import default_calibration_texts, get_calib_blocks, load_calibration_texts
from .checkpoint import load_quantized, save_quantized
from .mappings import PRESETS, layout_for
from .perplexity import evaluate_perplexity
from .pipeline import load_model, quantize_model, rtn_quantize_model
from .qlinear import AWQLinear, QuantizedLinear
from .report import QuantizationReport

__all__ = [
    "AWQLinear",
    "PRESETS",
    "QuantizationReport",
    "QuantizedLinear",
    "default_calibration_texts",
    "evaluate_perplexity",
    "get_calib_blocks",
    "layout_for",
    "load_calibration_texts",
    "load_model",
    "load_quantized",
    "quantize_model",
    "rtn_quantize_model",
    "save_quantized",
]
