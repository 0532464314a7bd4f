"""Perplexity on a text: non-overlapping ``seqlen`` windows of the tokenised text, mean
token NLL, exp (the GPTQ/AWQ evaluation protocol)."""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F

__all__ = ["eval_windows", "evaluate_perplexity", "window_logits", "window_nll"]

log = logging.getLogger(__name__)


def eval_windows(tokenizer, text, seqlen: int = 512, max_tokens: int | None = None) -> tuple[torch.Tensor, int]:
    """The evaluation windows of ``text`` (see ``evaluate_perplexity``): an int64 tensor
    [n, seqlen] of non-overlapping windows of the tokenised text (its first ``max_tokens``
    tokens, rounded down to whole windows), and the number of tokens of the whole text."""
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 2:
        raise ValueError(f"seqlen must be an integer >= 2 (a window of one token predicts nothing), got {seqlen!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer or None, got {max_tokens!r}")
    if isinstance(text, str) and _looks_like_a_missing_path(text):
        # Otherwise the perplexity of the path string itself would be returned.
        raise FileNotFoundError(f"{text!r} looks like a file path but there is no such file: pass an existing "
                                "file, or the text itself")
    if isinstance(text, os.PathLike) or (isinstance(text, str) and len(text) < 4096 and os.path.isfile(text)):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    total = ids.numel()
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"text too short: {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: n * seqlen].view(n, seqlen), total


def window_logits(model, batch: torch.Tensor) -> torch.Tensor:
    """float32 logits [b, seqlen, vocab] of a batch of windows (no cache)."""
    return model(input_ids=batch, use_cache=False).logits.to(torch.float32)


def window_nll(logits: torch.Tensor, batch: torch.Tensor) -> float:
    """Summed next-token NLL of a batch of windows (positions 2..seqlen, predicted from the ones before)."""
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"))


@torch.no_grad()
def evaluate_perplexity(model, tokenizer, text, seqlen: int = 512, max_tokens: int | None = None, batch_size: int = 4) -> float:
    """Perplexity of ``model`` on ``text``: a ``pathlib.Path`` (always a file), a string
    naming an existing file, or the text itself.

    ``max_tokens`` bounds the evaluation to the first tokens of the text (rounded down to
    whole windows), so runs on a shared machine stay bounded; say so when quoting numbers.
    """
    windows, _ = eval_windows(tokenizer, text, seqlen, max_tokens)
    n = windows.shape[0]
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, n, batch_size):
        batch = windows[i : i + batch_size]
        nll += window_nll(window_logits(model, batch), batch)
        count += batch[:, 1:].numel()
    ppl = math.exp(nll / count)
    log.info("perplexity %.4f over %d windows of %d tokens", ppl, n, seqlen)
    return ppl


def _looks_like_a_missing_path(text: str) -> bool:
    # One word with a path separator (no spaces, no line breaks) is a path, not prose.
    return (len(text) < 4096 and not any(c.isspace() for c in text)
            and (os.sep in text or (os.altsep or os.sep) in text) and not os.path.exists(text))
