"""The transformers floor pyproject.toml declares is the one the suite runs on and the one
awqkit.model enforces at import."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
from packaging.version import Version

import awqkit.model


def _declared_floor() -> str:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    specs = [s for s in pyproject["project"]["optional-dependencies"]["torch"] if s.startswith("transformers")]
    assert len(specs) == 1, specs
    m = re.fullmatch(r"transformers>=([0-9.]+)", specs[0].replace(" ", ""))
    assert m, f"expected a plain floor, got {specs[0]!r}"
    return m.group(1)


def test_declared_floor_is_enforced_and_installed():
    floor = _declared_floor()
    assert floor == awqkit.model.TRANSFORMERS_FLOOR
    assert Version(version("transformers")) >= Version(floor)  # the suite itself runs on a supported version


def test_an_older_transformers_is_refused_with_what_to_install():
    with pytest.raises(ImportError, match=r"needs transformers>=.* found 4\.51\.0: pip install"):
        awqkit.model.check_transformers_version("4.51.0")
    awqkit.model.check_transformers_version(awqkit.model.TRANSFORMERS_FLOOR)
