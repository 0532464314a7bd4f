"""Shared fixtures: every available ISA, the shared data folder, seeded RNGs."""

from __future__ import annotations

import numpy as np
import pytest

import awqkit
from awqkit.data import data_dir as _find_data_dir


@pytest.fixture(params=awqkit.available_isas())
def isa(request):
    """Runs the test once per ISA this CPU has, with the kernels forced to it."""
    with awqkit.use_isa(request.param):
        yield request.param


@pytest.fixture(scope="session")
def data_dir():
    """../shared/data (or $AWQKIT_DATA_DIR). Tests that need it fail loudly without it:
    CI always has it, and a silently skipped test proves nothing."""
    d = _find_data_dir()
    if d is None:
        pytest.fail("shared test data not found: set AWQKIT_DATA_DIR to the shared/data folder")
    return d


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
