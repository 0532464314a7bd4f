"""Shared pieces of the model-pipeline tests (stories260K, small calibration)."""

from __future__ import annotations

import awqkit

STORIES = "stories260K-hf"
# Small but real: 32 C4 documents cut into 256-token blocks (about 20 blocks), so the whole
# model suite stays well under a minute on two cores.
CALIB_KW = dict(n_samples=32, seqlen=256)


def stories_config(**kw) -> awqkit.AWQConfig:
    base = dict(bits=4, group_size=32, **CALIB_KW)
    base.update(kw)
    return awqkit.AWQConfig(**base)


def checkpoint_tensors(folder):
    """Every tensor of a checkpoint folder's safetensors files, by name."""
    from pathlib import Path

    from safetensors import safe_open

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def autoawq_module(relative: str):
    """One file of AutoAWQ (autoawq 0.2.9, installed --no-deps by `make install`), e.g.
    "utils/packing_utils.py", loaded from its path: the package's __init__ needs CUDA kernels,
    accelerate and datasets, the files the tests use are pure torch."""
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.find_spec("awq")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("autoawq is not installed: pip install --no-deps autoawq==0.2.9 (the [test] extra)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    mspec = importlib.util.spec_from_file_location("autoawq_" + path.stem, path)
    assert mspec is not None and mspec.loader is not None
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod
