"""compressed-tensors pack-quantized layout (awqkit.model.compressed_tensors_format), checked
against the compressed-tensors package itself (0.20.1, the `[test]` extra): its compressor
writes the same tensors, its decompressor (what transformers' loader calls) gives back
the weights awqkit evaluates, its pydantic models accept the config, and transformers loads
a whole checkpoint to the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import awqkit
from awqkit.model import compressed_tensors_format as ctf
from model_helpers import STORIES, checkpoint_tensors

BITS = [2, 3, 4, 5, 6, 7, 8]  # compressed-tensors packs 1..8 bits; awqkit quantizes 2..8


def _ct():
    try:
        import compressed_tensors
    except ImportError:
        pytest.fail("compressed-tensors is not installed: pip install compressed-tensors==0.20.1 (the [test] extra)")
    return compressed_tensors


def _scheme(cfg: dict):
    _ct()
    from compressed_tensors.quantization import QuantizationConfig

    return QuantizationConfig.model_validate(cfg).config_groups["group_0"]


def _compressor():
    _ct()
    from compressed_tensors.compressors import BaseCompressor

    return BaseCompressor.get_value_from_registry(ctf.FORMAT)


def _local(tensors: dict, name: str) -> dict:
    return {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}


def _package_decompress(tensors: dict, name: str, cfg: dict) -> torch.Tensor:
    """The dense weight, as transformers' CompressedTensorsDequantize gets it: the
    pack-quantized compressor's decompress over the module's local state dict."""
    return _compressor().decompress(_local(tensors, name), _scheme(cfg))["weight"]


def _weights(rng, n=96, k=256):
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    w[:, 7] *= 20  # an outlier column, so groups differ in range
    return w


def _stories_weights(data_dir) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(data_dir / STORIES / "model.safetensors"))


CASES = [(b, sym, gs) for b in BITS for sym in (True, False) for gs in (32, 64, 128, -1)]


@pytest.mark.parametrize("bits,symmetric,group_size", CASES)
def test_the_package_compressor_writes_the_same_tensors(bits, symmetric, group_size, rng):
    """compress(dense weight, scale, zero point) by the package == linear_tensors, tensor for tensor."""
    qt = awqkit.quantize(_weights(rng), bits, group_size, zero_point=not symmetric)
    cfg = ctf.config_block(bits, group_size, symmetric, ["lm_head"])
    ours = _local(ctf.pack_linear("layer", qt, None, scale_dtype=torch.float32), "layer")
    half = 1 << (bits - 1)
    state = {
        "weight": torch.from_numpy(qt.dequantize()),
        "weight_scale": torch.from_numpy(qt.scales.astype(np.float32)),
        # as initialize_qparams leaves it: signed int8, zeros for the symmetric form
        "weight_zero_point": torch.from_numpy(qt.zeros.astype(np.int16) - half).to(torch.int8),
    }
    theirs = _compressor().compress(state, _scheme(cfg))
    assert sorted(theirs) == sorted(ours)
    for k, v in theirs.items():
        assert v.dtype == ours[k].dtype and v.shape == ours[k].shape and torch.equal(v, ours[k]), k


@pytest.mark.parametrize("bits,symmetric,group_size", CASES)
def test_package_decompression_gives_our_weights(bits, symmetric, group_size, rng):
    """float32 scales: bit-identical to qt.dequantize(); float16 scales: the same value
    rounded once to float16 (the package multiplies in the scale's dtype)."""
    qt = awqkit.quantize(_weights(rng), bits, group_size, zero_point=not symmetric)
    cfg = ctf.config_block(bits, group_size, symmetric, [])
    ref = torch.from_numpy(qt.dequantize())
    t32 = ctf.pack_linear("m", qt, None, scale_dtype=torch.float32)
    w32 = _package_decompress(t32, "m", cfg)
    assert w32.dtype == torch.float32 and torch.equal(w32, ref)
    t16 = ctf.pack_linear("m", qt, None)
    assert t16["m.weight_scale"].dtype == torch.float16
    w16 = _package_decompress(t16, "m", cfg)
    assert w16.dtype == torch.float16 and torch.equal(w16, ref.to(torch.float16))
    for t in (t32, t16):
        back = ctf.read_linear(t, "m", cfg)
        assert back.bits == bits and back.group_size == qt.group_size and back.zero_point == (not symmetric)
        assert back.scales.dtype == np.float16
        for a in ("codes", "scales", "zeros"):
            assert np.array_equal(getattr(back, a), getattr(qt, a)), a


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("layer,group_size", [("self_attn.q_proj", 32), ("self_attn.k_proj", 64), ("mlp.gate_proj", 32),
                                              ("mlp.up_proj", -1), ("mlp.down_proj", -1)])
def test_real_layers(data_dir, layer, group_size, bits, symmetric):
    """stories260K: N = 172 (gate/up: zero points straddle words), K = 172 (down: one group per row, rows padded)."""
    name = f"model.layers.1.{layer}"
    w = _stories_weights(data_dir)[name + ".weight"]
    qt = awqkit.quantize(w, bits, group_size, zero_point=not symmetric)
    cfg = ctf.config_block(bits, group_size, symmetric, ["lm_head"])
    t = ctf.pack_linear(name, qt, None, scale_dtype=torch.float32)
    assert torch.equal(_package_decompress(t, name, cfg), torch.from_numpy(qt.dequantize()))
    back = ctf.read_linear(t, name, cfg)
    assert all(np.array_equal(getattr(back, a), getattr(qt, a)) for a in ("codes", "scales", "zeros"))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("cols", [1, 31, 32, 33, 100, 172])
def test_packing_is_the_packages(bits, cols, rng):
    _ct()
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    u = rng.integers(0, 1 << bits, size=(5, cols), dtype=np.uint8)
    signed = torch.from_numpy(u.astype(np.int16) - (1 << (bits - 1))).to(torch.int8)
    ours = ctf.pack_int32(u, bits)
    assert torch.equal(torch.from_numpy(ours), pack_to_int32(signed, bits))
    assert torch.equal(torch.from_numpy(ours.T.copy()), pack_to_int32(signed.T.contiguous(), bits, packed_dim=0))
    assert np.array_equal(ctf.unpack_int32(ours, bits, cols), u)
    assert torch.equal(unpack_from_int32(torch.from_numpy(ours), bits, torch.Size((5, cols))), signed)


@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 128, True), (4, 128, False), (8, -1, True), (4, -1, False), (3, 64, False)])
def test_config_is_what_the_package_writes(bits, group_size, symmetric):
    ct = _ct()
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    ignore = ["lm_head", "model.layers.0.mlp.down_proj"]
    cfg = ctf.config_block(bits, group_size, symmetric, ignore)
    parsed = QuantizationConfig.model_validate(cfg)
    w = parsed.config_groups["group_0"].weights
    assert (w.num_bits, w.symmetric, w.strategy) == (bits, symmetric, "channel" if group_size == -1 else "group")
    assert parsed.ignore == ignore and parsed.format == "pack-quantized" and parsed.quantization_status == "compressed"
    # As llm-compressor saves it: ModelCompressor.update_config around the package's models.
    args = dict(num_bits=bits, type="int", symmetric=symmetric, strategy="channel" if group_size == -1 else "group")
    if group_size != -1:
        args["group_size"] = group_size
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args), format="pack-quantized")
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized", quantization_status="compressed", ignore=ignore)
    expected = {"version": ct.__version__, "quant_method": "compressed-tensors", "sparsity_config": {}, "transform_config": {},
                **json.loads(json.dumps(qc.model_dump(exclude=["quant_method"])))}
    assert json.loads(json.dumps(cfg)) == expected
    assert cfg["version"] == ct.__version__, "the layout is checked against another compressed-tensors: review COMPRESSED_TENSORS_VERSION"
    # transformers' config class takes it too
    from transformers import CompressedTensorsConfig

    assert CompressedTensorsConfig.from_dict(dict(cfg)).quantization_config.config_groups["group_0"].weights.num_bits == bits


