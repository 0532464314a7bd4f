"""Torch modules that stand in for quantized ``nn.Linear`` layers.

``QuantizedLinear``: what ``quantize_model`` leaves in the model. It runs the dequantized
weight with ``F.linear`` (exactly the weights a checkpoint stores) and keeps the AutoAWQ
tensors of its checkpoint format (``stored``) for ``save_quantized``.

``AWQLinear``: what ``load_quantized`` builds, a module around the native fused kernel
``awqkit.PackedLinear`` (float32 activations; inference only).
"""

from __future__ import annotations

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


class AWQLinear(nn.Module):
    """y = x @ dequantize(W).T + b on ``awqkit.PackedLinear`` (never materialises W)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.detach().reshape(-1, self.in_features).to(torch.float32).contiguous().numpy()
        y = torch.from_numpy(np.asarray(self.lin(x2)))
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=4, group_size={self.group_size}, kernel=PackedLinear"
