"""awqkit: Activation-aware Weight Quantization with a fast C++ core.

The numpy API (quantizer, packing, search, kernels) needs only numpy; the model
pipeline (``awqkit.quantize_model`` and friends) needs the ``[torch]`` extra.
"""

from ._isa import active_isa, available_isas, detected_isa, num_threads, set_isa, use_isa, use_threads
from .kernels import PackedLinear, gemm
from .packing import AWQ_ORDER, pack_awq, unpack_awq
from .quantizer import QuantizedTensor, dequantize, pseudo_quantize, quantize

__version__ = "0.1.0"

__all__ = [
    "AWQ_ORDER",
    "PackedLinear",
    "QuantizedTensor",
    "active_isa",
    "available_isas",
    "dequantize",
    "detected_isa",
    "gemm",
    "num_threads",
    "pack_awq",
    "pseudo_quantize",
    "quantize",
    "set_isa",
    "unpack_awq",
    "use_isa",
    "use_threads",
]
