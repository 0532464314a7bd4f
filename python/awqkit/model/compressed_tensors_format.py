"""compressed-tensors "pack-quantized" checkpoints (what llm-compressor writes, what vLLM's
WNA16 kernels and transformers' compressed-tensors integration read): pure functions, no
dependency on the ``compressed-tensors`` package (the tests check every layout against it).

Per quantized linear ``<name>``, as ``PackedQuantizationCompressor.compress`` writes it
(compressed-tensors 0.20.1):

- ``weight_packed`` int32 [N, ceil(K*b/32)]: the signed value ``q`` in
  [-2^(b-1), 2^(b-1)-1] plus the offset 2^(b-1), i.e. awqkit's unsigned code, packed densely
  along K: element i of a row sits at bit ``i*b`` of the row's little-endian bit stream (for
  b = 2, 4, 8 that is ``32/b`` elements per word, lowest bits first, the layout older
  releases and vLLM also use; for b = 3, 5, 6, 7 values straddle words, whereas older
  releases' code packed ``32 // b`` per word with padding, so those widths need
  compressed-tensors 0.20; vLLM's WNA16 kernels take 4 and 8 bits only);
- ``weight_scale`` [N, G] float (the model dtype for llm-compressor; here ``scale_dtype``),
  [N, 1] for the "channel" strategy;
- ``weight_zero_point`` int32 [ceil(N*b/32), G], asymmetric only: the signed zero point
  ``zeros - 2^(b-1)`` with the same offset, packed the same way along N (dim 0);
- ``weight_shape`` int64 [2] = (N, K);
- ``bias`` as given.

Dequantization (``compressed_tensors...forward._dequantize``) is ``(q - zp) * scale``
computed in the scale's dtype, and ``q - zp == codes - zeros``, so: with float32 scales it
is bit-identical to ``QuantizedTensor.dequantize()`` (an integer below 2^9 times a float16
value is exact in float32); with float16 scales it is that value rounded once to float16
(what a float16 model holds). A symmetric awqkit tensor (zeros = 2^(b-1)) is compressed-
tensors' symmetric form: ``q = codes - 2^(b-1)`` and no zero point.

transformers 5.24 + compressed-tensors 0.20.1 load these on the CPU. Asymmetric ones only
with ``CompressedTensorsConfig(dequantize=True)``: the default path builds the compressed
module with an unpacked [N, G] zero point and refuses the packed one the package's own
compressor writes (tests/test_model_compressed_tensors.py shows both).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..quantizer import QuantizedTensor

__all__ = ["COMPRESSED_TENSORS_VERSION", "FORMAT", "linear_tensors", "pack_int32", "quantization_config", "read_linear",
           "unpack_int32"]

# The compressed-tensors release whose layout and config this module writes (the
# ``version`` field of quantization_config, as ModelCompressor.update_config writes it).
COMPRESSED_TENSORS_VERSION = "0.20.1"
FORMAT = "pack-quantized"
QUANT_METHOD = "compressed-tensors"
_SCALE_DTYPES = (torch.float16, torch.float32, torch.bfloat16)
_ROW_CHUNK_ELEMS = 1 << 22  # values per packing step (bounds the bit-stream temporaries)


# --- dense int32 packing (compressed_tensors.compressors.pack_quantized.helpers) -----------

def pack_int32(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``values`` [R, C] (each < 2^bits) packed densely per row: int32 [R, ceil(C*bits/32)]."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"pack_int32 takes a 2-D array, got shape {values.shape}")
    _check_bits(bits)
    r, c = values.shape
    words = -(-c * bits // 32)
    out = np.empty((r, words), dtype=np.uint32)
    step = max(1, _ROW_CHUNK_ELEMS // max(c, 1))
    for i in range(0, r, step):
        out[i:i + step] = _pack_rows(values[i:i + step].astype(np.uint8), bits, words)
    return out.view(np.int32)


def _pack_rows(u: np.ndarray, bits: int, words: int) -> np.ndarray:
    r, c = u.shape
    cpad = -(-c // 32) * 32  # 32 values fill exactly `bits` words
    if cpad != c:
        u = np.pad(u, ((0, 0), (0, cpad - c)))
    if 32 % bits == 0:
        per = 32 // bits
        shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
        packed = (u.reshape(r, cpad // per, per).astype(np.uint32) << shifts).sum(axis=2, dtype=np.uint32)
    else:
        stream = np.unpackbits(u[..., None], axis=-1, bitorder="little")[..., :bits].reshape(r, cpad * bits)
        packed = np.packbits(stream, axis=-1, bitorder="little").view("<u4").astype(np.uint32)
    return packed[:, :words]


def unpack_int32(packed: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """Inverse of ``pack_int32``: uint8 [R, cols] from int32 [R, ceil(cols*bits/32)]."""
    packed = np.asarray(packed)
    _check_bits(bits)
    if packed.ndim != 2 or packed.dtype != np.int32:
        raise ValueError(f"packed values must be a 2-D int32 array, got {packed.dtype} {packed.shape}")
    r, words = packed.shape
    if words != -(-cols * bits // 32):
        raise ValueError(f"{words} int32 words per row do not hold {cols} {bits}-bit values (expected {-(-cols * bits // 32)})")
    w = packed.view(np.uint32)
    if 32 % bits == 0:
        per = 32 // bits
        shifts = np.arange(per, dtype=np.uint32) * np.uint32(bits)
        vals = (w[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)
        return vals.reshape(r, words * per)[:, :cols].astype(np.uint8)
    stream = np.unpackbits(w.astype("<u4").view(np.uint8), axis=-1, bitorder="little")[:, :cols * bits]
    weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    return (stream.reshape(r, cols, bits) * weights).sum(axis=2, dtype=np.uint8)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"awqkit holds 2..8-bit weights (compressed-tensors packs 1..8), got bits={bits!r}")


# --- writing ---------------------------------------------------------------------------------

def pack_linear(name: str, qt: QuantizedTensor, bias: torch.Tensor | None, *,
                   scale_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The tensors of one quantized linear ``name`` in the pack-quantized layout.

    ``scale_dtype``: float16 (default; awqkit's scales are float16 values, stored as is),
    float32 (compressed-tensors then dequantizes bit-identically to ``qt.dequantize()``) or
    bfloat16 (only when every scale is a bfloat16 value: ValueError otherwise, since the
    scales would change). ``bias`` is stored as given (its dtype is the caller's choice).
    """
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"pack_linear takes an awqkit.QuantizedTensor, got {type(qt).__name__}")
    _check_bits(qt.bits)
    n, k = qt.shape
    half = 1 << (qt.bits - 1)
    if qt.codes.dtype != np.uint8 or qt.zeros.dtype != np.uint8:
        raise ValueError(f"codes and zeros must be uint8, got {qt.codes.dtype} and {qt.zeros.dtype}")
    if int(qt.codes.max(initial=0)) >= 1 << qt.bits or int(qt.zeros.max(initial=0)) >= 1 << qt.bits:
        raise ValueError(f"codes or zeros out of the {qt.bits}-bit range 0..{(1 << qt.bits) - 1}")
    if not qt.zero_point and not (qt.zeros == half).all():
        raise ValueError(f"a symmetric QuantizedTensor must have zeros = {half} (compressed-tensors stores no zero point for it)")
    out = {
        f"{name}.weight_packed": torch.from_numpy(pack_int32(qt.codes, qt.bits)),
        f"{name}.weight_scale": _scales_as(qt.scales, scale_dtype),
        f"{name}.weight_shape": torch.tensor([n, k], dtype=torch.int64),
    }
    if qt.zero_point:
        # [N, G] packed along N: pack the transpose's rows, transpose back (contiguous).
        out[f"{name}.weight_zero_point"] = torch.from_numpy(np.ascontiguousarray(pack_int32(qt.zeros.T, qt.bits).T))
    if bias is not None:
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias of {name} must have shape ({n},), got {tuple(bias.shape)}")
        out[f"{name}.bias"] = bias.detach().contiguous()
    return out