def test_read_linear_refuses_what_it_cannot_hold(rng):
    qt = awqkit.quantize(_weights(rng), 4, 64, zero_point=True)
    cfg = ctf.config_block(4, 64, False, ["lm_head"])
    t = ctf.pack_linear("m", qt, None)

    def bad(msg, tensors=t, name="m", **groups):
        c = json.loads(json.dumps(cfg))
        for k, v in groups.items():
            c["config_groups"]["group_0"]["weights"][k] = v
        with pytest.raises(ValueError, match=msg):
            ctf.read_linear(tensors, name, c)

    bad("ignore list", name="lm_head")
    bad("strategy 'tensor'", strategy="tensor", group_size=None)
    bad("integer weights", type="float")
    bad("2..8-bit", num_bits=1)
    bad("does not divide", group_size=96)
    bad("weight_scale must be", group_size=32)
    bad("weight_zero_point is missing", tensors={k: v for k, v in t.items() if not k.endswith("zero_point")})
    bad("weight_g_idx", tensors={**t, "m.weight_g_idx": torch.zeros(256, dtype=torch.int32)})
    c = json.loads(json.dumps(cfg))
    c["config_groups"]["group_0"]["format"] = c["format"] = "int-quantized"
    with pytest.raises(ValueError, match="'int-quantized' is not 'pack-quantized'"):
        ctf.read_linear(t, "m", c)
    c = json.loads(json.dumps(cfg))
    c["config_groups"]["group_0"]["input_activations"] = {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}
    with pytest.raises(ValueError, match="input_activations"):
        ctf.read_linear(t, "m", c)
    with pytest.raises(ValueError, match="not a compressed-tensors"):
        ctf.read_linear(t, "m", {**cfg, "quant_method": "awq"})
    with pytest.raises(ValueError, match="float32"):  # float32 scales that float16 cannot hold
        ctf.pack_linear("m", awqkit.quantize(_weights(rng), 4, 64, scale_dtype="float32"), None)


