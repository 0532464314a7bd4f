"""Torch modules that stand in for quantized ``nn.Linear`` layers.

``QuantizedLinear``: what ``quantize_model`` leaves in the model. It runs the dequantized
weight with ``F.linear`` (exactly the weights a checkpoint stores) and keeps the AutoAWQ
tensors of its checkpoint format (``stored``) for ``save_quantized``.

``AWQLinear``: what ``load_quantized`` builds, a module around the native fused kernel
``awqkit.PackedLinear`` (float32 activations; inference only).

``torch.ops.awqkit.int4_linear(x, layer_id, out_features)``: the same product as a torch
custom op, so ``torch.compile`` captures a model with ``AWQLinear`` layers whole (no graph
break). The op has a fake (meta) implementation for tracing; its CPU kernel looks the layer
up by ``layer_id`` (``AWQLinear.layer_id``, a number each module is given when it is built or
copied, unique in the process) and runs ``PackedLinear`` on a numpy view of x. A compiled graph
holds the number, not the weights: it runs on the layers of this process (dynamo's guards are
on the module objects it traced). An eager ``AWQLinear`` call on a plain float32, contiguous
CPU tensor skips the dispatcher (about 2.5 us a call more: benchmarks/README.md) and calls the
kernel directly; every other input (another dtype, a strided view, a tensor subclass, tracing) goes through the op.
"""

from __future__ import annotations

import itertools
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import PackedLinear

__all__ = ["AWQLinear", "QuantizedLinear"]


class QuantizedLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
                 zero_point: bool, stored: dict[str, torch.Tensor] | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bits, self.group_size, self.zero_point = bits, group_size, zero_point
        self.register_buffer("weight", weight.detach().to(torch.float32).contiguous())
        # The checkpoint stores the bias in float16 (AutoAWQ), so that is what we evaluate.
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float16).to(torch.float32))
        # The checkpoint format's tensors, by suffix (AWQ gemm: qweight, qzeros, scales, bias);
        # None if the format cannot hold this width. PackedLinear.packed is something else:
        # the native kernel's bytes.
        self.stored = stored

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, group_size={self.group_size}"


# Bound once: the eager fast path and the op's kernel read these on every call (module attribute lookups cost).
_is_compiling = torch.compiler.is_compiling
_Tensor = torch.Tensor
_float32 = torch.float32
_from_numpy = torch.from_numpy


# The layers the custom op can run, by AWQLinear.layer_id. Weak: a module dropped by its model
# leaves the table (the callback of its weakref), a compiled graph that still names it raises.
_LAYERS: dict[int, weakref.ref] = {}
_LAYER_IDS = itertools.count()


def _register(module: AWQLinear) -> int:
    layer_id = next(_LAYER_IDS)

    def forget(_ref: weakref.ref) -> None:
        _LAYERS.pop(layer_id, None)

    _LAYERS[layer_id] = weakref.ref(module, forget)
    return layer_id


def _registered(layer_id: int, out_features: int) -> PackedLinear:
    ref = _LAYERS.get(layer_id)
    module = None if ref is None else ref()
    if module is None:
        raise RuntimeError(f"awqkit::int4_linear: no AWQLinear with layer_id {layer_id} in this process (freed, or the graph "
                           "was traced in another process): trace the model again")
    lin = module.lin
    if lin.out_features != out_features:
        raise RuntimeError(f"awqkit::int4_linear: layer {layer_id} has {lin.out_features} outputs, the call says {out_features}")
    return lin


_lib = torch.library.Library("awqkit", "FRAGMENT")  # kept alive: the registrations live as long as it does
_lib.define("int4_linear(Tensor x, int layer_id, int out_features) -> Tensor")


def _int4_linear_cpu(x: torch.Tensor, layer_id: int, out_features: int) -> torch.Tensor:
    """The op's CPU kernel: ``x @ dequantize(W).T + b`` in float32, returned in x's dtype."""
    lin = _registered(layer_id, out_features)
    x32 = x
    if x.dtype is not _float32 or x.requires_grad or not x.is_contiguous():
        x32 = x.detach().to(_float32).contiguous()  # inference only: numpy() refuses a tensor that requires grad
    xn = x32.numpy()
    if xn.size == 0:  # as F.linear: no rows in, no rows out (the kernel refuses M = 0)
        return x.new_empty((*x.shape[:-1], out_features))
    y = _from_numpy(lin(xn.reshape(-1, lin.in_features)).reshape(*xn.shape[:-1], out_features))
    return y if x.dtype is _float32 else y.to(x.dtype)


_lib.impl("int4_linear", _int4_linear_cpu, "CPU")


@torch.library.register_fake("awqkit::int4_linear", lib=_lib)
def _int4_linear_fake(x: torch.Tensor, layer_id: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class AWQLinear(nn.Module):
    """y = x @ dequantize(W).T + b on ``awqkit.PackedLinear`` (never materialises W).

    Inference only: the output never requires grad. ``layer_id`` names the layer to the
    custom op ``torch.ops.awqkit.int4_linear`` (see the module docstring)."""

    def __init__(self, qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, group_size: int,
                 bias: np.ndarray | None = None):
        super().__init__()
        self.in_features = int(qweight.shape[0])
        self.out_features = int(scales.shape[1])
        self.lin = PackedLinear.from_awq(
            np.ascontiguousarray(qweight), np.ascontiguousarray(qzeros), np.ascontiguousarray(scales), group_size,
            bias=None if bias is None else np.ascontiguousarray(bias, dtype=np.float32),
        )
        self.group_size = self.lin.group_size  # -1 resolved to K
        self.layer_id = _register(self)

    def __setstate__(self, state):
        # copy.deepcopy and pickle land here: the copy is a layer of its own (its own PackedLinear), so its own id.
        super().__setstate__(state)
        self.layer_id = _register(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fast path (a decode step makes ~200 of these calls per token): a plain float32,
        # contiguous tensor goes to the kernel's native call slot as a numpy view and the
        # kernel's new array comes back as a tensor, with no torch op dispatched (x.numpy()
        # raises for a tensor off the CPU, as the op does). Everything else (other dtypes,
        # strided views, tensors that require grad, tensor subclasses, torch.compile and
        # export tracing, no rows) goes through the custom op.
        if not _is_compiling() and type(x) is _Tensor and x.dtype is _float32 and not x.requires_grad and x.is_contiguous():
            xn = x.numpy()
            if xn.size:
                return _from_numpy(self.lin(xn.reshape(-1, self.in_features)).reshape(*xn.shape[:-1], self.out_features))
        return torch.ops.awqkit.int4_linear.default(x.detach(), self.layer_id, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}, kernel=PackedLinear"
