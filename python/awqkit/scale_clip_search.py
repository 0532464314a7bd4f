"""The AWQ search: per-channel scales (``search_scale``) and per-group clipping (``search_clip``).

Both reproduce AutoAWQ (``_search_best_scale``, ``_compute_best_clip``) on their own
objective, but evaluate it as a quadratic form of the Gram matrix ``X^T X`` in native
code, so one candidate costs O(N K^2) (scales) or O(N K gs) (clipping) whatever the
number of calibration tokens. ``awqkit.reference`` holds the step-by-step numpy version
the tests hold this to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _core
from ._checks import as_weight, check_bits, check_int, check_scale_dtype, resolve_group_size
from .gguf_blocks import rule_id
from .isa import amx_active, amx_supported, use_amx  # re-exported: the search's AMX-BF16 loss
from .saliency import compute_saliency
from .stats import ActivationStats, as_activations

__all__ = [
    "ClipResult",
    "ScaleSearchResult",
    "amx_active",
    "amx_supported",
    "apply_clip",
    "scale_loss",
    "search_clip",
    "search_scale",
    "use_amx",
]


@dataclass(frozen=True)
class ScaleSearchResult:
    """Outcome of :func:`search_scale`, with the whole curve.

    ``scales`` float32 [K] are the winning candidate (multiply the weights' input columns
    by them and divide the previous op's outputs by them). Candidate ``c`` has ratio
    ``ratios[c]``, family ``duo[c]`` (duo scaling or plain ``x_mean^r``), ``identity[c]``
    (s = 1) and loss ``losses[c]``; ``candidates[c]`` is its scale vector. ``excluded[c]``:
    the scaled weights ``W diag(s)`` of candidate ``c`` need a group scale beyond the scale
    dtype's range (float16: 65504), so the candidate cannot be stored; its loss is +inf and it
    is never chosen (AutoAWQ never picks one either: its loss is NaN there).
    """

    scales: np.ndarray
    ratio: float
    loss: float
    rtn_loss: float
    best: int
    ratios: np.ndarray
    losses: np.ndarray
    duo: np.ndarray
    identity: np.ndarray
    candidates: np.ndarray = field(repr=False)
    saliency: np.ndarray = field(repr=False)
    w_mean: np.ndarray = field(repr=False)
    excluded: np.ndarray | None = field(default=None, repr=False)

    @property
    def best_is_duo(self) -> bool:
        return bool(self.duo[self.best])

    @property
    def best_is_identity(self) -> bool:
        return bool(self.identity[self.best])

    @property
    def improvement(self) -> float:
        """Relative loss reduction over plain rounding: 1 - loss / rtn_loss."""
        return 1.0 - self.loss / self.rtn_loss if self.rtn_loss > 0 else 0.0


@dataclass(frozen=True)
class ClipResult:
    """Outcome of :func:`search_clip`.

    ``max_val`` float32 [N, G]: clamp each group to [-max_val, max_val] (``min_val`` is
    -max_val, or the separately searched lower bound with ``asymmetric=True``).
    ``loss_before``/``loss_after``: the clip objective (mean over groups of the mean
    squared error of the group's partial dot products) without and with clipping;
    ``group_loss_*`` are its per-group values, ``shrink`` the chosen grid index i
    (max_val = absmax * (1 - i / n_grid)). With ``refit_scales`` (GGUF rules): ``scales``
    (and ``offsets``, Q4_1's minimum) float32 [N, G], the stored float16 values each group
    keeps with ``codes`` uint8 [N, K]; ``shrink`` -1 marks the plain candidate, -1 - k the
    expanded scale 1 + k/80.
    """

    max_val: np.ndarray
    min_val: np.ndarray
    loss_before: float
    loss_after: float
    shrink: np.ndarray
    shrink_min: np.ndarray = field(repr=False)
    group_loss_before: np.ndarray = field(repr=False)
    group_loss_after: np.ndarray = field(repr=False)
    n_tokens: int = 0
    asymmetric: bool = False
    scales: np.ndarray | None = field(default=None, repr=False)
    offsets: np.ndarray | None = field(default=None, repr=False)
    codes: np.ndarray | None = field(default=None, repr=False)


def _weights_list(weights) -> list[np.ndarray]:
    if isinstance(weights, np.ndarray):
        weights = [weights]
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list of 2-D arrays [N_i, K], got {type(weights).__name__}")
    if not weights:
        raise ValueError("weights is empty: pass the list of linears that share this input")
    out = [as_weight(w, f"weights[{i}]") for i, w in enumerate(weights)]
    k = out[0].shape[1]
    for i, w in enumerate(out):
        if w.shape[1] != k:
            raise ValueError(f"weights[{i}] has K = {w.shape[1]} input features but weights[0] has {k} (mismatched K)")
        if w.shape[0] == 0:
            raise ValueError(f"weights[{i}] has no rows")
    return [np.ascontiguousarray(w) for w in out]


def _gram_stats(x, k: int) -> ActivationStats:
    """ActivationStats with a Gram matrix, from activations or as given."""
    if isinstance(x, ActivationStats):
        if x.in_features != k:
            raise ValueError(f"the statistics are for K = {x.in_features} but the weights have K = {k} (mismatched K)")
        if not x.has_gram:
            raise ValueError("the search needs the Gram matrix: collect the statistics with ActivationStats(K, gram=True)")
        if x.n_tokens == 0:
            raise ValueError("no calibration tokens (empty calibration set)")
        return x
    x = as_activations(x, k)
    if x.shape[0] == 0:
        raise ValueError("x has no tokens (empty calibration set)")
    return ActivationStats(k, gram=True).update(np.ascontiguousarray(x))


def search_scale(
    x,
    weights,
    *,
    bits: int = 4,
    group_size: int = 128,
    zero_point: bool = True,
    n_grid: int = 20,
    duo_scaling=True,
    include_identity: bool = True,
    saliency="mean_abs",
    scale_dtype: str = "float16",
    rule: str = "awq",
    _part: tuple[int, int] = (0, 1),
) -> ScaleSearchResult:
    """Search AWQ's per-input-channel scales for the linears ``weights`` sharing input ``x``.

    ``x``: activations [tokens, K] (float32/float16) or an :class:`ActivationStats` with
    ``gram=True``. ``weights``: list of [N_i, K] (q/k/v, gate/up, ...). For ratio
    r = k/n_grid, k < n_grid: duo ``s = max(sal^r / (w_mean^(1-r) + 1e-4), 1e-4)``, plain
    ``s = max(sal^r, 1e-4)``; ``s /= sqrt(max(s) min(s))``; non-finite -> 1. ``sal`` is the
    saliency (``"mean_abs"`` = AWQ's x_mean; see :mod:`awqkit.saliency`), ``w_mean`` the
    mean over rows of |w| / group abs-max. Loss = mean over tokens and all outputs of
    ``(x W^T - x (Q(W diag(s)) / s)^T)^2``. ``duo_scaling="both"`` searches both families
    (duo first); ``include_identity`` appends s = 1. Lowest loss wins, ties keep the earlier.

    The weights must be quantizable as they are (the rule of :func:`awqkit.quantize`: every
    group scale fits the scale dtype) and the activations must keep the search's float32
    arithmetic finite; otherwise ``ValueError`` says which and what to do. Candidates whose
    scaled weights would need a group scale beyond the scale dtype are excluded (see
    :class:`ScaleSearchResult`); if that leaves none, ``ValueError``. ``rule``: the rounding
    rule Q rounds with (:func:`awqkit.quantize`; a GGUF type such as ``"q4_0"`` searches for
    exactly what that type stores).

    ``_part=(i, n)`` (a search split among processes: ``awqkit.model.mapping_search``) scores
    only the candidates c with c % n == i; the others' losses are NaN and ``best`` is -1 when
    none of this part's can be stored.
    """
    ws = _weights_list(weights)
    k = ws[0].shape[1]
    bits = check_bits(bits)
    gs = resolve_group_size(group_size, k)
    fp16 = check_scale_dtype(scale_dtype)
    n_grid = check_int("n_grid", n_grid, 1)
    if duo_scaling == "both":
        duo, plain = True, True
    elif isinstance(duo_scaling, (bool, np.bool_)):
        duo, plain = bool(duo_scaling), not bool(duo_scaling)
    else:
        raise ValueError(f"duo_scaling must be True, False or 'both', got {duo_scaling!r}")
    stats = _gram_stats(x, k)
    sal = compute_saliency(saliency, stats, ws)
    part, parts = _part
    out = _core.search_scale(
        ws, stats._impl, -1, sal, bits, gs, bool(zero_point), fp16, n_grid, duo, plain, bool(include_identity),
        rule_id(rule), part, parts,
    )
    best = int(out["best"])
    return ScaleSearchResult(
        scales=out["candidates"][best].copy(),
        ratio=float(out["ratios"][best]),
        loss=float(out["losses"][best]),
        rtn_loss=float(out["rtn_loss"]),
        best=best,
        ratios=out["ratios"],
        losses=out["losses"],
        duo=out["duo"].astype(bool),
        identity=out["identity"].astype(bool),
        candidates=out["candidates"],
        saliency=sal,
        w_mean=out["w_mean"],
        excluded=out["excluded"].astype(bool),
    )


def scale_loss(x, weights, scales, *, bits: int = 4, group_size: int = 128, zero_point: bool = True, scale_dtype: str = "float16",
               rule: str = "awq", _require_storable: bool = True):
    """The search objective for given ``scales`` [K] (or [C, K] -> C losses), natively via the Gram matrix.

    A candidate whose scaled weights would need a group scale beyond the scale dtype's range
    cannot be stored: its loss is +inf, as in :func:`search_scale`; ``ValueError`` when that
    holds for every given candidate (so for a single [K] vector), or when the weights or the
    activations break the rules :func:`search_scale` states."""
    ws = _weights_list(weights)
    k = ws[0].shape[1]
    bits = check_bits(bits)
    gs = resolve_group_size(group_size, k)
    fp16 = check_scale_dtype(scale_dtype)
    s = np.asarray(scales)
    single = s.ndim == 1
    s = np.ascontiguousarray(np.atleast_2d(s), dtype=np.float32)
    if s.ndim != 2 or s.shape[1] != k:
        raise ValueError(f"scales must be [K] or [C, K] with K = {k}, got shape {np.shape(scales)}")
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError("scales must be finite and positive")
    stats = _gram_stats(x, k)
    losses = _core.scale_losses(ws, stats._impl, -1, s, bits, gs, bool(zero_point), fp16, rule_id(rule),
                                _require_storable)["losses"]
    return float(losses[0]) if single else losses


def search_clip(
    x,
    w,
    *,
    bits: int = 4,
    group_size: int = 128,
    zero_point: bool = True,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    n_sample_tokens: int | None = 512,
    asymmetric: bool = False,
    scale_dtype: str = "float16",
    rule: str = "awq",
    refit_scales: bool = False,
    n_expand: int = 0,
) -> ClipResult:
    """Search AWQ's per-group clipping of ``w`` [N, K] on activations ``x`` [tokens, K].

    AutoAWQ's auto_clip: tokens ``x[::max(1, T // n_sample_tokens)]``; for every (row, group)
    try ``max_val = absmax * (1 - i/n_grid)``, i < int(max_shrink * n_grid), clamp to
    [-max_val, max_val], quantize, keep the lowest mean squared error of the group's partial
    dot products (strictly lower than the previous best, starting from 1e9 as the reference
    does). ``n_sample_tokens=None`` uses every token exactly (``x`` may then be an
    :class:`ActivationStats` with a Gram matrix). ``asymmetric=True`` searches the upper
    bound ``max * f_i`` and lower bound ``min * f_j`` separately (n^2 candidates).

    ``w`` must be quantizable as it is (the rule of :func:`awqkit.quantize`) and the
    activations must keep the search's float32 arithmetic finite; otherwise ``ValueError``.

    ``rule``: the rounding rule (a GGUF type such as ``"q4_0"`` clips for exactly what that type
    stores). ``refit_scales`` (GGUF rules only): each candidate's stored scale (and Q4_1
    minimum) is refit by least squares under the group's Gram block for its codes, and the
    plain quantization competes too; ``n_expand`` adds the codes of the plain scale times
    1 + k/80 (k = 1..n_expand, no clamping), refit the same way. The chosen codes and stored
    values are in ``codes``, ``scales`` and ``offsets`` (llama.cpp's imatrix quantizer refits
    such candidates with the Gram's diagonal).
    """
    w = np.ascontiguousarray(as_weight(w))
    n, k = w.shape
    bits = check_bits(bits)
    gs = resolve_group_size(group_size, k)
    fp16 = check_scale_dtype(scale_dtype)
    n_grid = check_int("n_grid", n_grid, 1)
    if not isinstance(max_shrink, (int, float, np.floating)) or isinstance(max_shrink, bool):
        raise TypeError(f"max_shrink must be a number, got {type(max_shrink).__name__}")
    n_shrink = int(max_shrink * n_grid)
    if not 0 < max_shrink <= 1 or n_shrink < 1:
        raise ValueError(f"max_shrink * n_grid must allow at least one shrink (max_shrink in (0, 1]), got {max_shrink}")
    if isinstance(x, ActivationStats):
        if n_sample_tokens is not None:
            raise ValueError("token sampling needs the raw activations; with ActivationStats pass n_sample_tokens=None (exact)")
        stats = _gram_stats(x, k)
        blocks = _core.group_gram_blocks(stats._impl, 1, gs)
        n_used = stats.n_tokens
    else:
        x = np.ascontiguousarray(as_activations(x, k))
        t = x.shape[0]
        if t == 0:
            raise ValueError("x has no tokens (empty calibration set)")
        if n_sample_tokens is None:
            step = 1
        else:
            n_sample_tokens = check_int("n_sample_tokens", n_sample_tokens, 1)
            step = max(1, t // n_sample_tokens)
        n_used = -(-t // step)
        blocks = _core.group_gram_blocks(x, step, gs)
    out = _core.search_clip(w, blocks, n_used, bits, gs, bool(zero_point), fp16, n_grid, n_shrink, bool(asymmetric),
                            rule_id(rule), bool(refit_scales), check_int("n_expand", n_expand, 0))
    return ClipResult(
        max_val=out["max_val"],
        min_val=out["min_val"],
        loss_before=float(out["err_before"].mean()),
        loss_after=float(out["err_after"].mean()),
        shrink=out["shrink_max"],
        shrink_min=out["shrink_min"],
        group_loss_before=out["err_before"],
        group_loss_after=out["err_after"],
        n_tokens=int(n_used),
        asymmetric=bool(asymmetric),
        scales=out.get("scale"),
        offsets=out.get("offset") if zero_point else None,
        codes=out.get("codes"),
    )


def apply_clip(w, max_val, min_val=None) -> np.ndarray:
    """Clamp each group of ``w`` [N, K] to [-max_val, max_val] (or [min_val, max_val]); same dtype as ``w``.

    ``max_val`` [N, G] (a :class:`ClipResult` is accepted and supplies both bounds).
    """
    if isinstance(max_val, ClipResult):
        max_val, min_val = max_val.max_val, max_val.min_val
    w = as_weight(w)
    n, k = w.shape
    max_val = np.asarray(max_val, dtype=np.float32)
    if max_val.ndim != 2 or max_val.shape[0] != n or max_val.shape[1] == 0 or k % max_val.shape[1]:
        raise ValueError(f"max_val must be [N, G] with N = {n} and G dividing K = {k}, got shape {max_val.shape}")
    g = max_val.shape[1]
    lo = -max_val if min_val is None else np.asarray(min_val, dtype=np.float32)
    if lo.shape != max_val.shape:
        raise ValueError(f"min_val must have the shape of max_val {max_val.shape}, got {lo.shape}")
    grouped = w.astype(np.float32).reshape(n, g, k // g)
    clipped = np.minimum(np.maximum(grouped, lo[..., None]), max_val[..., None])
    return clipped.reshape(n, k).astype(w.dtype)