def test_bias_and_float32_scales_kept(rng):
    qt = awqkit.quantize(_weights(rng), 4, 32, scale_dtype="float32")
    bias = torch.randn(96, dtype=torch.float16)
    t = ctf.pack_linear("m", qt, bias, scale_dtype=torch.float32)
    assert t["m.bias"] is not bias and torch.equal(t["m.bias"], bias) and t["m.bias"].dtype == torch.float16
    back = ctf.read_linear(t, "m", ctf.config_block(4, 32, False, []))
    assert back.scales.dtype == (np.float16 if np.array_equal(qt.scales.astype(np.float16).astype(np.float32), qt.scales) else np.float32)
    assert np.array_equal(back.scales.astype(np.float32), qt.scales)


@pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
@pytest.mark.parametrize("zero_point", [False, True])
def test_transformers_loads_a_whole_checkpoint(data_dir, tmp_path, zero_point):
    """stories260K, RTN 4-bit groups of 32, written with these functions (float32 scales):
    transformers 5.24 on the CPU (its compressed-tensors integration) loads it to the awqkit
    model's logits, bit for bit."""
    _ct()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from awqkit.model import QuantizedLinear, load_model
    from model_helpers import stories_config

    src = data_dir / STORIES
    model, _ = load_model(src)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = stories_config(zero_point=zero_point)
    model, _ = awqkit.quantize_model(model, cfg, method="rtn")
    tensors, ignore = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantizedLinear):
            # RTN quantizes the source weight as is: the same call gives the module's codes.
            qt = awqkit.quantize(original[name + ".weight"].numpy(), cfg.bits, cfg.group_size, cfg.zero_point)
            assert torch.equal(torch.from_numpy(qt.dequantize()), mod.weight)
            tensors.update(ctf.pack_linear(name, qt, mod.bias, scale_dtype=torch.float32))
        elif isinstance(mod, torch.nn.Linear):
            ignore.append(name)
    n_tensors = 4 if zero_point else 3
    assert "lm_head" in ignore and "model.layers.0.mlp.down_proj" in ignore and len(tensors) == n_tensors * 20  # 4 attention projections x 5 blocks
    quantized = {k[: -len(".weight_packed")] for k in tensors if k.endswith(".weight_packed")}
    for k, v in checkpoint_tensors(src).items():
        if k.rpartition(".")[0] not in quantized:
            tensors[k] = v
    out = tmp_path / "ct"
    out.mkdir()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = ctf.config_block(cfg.bits, cfg.group_size, not cfg.zero_point, ignore)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))

    ids = torch.tensor([[1, 403, 407, 261, 378, 290, 300, 410]])
    with torch.no_grad():
        ref = model(ids).logits
        for dequantize in (True, False):  # decompressed while loading / on the first forward
            load = CompressedTensorsConfig(dequantize=dequantize)
            if zero_point and not dequantize:
                # compressed-tensors 0.20.1 gives the compressed module, on the meta device,
                # an unpacked [N, G] weight_zero_point while its compressor writes (and we
                # write) the packed [ceil(N*b/32), G]: transformers refuses the size mismatch.
                # Its own asymmetric checkpoints fail the same way; dequantize=True reads them.
                with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
                    AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, quantization_config=load)
                continue
            hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, quantization_config=load)
            got = hf.eval()(ids).logits
            assert torch.equal(got, ref), (dequantize, (got - ref).abs().max())
            for name in quantized:
                assert torch.equal(hf.get_submodule(name).weight, model.get_submodule(name).weight), name
