"""Where awqkit finds the offline model and text fixtures (``../shared/data``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir"]


def data_dir() -> Path | None:
    """``$AWQKIT_DATA_DIR`` if set, else ``../shared/data`` beside the working directory or
    the source checkout; None when neither exists."""
    env = os.environ.get("AWQKIT_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None
