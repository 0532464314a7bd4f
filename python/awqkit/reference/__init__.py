"""Pure-numpy reference implementations: the specification the native core is tested against.

Written independently of the C++ code, in the plainest numpy, favouring clarity over speed.
"""

from .gptq_ref import gptq_ref
from .packing import pack_awq_ref, unpack_awq_ref
from .quant import dequantize_ref, ggml_dequantize_ref, ggml_quantize_ref, pseudo_quantize_ref, quantize_ref
from .search_ref import (
    direct_loss_ref,
    scale_candidate_ref,
    search_clip_ref,
    search_clip_refit_ref,
    search_scale_ref,
    w_mean_ref,
    x_mean_ref,
)

__all__ = [
    "dequantize_ref",
    "direct_loss_ref",
    "ggml_dequantize_ref",
    "ggml_quantize_ref",
    "gptq_ref",
    "pack_awq_ref",
    "pseudo_quantize_ref",
    "quantize_ref",
    "scale_candidate_ref",
    "search_clip_ref",
    "search_clip_refit_ref",
    "search_scale_ref",
    "unpack_awq_ref",
    "w_mean_ref",
    "x_mean_ref",
]
