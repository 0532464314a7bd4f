"""The torch custom op ``awqkit::int4_linear`` and AWQLinear's eager fast path (issue 19):
the op returns the kernel's own bits, passes torch.library.opcheck, and lets torch.compile
capture a model with AWQLinear layers in one graph; the fast path returns what the module
returned before it existed."""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import awqkit
from awqkit.model import AWQLinear, load_quantized, save_quantized
from model_helpers import STORIES, stories_config

OP = torch.ops.awqkit.int4_linear.default


def awq_layer(n: int, k: int, group_size: int, bias: bool, seed: int = 0) -> AWQLinear:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    awq = awqkit.pack_awq(awqkit.quantize(w, bits=4, group_size=group_size))
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    return AWQLinear(awq["qweight"], awq["qzeros"], awq["scales"], group_size, b)


@pytest.fixture(scope="module")
def layer():
    return awq_layer(192, 256, 64, bias=True)


def kernel(mod: AWQLinear, x: torch.Tensor) -> torch.Tensor:
    """What PackedLinear returns for x (float32 rows), shaped as x and in x's dtype."""
    rows = np.ascontiguousarray(x.detach().to(torch.float32).reshape(-1, mod.in_features).numpy())
    return torch.from_numpy(mod.lin(rows)).reshape(*x.shape[:-1], mod.out_features).to(x.dtype)


def old_forward(mod: AWQLinear, x: torch.Tensor) -> torch.Tensor:
    """AWQLinear.forward before the fast path and the op (the reference)."""
    shape = x.shape
    x2 = x.detach().reshape(-1, mod.in_features).to(torch.float32).contiguous().numpy()
    y = torch.from_numpy(np.asarray(mod.lin(x2)))
    return y.view(*shape[:-1], mod.out_features).to(x.dtype)


