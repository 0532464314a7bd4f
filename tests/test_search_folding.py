"""Folding the searched scales into the model leaves its function unchanged (before quantization)."""

import numpy as np
import pytest

import awqkit


def rms_norm(x, weight, eps=1e-5):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * weight + bias


def silu(x):
    return x / (1 + np.exp(-x))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_norm_then_linears(rng):
    k = 64
    x = rng.standard_normal((20, k)).astype(np.float32)
    ln_w, ln_b = rng.uniform(0.5, 1.5, k).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    q, v = (rng.standard_normal((32, k)).astype(np.float32) for _ in range(2))
    s = np.exp(rng.uniform(-2, 2, k)).astype(np.float32)
    new_w, new_b = awqkit.fold_scale_into_norm(ln_w, ln_b, s)
    h0, h1 = layer_norm(x, ln_w, ln_b), layer_norm(x, new_w, new_b)
    for w in (q, v):
        np.testing.assert_allclose(h1 @ awqkit.scale_linear_inputs(w, s).T, h0 @ w.T, rtol=1e-4, atol=1e-4)
    rms_w, none = awqkit.fold_scale_into_norm(ln_w, None, s)
    assert none is None
    np.testing.assert_allclose(
        rms_norm(x, rms_w) @ awqkit.scale_linear_inputs(q, s).T, rms_norm(x, ln_w) @ q.T, rtol=1e-4, atol=1e-4
    )


def test_llama_mlp_up_into_down(rng):
    d, h = 32, 88
    x = rng.standard_normal((10, d)).astype(np.float32)
    gate, up = (rng.standard_normal((h, d)).astype(np.float32) for _ in range(2))
    down = rng.standard_normal((d, h)).astype(np.float32)
    s = np.exp(rng.uniform(-2, 2, h)).astype(np.float32)
    y0 = (silu(x @ gate.T) * (x @ up.T)) @ down.T
    up2, _ = awqkit.fold_scale_into_linear_outputs(up, None, s)
    y1 = (silu(x @ gate.T) * (x @ up2.T)) @ awqkit.scale_linear_inputs(down, s).T
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4)


def test_fused_qkv_last_rows_with_bias(rng):
    d = 16
    x = rng.standard_normal((5, d)).astype(np.float32)
    qkv, b = rng.standard_normal((3 * d, d)).astype(np.float32), rng.standard_normal(3 * d).astype(np.float32)
    o = rng.standard_normal((d, d)).astype(np.float32)
    s = np.exp(rng.uniform(-1, 1, d)).astype(np.float32)
    qkv2, b2 = awqkit.fold_scale_into_linear_outputs(qkv, b, s)
    np.testing.assert_array_equal(qkv2[: 2 * d], qkv[: 2 * d])
    v0 = (x @ qkv.T + b)[:, 2 * d :]
    v1 = (x @ qkv2.T + b2)[:, 2 * d :]
    np.testing.assert_allclose(v1 @ awqkit.scale_linear_inputs(o, s).T, v0 @ o.T, rtol=1e-4, atol=1e-4)


def test_dtype_kept_and_errors(rng):
    w = rng.standard_normal((4, 8)).astype(np.float16)
    s = np.full(8, 2.0, np.float32)
    assert awqkit.scale_linear_inputs(w, s).dtype == np.float16
    with pytest.raises(ValueError, match="entries"):
        awqkit.scale_linear_inputs(w, np.ones(7))
    with pytest.raises(ValueError, match="positive"):
        awqkit.fold_scale_into_norm(np.ones(8, np.float32), None, np.zeros(8))
    with pytest.raises(ValueError, match="output rows"):
        awqkit.fold_scale_into_linear_outputs(w, None, np.ones(5))
    with pytest.raises(TypeError):
        awqkit.scale_linear_inputs([[1.0]], np.ones(1))