def _scales_as(scales: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if dtype not in _SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {_SCALE_DTYPES}, got {dtype}")
    s32 = torch.from_numpy(np.ascontiguousarray(scales, dtype=np.float32))
    s = s32.to(dtype)
    if not torch.equal(s.to(torch.float32), s32):
        raise ValueError(f"the scales are not all {dtype} values: storing them as {dtype} would change the weights "
                         "(use scale_dtype=torch.float32)")
    return s.contiguous()


def config_block(bits: int, group_size: int, symmetric: bool, ignore: Sequence[str]) -> dict[str, Any]:
    """config.json's ``quantization_config`` as llm-compressor saves a WNA16 model
    (``ModelCompressor.update_config``): one config group targeting ``Linear``, format
    pack-quantized, status compressed. ``group_size=-1``: strategy "channel" (one scale per
    output row). ``ignore``: the full names of every ``nn.Linear`` kept in full precision,
    ``lm_head`` included (a Linear not listed is expected to be quantized).
    """
    _check_bits(bits)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or not (group_size == -1 or group_size > 0):
        raise ValueError(f"group_size must be > 0, or -1 for one group per output channel, got {group_size!r}")
    if isinstance(ignore, str):
        raise TypeError("ignore must be a list of module names, not a string")
    channel = group_size == -1
    weights: dict[str, Any] = {
        "num_bits": int(bits),
        "type": "int",
        "symmetric": bool(symmetric),
        "group_size": None if channel else int(group_size),
        "strategy": "channel" if channel else "group",
        "dynamic": False,
    }
    return {
        "version": COMPRESSED_TENSORS_VERSION,
        "quant_method": QUANT_METHOD,
        "sparsity_config": {},
        "transform_config": {},
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": None,
                "output_activations": None,
                "format": FORMAT,
            }
        },
        "kv_cache_scheme": None,
        "format": FORMAT,
        "quantization_status": "compressed",
        "global_compression_ratio": None,
        "ignore": [str(n) for n in ignore],
        "moe_sparsity_config": None,
    }


