"""awqkit: Activation-aware Weight Quantization with a fast C++ core.

The numpy API (quantizer, packing, search, kernels) needs only numpy; the model
pipeline (``awqkit.quantize_model`` and friends) needs the ``[torch]`` extra.
"""

from ._isa import active_isa, available_isas, detected_isa, num_threads, set_isa, use_amx, use_isa, use_threads
from .config import AWQConfig
from .folding import fold_scale_into_linear_outputs, fold_scale_into_norm, scale_linear_inputs
from .footprint import estimate_footprint
from .kernels import PackedLinear, contiguous_layers, gemm
from .packing import AWQ_ORDER, pack_awq, unpack_awq
from .quantizer import QuantizedTensor, dequantize, pseudo_quantize, quantize
from .saliency import available_saliencies, register_saliency
from .search import ClipResult, ScaleSearchResult, apply_clip, scale_loss, search_clip, search_scale
from .stats import ActivationStats

__version__ = "0.1.0"

# The model pipeline imports torch and transformers: loaded on first use only, so
# ``import awqkit`` never needs them.
_MODEL_API = ("evaluate_perplexity", "load_quantized", "quantize_model", "rtn_quantize_model", "save_quantized")


def __getattr__(name):
    if name in _MODEL_API:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'awqkit' has no attribute {name!r}")


# The lazily loaded model API (_MODEL_API) is left out so that `from awqkit import *` stays torch-free.
__all__ = [
    "AWQConfig",
    "AWQ_ORDER",
    "ActivationStats",
    "ClipResult",
    "PackedLinear",
    "QuantizedTensor",
    "ScaleSearchResult",
    "active_isa",
    "apply_clip",
    "available_isas",
    "contiguous_layers",
    "available_saliencies",
    "dequantize",
    "detected_isa",
    "estimate_footprint",
    "fold_scale_into_linear_outputs",
    "fold_scale_into_norm",
    "gemm",
    "num_threads",
    "pack_awq",
    "pseudo_quantize",
    "quantize",
    "register_saliency",
    "scale_linear_inputs",
    "scale_loss",
    "search_clip",
    "search_scale",
    "set_isa",
    "unpack_awq",
    "use_amx",
    "use_isa",
    "use_threads",
]
