"""Pure-numpy reference implementations: the specification the native core is tested against.

Written independently of the C++ code, in the plainest numpy, favouring clarity over speed.
"""

from .packing import pack_awq_ref, unpack_awq_ref
from .quant import dequantize_ref, pseudo_quantize_ref, quantize_ref

__all__ = ["dequantize_ref", "pack_awq_ref", "pseudo_quantize_ref", "quantize_ref", "unpack_awq_ref"]
