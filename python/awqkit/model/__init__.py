"""The model pipeline (needs the ``[torch]`` extra): calibration, layer-by-layer AWQ,
AutoAWQ gemm checkpoints, reload on the fused kernel, perplexity, the method comparison."""

# The oldest transformers the test suite has run on; pyproject.toml declares the same floor
# (tests/test_requirements.py keeps them equal). Older releases differ in the keywords we
# pass (from_pretrained/from_config take ``dtype=`` only from 4.56), so they are refused here
# with a message rather than failing somewhere inside a load.
TRANSFORMERS_FLOOR = "5.24"


def check_transformers_version(version: str) -> None:
    """``ImportError`` saying what to install when ``version`` is below the tested floor."""
    from packaging.version import Version

    if Version(version) < Version(TRANSFORMERS_FLOOR):
        raise ImportError(f"awqkit's model pipeline needs transformers>={TRANSFORMERS_FLOOR} (tested), found {version}: "
                          f"pip install 'transformers>={TRANSFORMERS_FLOOR}'")


def _installed_transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


check_transformers_version(_installed_transformers_version())

from .calibration import default_calibration_texts, get_calib_blocks, load_calibration_texts  # noqa: E402 (after the version check, on purpose)
from .checkpoint import check_output_folder, load_quantized, save_quantized  # noqa: E402 (after the version check, on purpose)
from .families import FAMILIES, ModelFamily, MoEExperts, layout_for, register_family  # noqa: E402 (after the version check, on purpose)
from .method_comparison import ComparisonResult, compare_methods  # noqa: E402 (after the version check, on purpose)
from .perplexity import evaluate_perplexity  # noqa: E402 (after the version check, on purpose)
from .pipeline import load_model, quantize_model, rtn_quantize_model  # noqa: E402 (after the version check, on purpose)
from .qlinear import AWQLinear, QuantizedLinear  # noqa: E402 (after the version check, on purpose)
from .report import QuantizationReport  # noqa: E402 (after the version check, on purpose)
from .streaming import StreamingUnsupported, quantize_to_checkpoint  # noqa: E402 (after the version check, on purpose)

__all__ = [
    "AWQLinear",
    "ComparisonResult",
    "FAMILIES",
    "ModelFamily",
    "MoEExperts",
    "QuantizationReport",
    "QuantizedLinear",
    "StreamingUnsupported",
    "check_output_folder",
    "compare_methods",
    "default_calibration_texts",
    "evaluate_perplexity",
    "get_calib_blocks",
    "layout_for",
    "load_calibration_texts",
    "load_model",
    "load_quantized",
    "quantize_model",
    "quantize_to_checkpoint",
    "register_family",
    "rtn_quantize_model",
    "save_quantized",
]
