"""Calibration text -> token blocks, the way AutoAWQ's ``get_calib_dataset`` builds them.

Documents are shuffled with a seeded generator, stripped, empty ones and ones longer than
``seqlen`` tokens dropped, the first ``n_samples`` kept, concatenated and cut into
``seqlen``-token blocks (the tail that does not fill a block is dropped). Same inputs and
seed -> same blocks.

With no calibration given, the default is the English text of Python's own documentation
topics (``pydoc_data.topics``, part of the standard library every Python ships): offline,
always installed, and general technical English. Its paragraphs are the documents.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["default_calibration_texts", "get_calib_blocks", "load_calibration_texts"]

log = logging.getLogger(__name__)


def default_calibration_texts() -> list[str]:
    """Paragraphs of ``pydoc_data.topics`` (the stdlib's help() texts), in a fixed order."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    for key in sorted(topics):
        docs.extend(p for p in topics[key].split("\n\n") if len(p.split()) >= 8)
    return docs


def load_calibration_texts(calib) -> list[str]:
    """Documents from a list of strings, a ``.txt`` file (one document per line, as in
    line-based text datasets; empty lines are dropped later), a ``.jsonl`` file (the
    ``"text"`` field of each line), or ``None`` for the built-in default."""
    if calib is None:
        return default_calibration_texts()
    if isinstance(calib, (str, os.PathLike)):
        path = os.fspath(calib)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"calibration file not found: {path}")
        if path.endswith(".jsonl"):
            docs = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if not line.strip():
                        continue
                    obj = json.loads(line)
                    if "text" not in obj:
                        raise ValueError(f"{path}:{i + 1}: a calibration JSONL line needs a \"text\" field")
                    docs.append(str(obj["text"]))
            return docs
        with open(path, encoding="utf-8") as f:
            return f.read().replace("\r\n", "\n").split("\n")
    if isinstance(calib, Iterable):
        docs = list(calib)
        if not all(isinstance(d, str) for d in docs):
            raise TypeError("calibration must be a list of strings, a .txt/.jsonl path or None")
        return docs
    raise TypeError(f"calibration must be a list of strings, a .txt/.jsonl path or None, got {type(calib).__name__}")


def get_calib_blocks(tokenizer, calib=None, n_samples: int = 128, seqlen: int = 512, seed: int = 42) -> torch.Tensor:
    """int64 tensor [n_blocks, seqlen] of calibration tokens (see module docstring)."""
    docs = load_calibration_texts(calib)
    order = np.random.default_rng(seed).permutation(len(docs))
    samples: list[list[int]] = []
    dropped_long = 0
    for i in order:
        line = docs[i].strip()
        if not line:
            continue
        ids = tokenizer.encode(line)
        if len(ids) > seqlen:
            dropped_long += 1
            continue
        if not ids:
            continue
        samples.append(ids)
        if len(samples) == n_samples:
            break
    flat = [t for s in samples for t in s]
    n_blocks = len(flat) // seqlen
    if n_blocks == 0:
        raise ValueError(
            f"calibration too small: {len(samples)} documents give {len(flat)} tokens, fewer than one block of "
            f"seqlen={seqlen} ({dropped_long} documents longer than seqlen were dropped)"
        )
    log.info("calibration: %d documents, %d tokens -> %d blocks of %d (%d over-long dropped)",
             len(samples), len(flat), n_blocks, seqlen, dropped_long)
    return torch.tensor(flat[: n_blocks * seqlen], dtype=torch.long).view(n_blocks, seqlen)