class OpsCalled(TorchDispatchMode):
    """Records the torch ops dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("m", [1, 7, 64])
def test_op_returns_the_kernels_bits(layer, m):
    x = torch.randn(m, layer.in_features, generator=torch.Generator().manual_seed(m))
    for xs in (x, x.reshape(1, m, -1)):
        y = OP(xs, layer.layer_id, layer.out_features)
        assert y.dtype == torch.float32 and y.shape == (*xs.shape[:-1], layer.out_features)
        assert torch.equal(y, kernel(layer, xs))
        assert torch.equal(layer(xs), y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_op_other_dtypes_run_in_float32(layer, dtype):
    """Like the module always did: x converted to float32, the product converted back."""
    x = torch.randn(2, 5, layer.in_features, generator=torch.Generator().manual_seed(3)).to(dtype)
    y = OP(x, layer.layer_id, layer.out_features)
    assert y.dtype == dtype
    assert torch.equal(y, kernel(layer, x))
    assert torch.equal(layer(x), y)
    assert torch.equal(layer(x), old_forward(layer, x))


def test_opcheck(layer):
    g = torch.Generator().manual_seed(5)
    k, n, i = layer.in_features, layer.out_features, layer.layer_id
    samples = [
        (torch.randn(1, k, generator=g), i, n),
        (torch.randn(2, 7, k, generator=g), i, n),
        (torch.randn(3, k, generator=g).to(torch.float16), i, n),
        (torch.randn(k, 4, generator=g).t(), i, n),  # not contiguous
    ]
    for args in samples:
        torch.library.opcheck(OP, args)


@pytest.mark.parametrize("m", [1, 7, 64])
def test_fast_path_is_the_old_forward_without_the_op(layer, m):
    x = torch.randn(1, m, layer.in_features, generator=torch.Generator().manual_seed(10 + m))
    with torch.no_grad():
        with OpsCalled() as called:
            y = layer(x)
    # Not the custom op, no reshape or copy: only what Tensor.numpy() and torch.from_numpy dispatch themselves.
    assert set(called.ops) <= {"aten.detach.default", "aten.lift_fresh.default"}, called.ops
    assert y.dtype == torch.float32 and not y.requires_grad
    assert torch.equal(y, old_forward(layer, x))
    y[...] = 0  # a new tensor each call: the caller may keep or overwrite it
    assert torch.equal(layer(x), old_forward(layer, x))


def test_other_inputs_go_through_the_op(layer):
    g = torch.Generator().manual_seed(20)
    k = layer.in_features
    inputs = {
        "strided": torch.randn(k, 6, generator=g).t(),
        "requires_grad": torch.randn(3, k, generator=g, requires_grad=True),
        "float16": torch.randn(3, k, generator=g).to(torch.float16),
        "parameter": torch.nn.Parameter(torch.randn(2, k, generator=g)),
    }
    for name, x in inputs.items():
        with OpsCalled() as called:
            y = layer(x)
        assert "awqkit.int4_linear.default" in called.ops, name
        assert torch.equal(y, old_forward(layer, x)), name
        assert not y.requires_grad, name
    empty = layer(torch.zeros(0, k))  # the kernel refuses M = 0; the op returns no rows, as F.linear does
    assert empty.shape == (0, layer.out_features)


def test_layer_ids_follow_copies_and_freed_layers():
    a = awq_layer(64, 128, 32, bias=False, seed=1)
    b = copy.deepcopy(a)
    assert b.layer_id != a.layer_id and b.lin is not a.lin
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(2))
    ref = OP(x, a.layer_id, 64)
    stale = a.layer_id
    del a
    gc.collect()
    assert torch.equal(OP(x, b.layer_id, 64), ref)
    with pytest.raises(RuntimeError, match="no AWQLinear with layer_id"):
        OP(x, stale, 64)
    with pytest.raises(RuntimeError, match="has 64 outputs"):
        OP(x, b.layer_id, 32)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(256)
        self.up = awq_layer(192, 256, 64, bias=True, seed=3)
        self.down = awq_layer(256, 192, 64, bias=False, seed=4)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_fullgraph(backend):
    block = Block()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for shape in [(1, 1, 256), (1, 9, 256), (2, 3, 256)]:
            x = torch.randn(*shape, generator=g)
            assert torch.equal(compiled(x), block(x)), shape


@pytest.fixture(scope="module")
def stories_reloaded(data_dir, tmp_path_factory):
    q, _ = awqkit.rtn_quantize_model(str(data_dir / STORIES), stories_config())
    out = tmp_path_factory.mktemp("torch-op") / "stories-rtn"
    save_quantized(q, out)
    return load_quantized(out, return_tokenizer=True)


def test_model_compiles_whole(stories_reloaded):
    """fullgraph=True: a graph break anywhere (AWQLinear included) raises. aot_eager traces
    the op's fake implementation too."""
    model, tok = stories_reloaded
    assert sum(isinstance(m, AWQLinear) for m in model.modules()) > 0
    ids = tok("Once upon a time, there was a", return_tensors="pt").input_ids
    torch._dynamo.reset()
    with torch.no_grad():
        ref = model(ids, use_cache=False).logits
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(input_ids=ids, use_cache=False).logits, ref)


def test_static_cache_compiled_decode_gives_the_same_tokens(stories_reloaded):
    """The recipe of benchmarks/bench_decode_compile.py: generate with a static KV cache and
    its own torch.compile of the decode step (CompileConfig; on the CPU only when asked), here
    with the eager backend for speed (dynamo still captures each step whole; the test above
    runs aot_eager): greedy tokens identical to the plain eager generate."""
    from transformers import CompileConfig

    model, tok = stories_reloaded
    ids = tok("Once upon a time, there was a", return_tensors="pt").input_ids
    kw = dict(do_sample=False, max_new_tokens=12, min_new_tokens=12)
    ref = model.generate(ids, **kw)
    config = CompileConfig(fullgraph=True, backend="eager", mode="default")
    config._compile_all_devices = True
    torch._dynamo.reset()
    try:
        out = model.generate(ids, cache_implementation="static", compile_config=config, **kw)
        assert hasattr(model, "_compiled_call")  # generate compiled the decode step
    finally:
        model.__dict__.pop("_compiled_call", None)
    assert torch.equal(out, ref)
