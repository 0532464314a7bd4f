"""Reference AWQ searches, step by step as AutoAWQ's quantizer.py does them.

``search_scale_ref`` follows ``_search_best_scale`` with the linears themselves as the
inspected module: it runs the linears on every calibration token for every candidate and
takes the mean squared output error directly (no Gram matrix). ``search_clip_ref``
follows ``_compute_best_clip``: stride-sampled tokens, output-channel batches, partial
dot products per group. Plain numpy, independent of the native code; slow by design.
``dtype`` is the compute precision of the matmuls (float64 by default, so the reference
is the precise specification; AutoAWQ itself computes in float16/float32).
"""

from __future__ import annotations

import numpy as np

from .quant import pseudo_quantize_ref


def x_mean_ref(x: np.ndarray) -> np.ndarray:
    """Per-channel mean |x| over all tokens."""
    return np.abs(x.reshape(-1, x.shape[-1]).astype(np.float64)).mean(axis=0)


def w_mean_ref(weights, group_size: int) -> np.ndarray:
    """Concatenate along N, |w| / (group abs-max + 1e-6), mean over rows."""
    weight = np.concatenate([np.asarray(w, dtype=np.float64) for w in weights], axis=0)
    org_shape = weight.shape
    gs = org_shape[1] if group_size == -1 else group_size
    weight = weight.reshape(-1, gs)
    w_scale = np.abs(weight) / (np.abs(weight).max(axis=1, keepdims=True) + 1e-6)
    return w_scale.reshape(org_shape).mean(axis=0)


def scale_candidate_ref(x_mean: np.ndarray, w_mean: np.ndarray, ratio: float, duo: bool) -> np.ndarray:
    if duo:
        scales = np.maximum(x_mean**ratio / (w_mean ** (1 - ratio) + 1e-4), 1e-4)
    else:
        scales = np.maximum(x_mean**ratio, 1e-4)
    with np.errstate(invalid="ignore", divide="ignore"):
        scales = scales / np.sqrt(scales.max() * scales.min())
    scales[np.isinf(scales)] = 1
    scales[np.isnan(scales)] = 1
    return scales.astype(np.float32)


def direct_loss_ref(x, weights, scales, bits=4, group_size=128, zero_point=True, scale_dtype="float16", dtype=np.float64, org_out=None,
                    rule="awq"):
    """mean((x W^T - x Wq^T)^2) over tokens and all outputs, Wq = Q(W * s) / s (float32)."""
    s = np.asarray(scales, dtype=np.float32)[None, :]
    xc = x.astype(dtype)
    total, count = 0.0, 0
    for i, w in enumerate(weights):
        w = np.asarray(w, dtype=np.float32)
        wq = pseudo_quantize_ref(w * s, bits, group_size, zero_point, scale_dtype, rule) / s
        fp_out = xc @ w.astype(dtype).T if org_out is None else org_out[i]
        q_out = xc @ wq.astype(dtype).T
        total += float(np.sum((fp_out - q_out).astype(np.float64) ** 2))
        count += fp_out.size
    return total / count


def search_scale_ref(x, weights, bits=4, group_size=128, zero_point=True, n_grid=20, duo_scaling=True,
                     include_identity=True, x_mean=None, scale_dtype="float16", dtype=np.float64, max_candidates=None,
                     rule="awq"):
    """Returns dict(scales, ratio, best, loss, rtn_loss, ratios, losses, duo, identity).

    Candidate order: duo family, then plain family (``duo_scaling="both"``), then s = 1.
    ``max_candidates`` evaluates only the first candidates (for timing the reference on big shapes).
    """
    x = np.asarray(x).reshape(-1, np.asarray(x).shape[-1]).astype(np.float32)
    if x_mean is None:
        x_mean = x_mean_ref(x)
    w_mean = w_mean_ref(weights, group_size)
    families = {True: [True], False: [False], "both": [True, False]}[duo_scaling]
    cands = []
    for duo in families:
        for r in range(n_grid):
            ratio = r / n_grid
            cands.append((ratio, duo, False, scale_candidate_ref(x_mean, w_mean, ratio, duo)))
    cands.append((0.0, False, True, np.ones(x.shape[1], dtype=np.float32)))
    if max_candidates is not None:
        cands = cands[:max_candidates]
    xc = x.astype(dtype)
    org_out = [xc @ np.asarray(w, dtype=np.float32).astype(dtype).T for w in weights]  # computed once, as AutoAWQ
    losses = [direct_loss_ref(x, weights, s, bits, group_size, zero_point, scale_dtype, dtype, org_out, rule) for *_, s in cands]
    rtn_loss = losses[-1]
    if not include_identity and max_candidates is None:
        cands, losses = cands[:-1], losses[:-1]
    best, best_error = -1, float("inf")
    for i, loss in enumerate(losses):
        if loss < best_error:  # strict: ties keep the earlier candidate
            best, best_error = i, loss
    return {
        "scales": cands[best][3],
        "ratio": cands[best][0],
        "best": best,
        "loss": best_error,
        "rtn_loss": rtn_loss,
        "ratios": np.array([c[0] for c in cands]),
        "losses": np.array(losses),
        "duo": np.array([c[1] for c in cands]),
        "identity": np.array([c[2] for c in cands]),
    }