# --- reading ---------------------------------------------------------------------------------

def _target_matches(target: str, name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return name == target  # compressed_tensors.utils.match.match_name: a regex or the exact name


def _scheme_for(qcfg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if qcfg.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"not a compressed-tensors quantization_config (quant_method {qcfg.get('quant_method')!r})")
    if any(_target_matches(t, name) for t in qcfg.get("ignore") or []):
        raise ValueError(f"{name} is in the config's ignore list: it is not quantized")
    groups = qcfg.get("config_groups") or {}
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("quantization_config has no config_groups")
    by_name, by_class = [], []
    for gname, g in groups.items():
        if not isinstance(g, Mapping):
            raise ValueError(f"config group {gname!r} is a preset reference ({g!r}); awqkit reads only explicit schemes")
        targets = g.get("targets") or []
        if any(_target_matches(t, name) for t in targets):
            by_name.append(g)
        elif "Linear" in targets or "LinearBase" in targets:  # class targets: we read linears only
            by_class.append(g)
    found = by_name or by_class
    if len(found) != 1:
        raise ValueError(f"{len(found)} config groups target {name}: cannot tell its scheme")
    return found[0]


def read_linear(tensors: Mapping[str, torch.Tensor], name: str, qcfg: Mapping[str, Any]) -> QuantizedTensor:
    """The ``QuantizedTensor`` of linear ``name`` from a pack-quantized checkpoint's tensors
    and its ``quantization_config`` (the inverse of ``linear_tensors``). Scales keep float16;
    float32/bfloat16 scales become float16 when that is exact, float32 otherwise. ValueError
    for a layout awqkit cannot hold (another format, float or activation quantization,
    tensor/block strategies, activation reordering, a malformed tensor).
    """
    scheme = _scheme_for(qcfg, name)
    fmt = scheme.get("format") or qcfg.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{name}: format {fmt!r} is not {FORMAT!r} (the only compressed-tensors format awqkit reads)")
    w = scheme.get("weights")
    if not w:
        raise ValueError(f"{name}: the scheme quantizes no weights")
    for act in ("input_activations", "output_activations"):
        if scheme.get(act):
            raise ValueError(f"{name}: the scheme also quantizes {act} (awqkit holds weight-only quantization)")
    if w.get("type", "int") != "int":
        raise ValueError(f"{name}: weights of type {w.get('type')!r}: awqkit holds integer weights only")
    bits = w.get("num_bits", 8)
    _check_bits(bits)
    if w.get("dynamic"):
        raise ValueError(f"{name}: dynamic weight quantization has no stored scales")
    strategy = w.get("strategy") or ("channel" if w.get("group_size") == -1 else "group" if w.get("group_size") else "tensor")
    if strategy not in ("group", "channel"):
        raise ValueError(f"{name}: strategy {strategy!r}: awqkit reads 'group' and 'channel' quantization only")
    if w.get("actorder") == "group" or f"{name}.weight_g_idx" in tensors:
        raise ValueError(f"{name}: activation-order group indices (weight_g_idx) are not supported")
    symmetric = bool(w.get("symmetric", True))

    def get(suffix: str) -> torch.Tensor:
        key = f"{name}.{suffix}"
        if key not in tensors:
            raise ValueError(f"{key} is missing")
        return tensors[key]

    packed, scale, shape = get("weight_packed"), get("weight_scale"), get("weight_shape")
    if shape.numel() != 2:
        raise ValueError(f"{name}.weight_shape must hold (N, K), got {shape.tolist()}")
    n, k = (int(v) for v in shape.tolist())
    if packed.dtype != torch.int32 or tuple(packed.shape) != (n, math.ceil(k * bits / 32)):
        raise ValueError(f"{name}.weight_packed must be int32 [{n}, {math.ceil(k * bits / 32)}], got {packed.dtype} {tuple(packed.shape)}")
    if scale.dtype not in _SCALE_DTYPES:
        raise ValueError(f"{name}.weight_scale must be float16, bfloat16 or float32, got {scale.dtype}")
    if strategy == "channel":
        g = 1
    else:
        gs = int(w["group_size"])
        if k % gs:
            raise ValueError(f"{name}: group_size {gs} does not divide K = {k}")
        g = k // gs
    if tuple(scale.shape) != (n, g):
        raise ValueError(f"{name}.weight_scale must be [{n}, {g}], got {tuple(scale.shape)}")
    codes = unpack_int32(packed.detach().cpu().numpy(), bits, k)
    half = 1 << (bits - 1)
    zp_key = f"{name}.weight_zero_point"
    if symmetric:
        if zp_key in tensors and bool(tensors[zp_key].any()):
            raise ValueError(f"{name}: symmetric scheme but a nonzero weight_zero_point")
        zeros = np.full((n, g), half, dtype=np.uint8)
    else:
        zp = get("weight_zero_point")
        rows = math.ceil(n * bits / 32)
        if zp.dtype != torch.int32 or tuple(zp.shape) != (rows, g):
            raise ValueError(f"{name}.weight_zero_point must be int32 [{rows}, {g}] (packed along N), got {zp.dtype} {tuple(zp.shape)}")
        zeros = np.ascontiguousarray(unpack_int32(np.ascontiguousarray(zp.detach().cpu().numpy().T), bits, n).T)
    return QuantizedTensor(codes=codes, scales=_scales_from(scale), zeros=zeros, bits=int(bits), group_size=k // g,
                           zero_point=not symmetric)


def _scales_from(scale: torch.Tensor) -> np.ndarray:
    s32 = scale.detach().cpu().to(torch.float32)
    if not torch.isfinite(s32).all():
        raise ValueError("weight_scale holds non-finite values")
    s16 = s32.to(torch.float16)
    if scale.dtype == torch.float16 or torch.equal(s16.to(torch.float32), s32):
        return s16.numpy()
    return s32.numpy()


# The format registry's interface (awqkit.formats entry "compressed-tensors").
def linear_tensors(qt: QuantizedTensor, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """A linear's tensors by suffix (weight_packed, weight_scale, [weight_zero_point],
    weight_shape, [bias]); scales in float16 (their exact values), the bias in float16."""
    tensors = pack_linear("m", qt, None if bias is None else bias.detach().to(torch.float16))
    return {k[len("m."):]: v for k, v in tensors.items()}


def quantization_config(cfg, not_converted: list[str], **_context) -> dict[str, Any]:
    """``ignore``: the head and every linear kept in full precision, by full name (the
    pipeline's report); user patterns (``modules_to_not_convert`` substrings) as regexes."""
    patterns = [f"re:.*{re.escape(p)}.*" for p in cfg.modules_to_not_convert]
    ignore = sorted(set(not_converted) - set(cfg.modules_to_not_convert)) + patterns
    return config_block(cfg.bits, cfg.group_size, not cfg.zero_point, ["lm_head", *ignore])


def load(path: str):
    """transformers' own compressed-tensors loader, decompressed to float (CPU)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    # dequantize=True: the compressed path refuses packed asymmetric zero points (module doc)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(dequantize=True))
    model.eval()
    return model
