"""awqkit: Activation-aware Weight Quantization with a fast C++ core.

The numpy API (quantizer, packing, search, kernels) needs only numpy; the model
pipeline (``awqkit.quantize_model`` and friends) needs the ``[torch]`` extra.
"""

import sys as _sys

from . import isa, scale_clip_search
from .config import AWQConfig
from .footprint import estimate_footprint
from .isa import active_isa, available_isas, detected_isa, isa_levels, num_threads, set_isa, use_amx, use_isa, use_threads
from .kernels import PackedLinear, contiguous_layers, gemm, int4_matmul
from .packing import AWQ_ORDER, pack_awq, unpack_awq
from .quantizer import QuantizedTensor, dequantize, pseudo_quantize, quantize
from .saliency import available_saliencies, register_saliency
from .scale_clip_search import ClipResult, ScaleSearchResult, apply_clip, scale_loss, search_clip, search_scale
from .scale_folding import fold_scale_into_linear_outputs, fold_scale_into_norm, scale_linear_inputs
from .stats import ActivationStats


def _read_version() -> str:
    """The version is written once, in pyproject.toml. An in-tree build (``make dev``,
    ``PYTHONPATH=python``) reads it there; an installed package from its metadata."""
    import re
    from importlib import metadata
    from pathlib import Path

    here = Path(__file__).resolve().parent
    pyproject = here.parents[1] / "pyproject.toml"
    if here.parent.name == "python" and pyproject.is_file():
        m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
        if m:
            return m.group(1)
    try:
        return metadata.version("awqkit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _read_version()

# Former module names, kept importable for code written against them: ``awqkit.search`` (now
# ``awqkit.scale_clip_search``) and ``awqkit._isa`` (now the public ``awqkit.isa``).
# Registered as aliases of the same module objects, not as files, so each name has one source.
search = scale_clip_search
_isa = isa
_sys.modules[__name__ + ".search"] = scale_clip_search
_sys.modules[__name__ + "._isa"] = isa

# The model pipeline imports torch and transformers: loaded on first use only, so
# ``import awqkit`` never needs them.
_MODEL_API = ("evaluate_perplexity", "load_quantized", "quantize_model", "quantize_to_checkpoint", "rtn_quantize_model",
              "save_quantized")


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
    "int4_matmul",
    "isa_levels",
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