def search_clip_ref(x, w, bits=4, group_size=128, zero_point=True, n_grid=20, max_shrink=0.5, n_sample_token=512,
                    scale_dtype="float16", dtype=np.float64, rule="awq"):
    """AutoAWQ's _compute_best_clip. Returns (best_max_val [N, G] float32, err_before [N, G], err_after [N, G]).

    ``n_sample_token=None`` uses every token.
    """
    w = np.asarray(w, dtype=np.float32)
    org_w_shape = w.shape
    gs = org_w_shape[1] if group_size == -1 else group_size
    input_feat: np.ndarray = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, gs)
    step_size = 1 if n_sample_token is None else max(1, input_feat.shape[1] // n_sample_token)
    input_feat = input_feat[:, ::step_size].astype(dtype)
    w = w.reshape(org_w_shape[0], 1, -1, gs)
    oc_batch_size = 64
    best_all, before_all, after_all = [], [], []
    for i_b in range(0, org_w_shape[0], oc_batch_size):
        wb = w[i_b:i_b + oc_batch_size]
        org_max_val = np.abs(wb).max(axis=-1, keepdims=True)  # co, 1, n_group, 1
        best_max_val = org_max_val.copy()
        min_errs = np.ones_like(org_max_val, dtype=np.float64) * 1e9
        org_out = (input_feat * wb.astype(dtype)).sum(axis=-1)  # co, n_token, n_group
        err_before = None
        best_err = np.zeros_like(min_errs)
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max_val * np.float32(1 - i_s / n_grid)
            min_val = -max_val
            cur_w = np.clip(wb, min_val, max_val)
            q_w = pseudo_quantize_ref(cur_w.reshape(-1, gs), bits, -1, zero_point, scale_dtype, rule).reshape(cur_w.shape)
            cur_out = (input_feat * q_w.astype(dtype)).sum(axis=-1)
            err = ((cur_out - org_out) ** 2).mean(axis=1).reshape(min_errs.shape)
            if err_before is None:
                err_before = err.copy()
                best_err = err.copy()
            cur_best_idx = err < min_errs
            min_errs[cur_best_idx] = err[cur_best_idx]
            best_err[cur_best_idx] = err[cur_best_idx]
            best_max_val[cur_best_idx] = max_val[cur_best_idx]
        best_all.append(best_max_val)
        before_all.append(err_before)
        after_all.append(best_err)
    squeeze = lambda parts: np.concatenate(parts, axis=0).reshape(org_w_shape[0], -1)  # noqa: E731
    return squeeze(best_all).astype(np.float32), squeeze(before_all), squeeze(after_all)


def _expanded_codes_ref(row, rule, f):
    """The codes of the GGUF reference with its scale times ``f`` (> 1, no clamping)."""
    f32 = np.float32
    with np.errstate(divide="ignore"):
        if rule == "q4_0":
            mx = row[np.argmax(np.abs(row))]
            d = (mx / f32(-8)) * f32(f)
            inv = f32(1) / d if d != 0 else f32(0)
            return np.minimum(15, np.trunc(row * inv + f32(8.5)).astype(np.int32)).astype(np.uint8)
        if rule == "q4_1":
            lo = row.min()
            d = ((row.max() - lo) / f32(15)) * f32(f)
            inv = f32(1) / d if d != 0 else f32(0)
            return np.minimum(15, np.trunc((row - lo) * inv + f32(0.5)).astype(np.int32)).astype(np.uint8)
        d = (np.abs(row).max() / f32(127)) * f32(f)
        inv = f32(1) / d if d != 0 else f32(0)
        v = row * inv
        q = np.where(v >= 0, np.floor(v + f32(0.5)), np.ceil(v - f32(0.5)))
        return (q.astype(np.int32) + 128).astype(np.uint8)


def search_clip_refit_ref(x, w, rule, n_grid=20, max_shrink=0.5, n_sample_token=512, n_expand=0):
    """The clip search with the GGUF scale refit (``search_clip(..., refit_scales=True)``),
    group by group in float64: candidates max|w| * (1 - i/n_grid), i < int(max_shrink*n_grid),
    clamp symmetric, quantize with the GGUF reference, refit d (Q4_1: d and m) by least squares
    under the group's Gram block H = X_g^T X_g of the sampled tokens, round to float16; then the
    codes of the plain scale times 1 + k/80, k = 1..n_expand (refit; the plain values when the
    fit is degenerate); then the plain quantization (no clip, no refit). The first lowest
    e^T H e / n wins. Returns (max_val, min_val, scales, offsets or None, err_before, err_after,
    each [N, G], and the chosen codes [N, K])."""
    from .quant import ggml_dequantize_ref, ggml_quantize_ref

    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    g_count = k // 32
    x = np.asarray(x, dtype=np.float32).reshape(-1, k)
    step = 1 if n_sample_token is None else max(1, x.shape[0] // n_sample_token)
    xs = x[::step].astype(np.float64)
    t = xs.shape[0]
    has_min = rule == "q4_1"
    zero = {"q4_0": 8, "q4_1": 0, "q8_0": 128}[rule]
    shape = (n, g_count)
    max_val, min_val = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    scales, offsets = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    before, after = np.zeros(shape), np.zeros(shape)
    chosen = np.zeros((n, k), np.uint8)
    n_shrink = int(max_shrink * n_grid)
    for g in range(g_count):
        xg = xs[:, g * 32:(g + 1) * 32]
        h = xg.T @ xg
        for r in range(n):
            row = w[r, g * 32:(g + 1) * 32]
            amax = np.float32(np.abs(row).max())
            cands: list[tuple] = [(-(amax * np.float32(1 - i / n_grid)), amax * np.float32(1 - i / n_grid), True, None)
                                  for i in range(n_shrink)]
            cands += [(row.min(), row.max(), True, 1 + j / 80) for j in range(1, n_expand + 1)]
            cands.append((row.min(), row.max(), False, None))
            best: tuple = ()
            plain = ggml_quantize_ref(row[None, :], rule)
            for lo, hi, refit, expand in cands:
                cur = np.clip(row, lo, hi)[None, :]
                codes, d, m = ggml_quantize_ref(cur, rule)
                d = d.astype(np.float32)
                m = None if m is None else m.astype(np.float32)
                fitted = False
                if expand is not None:
                    codes = _expanded_codes_ref(row, rule, expand)[None, :]
                if refit:
                    a = codes[0].astype(np.float64) - zero
                    wv = row.astype(np.float64)
                    if has_min:
                        one = np.ones(32)
                        mat = np.array([[a @ h @ a, a @ h @ one], [one @ h @ a, one @ h @ one]])
                        rhs = np.array([a @ h @ wv, one @ h @ wv])
                        det = mat[0, 0] * mat[1, 1] - mat[0, 1] ** 2
                        if det > 1e-12 * mat[0, 0] * mat[1, 1]:
                            sol = np.linalg.solve(mat, rhs)
                            dh, mh = np.float16(sol[0]).astype(np.float32), np.float16(sol[1]).astype(np.float32)
                            if np.isfinite(dh) and np.isfinite(mh):
                                d, m, fitted = np.array([[dh]]), np.array([[mh]]), True
                    elif a @ h @ a > 0:
                        dh = np.float16((a @ h @ wv) / (a @ h @ a)).astype(np.float32)
                        if np.isfinite(dh):
                            d, fitted = np.array([[dh]], np.float32), True
                if expand is not None and not fitted:  # a degenerate fit: the plain values
                    codes, d, m = plain
                deq = ggml_dequantize_ref(codes, d, m, rule)[0].astype(np.float64)
                e = deq - row.astype(np.float64)
                err = float(e @ h @ e) / t
                if not best or err < best[0]:
                    best = (err, lo, hi, d[0, 0], 0.0 if m is None else m[0, 0], codes[0])
            before[r, g] = err  # the last candidate: plain
            after[r, g], min_val[r, g], max_val[r, g], scales[r, g], offsets[r, g], c = best
            chosen[r, g * 32:(g + 1) * 32] = c
    return max_val, min_val, scales, (offsets if has_min else None), before, after, chosen
