"""Perplexity on a text: non-overlapping ``seqlen`` windows of the tokenised text, mean
token NLL, exp (the GPTQ/AWQ evaluation protocol)."""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn.functional as F

__all__ = ["evaluate_perplexity"]

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_perplexity(model, tokenizer, text, seqlen: int = 512, max_tokens: int | None = None, batch_size: int = 4) -> float:
    """Perplexity of ``model`` on ``text`` (a string or a path to a text file).

    ``max_tokens`` bounds the evaluation to the first tokens of the text (rounded down to
    whole windows), so runs on a shared machine stay bounded; say so when quoting numbers.
    """
    if isinstance(text, os.PathLike) or (isinstance(text, str) and len(text) < 4096 and os.path.isfile(text)):
        with open(text, encoding="utf-8") as f:
            text = f.read()
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel() // seqlen
    if n == 0:
        raise ValueError(f"text too short: {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: n * seqlen].view(n, seqlen)
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, n, batch_size):
        batch = windows[i : i + batch_size]
        logits = model(input_ids=batch, use_cache=False).logits.to(torch.float32)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
        nll += float(loss)
        count += batch[:, 1:].numel()
    ppl = math.exp(nll / count)
    log.info("perplexity %.4f over %d windows of %d tokens", ppl, n, seqlen)
    return ppl
