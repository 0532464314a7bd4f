"""Every registered checkpoint format end to end on the shared stories260K model: quantize
(streaming from the folder, as `awqkit quantize` does), write, and read back with the
format's own ecosystem reader: the `gguf` package's reader and dequantizer for GGUF,
transformers + compressed-tensors for compressed-tensors. What they read equals what
awqkit evaluated (the in-memory pipeline's quantized weights)."""

import json

import numpy as np
import pytest
import torch

import awqkit
from awqkit.formats import FORMATS, format_named
from awqkit.model import QuantizedLinear, load_model, load_quantized, quantize_model, save_quantized
from model_helpers import STORIES, checkpoint_tensors, stories_config

gguf = pytest.importorskip("gguf")


def test_registry_entries():
    assert set(FORMATS) == {"awq", "compressed-tensors", "gguf"}
    for fmt in FORMATS.values():
        mod = fmt.module()
        for fn in ("linear_tensors", "quantization_config", "load"):
            assert callable(getattr(mod, fn)), (fmt.name, fn)
    with pytest.raises(ValueError, match="format must be one of"):
        awqkit.AWQConfig(format="exl2")
    assert format_named("awq").config_problem(awqkit.AWQConfig(bits=3)) is not None
    assert format_named("compressed-tensors").config_problem(awqkit.AWQConfig(bits=3)) is None
    with pytest.raises(ValueError, match="blocks of 32"):
        awqkit.AWQConfig(format="gguf")
    with pytest.raises(ValueError, match="3-bit GGUF"):
        awqkit.AWQConfig(format="gguf", bits=3, group_size=32)
    assert [awqkit.AWQConfig(format="gguf", group_size=32, bits=b, zero_point=z).rule
            for b, z in ((4, False), (4, True), (8, False))] == ["q4_0", "q4_1", "q8_0"]


def _quantized(data_dir, **kw):
    model, tok = load_model(data_dir / STORIES)
    cfg = stories_config(**kw)
    model, report = quantize_model(model, cfg, calib=str(data_dir / "c4-validation" / "c4_validation_2k.jsonl"),
                                   tokenizer=tok)
    return model, tok, report


def _gguf_tensors(path):
    reader = gguf.GGUFReader(path)
    return reader, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("bits,zero_point,type_name", [(4, False, "Q4_0"), (4, True, "Q4_1"), (8, False, "Q8_0")])
def test_gguf_read_back_by_the_gguf_package(data_dir, tmp_path, bits, zero_point, type_name):
    model, tok, report = _quantized(data_dir, format="gguf", bits=bits, zero_point=zero_point)
    out = tmp_path / "gguf"
    save_quantized(model, out, tok)
    assert sorted(p.name for p in out.iterdir()) == ["awq_report.json", f"model-{type_name}.gguf"]
    reader, tensors = _gguf_tensors(str(out / f"model-{type_name}.gguf"))
    kv = {f.name: f for f in reader.fields.values()}
    assert kv["general.architecture"].contents() == "llama"
    assert kv["llama.block_count"].contents() == 5
    assert kv["llama.attention.head_count_kv"].contents() == 4
    assert kv["tokenizer.ggml.model"].contents() == "llama"
    assert len(kv["tokenizer.ggml.tokens"].contents()) == 512
    n_head, n_kv = 8, 4
    checked = 0
    for name, m in model.named_modules():
        if not isinstance(m, QuantizedLinear):
            continue
        i = int(name.split(".")[2])
        short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                 "gate_proj": "ffn_gate", "up_proj": "ffn_up"}[name.rsplit(".", 1)[1]]
        t = tensors[f"blk.{i}.{short}.weight"]
        assert t.tensor_type.name == type_name
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        want = m.weight.numpy()
        if short in ("attn_q", "attn_k"):  # llama.cpp's RoPE row order
            heads = n_head if short == "attn_q" else n_kv
            want = want.reshape(heads, 2, -1, want.shape[1]).swapaxes(1, 2).reshape(want.shape)
        np.testing.assert_array_equal(w, want)
        checked += 1
    assert checked == 30  # 5 blocks x (q, k, v, o, gate, up); down_proj (K = 172) stays F16
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "F16"
    assert tensors["token_embd.weight"].tensor_type.name == "Q8_0"
    assert tensors["output_norm.weight"].tensor_type.name == "F32"
    # transformers' own GGUF reader (config, tokenizer and tensors from the file)
    back, back_tok = load_quantized(out, return_tokenizer=True)
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            assert torch.equal(back.get_submodule(name).weight, m.weight), name
    text = "Once upon a time, there was a little girl named Lily. She loved to play outside"
    ids = tok(text, return_tensors="pt").input_ids
    assert back_tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits  # differ only by the Q8_0 token embeddings
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


def test_gguf_via_the_cli(data_dir, tmp_path):
    from awqkit.cli import main

    out = tmp_path / "cli-gguf"
    rc = main(["quantize", str(data_dir / STORIES), "--out", str(out), "--format", "gguf", "--method", "rtn"])
    assert rc == 0
    assert (out / "model-Q4_0.gguf").is_file()
    text = str(data_dir / "tinystories" / "tinystories_sample.txt")
    assert main(["eval", str(out / "model-Q4_0.gguf"), "--text", text, "--seqlen", "128"]) == 0


@pytest.mark.parametrize("bits,zero_point", [(4, True), (3, True), (8, False)])
def test_compressed_tensors_read_back_by_transformers(data_dir, tmp_path, bits, zero_point):
    model, tok, report = _quantized(data_dir, format="compressed-tensors", bits=bits, zero_point=zero_point)
    out = tmp_path / "ct"
    save_quantized(model, out, tok)
    q = json.loads((out / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["format"] == "pack-quantized"
    assert q["config_groups"]["group_0"]["weights"]["num_bits"] == bits
    assert "lm_head" in q["ignore"] and "model.layers.0.mlp.down_proj" in q["ignore"]
    back = load_quantized(out)  # transformers + compressed-tensors, decompressed
    for name, m in model.named_modules():
        if isinstance(m, QuantizedLinear):
            # the package dequantizes in the scales' dtype (float16): our weights rounded once
            want = m.weight.to(torch.float16).to(torch.float32)
            torch.testing.assert_close(back.get_submodule(name).weight.detach().to(torch.float32), want, rtol=0, atol=0)
    ids = tok("Once upon a time, there was a little girl", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = model(ids).logits, back(ids).logits
    assert (a.argmax(-1) == b.argmax(-1)).all()
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)


def test_streaming_equals_in_memory_for_every_format(data_dir, tmp_path):
    from awqkit.model.streaming import quantize_to_checkpoint

    calib = str(data_dir / "c4-validation" / "c4_validation_2k.jsonl")
    for kw in (dict(format="compressed-tensors", bits=4), dict(format="gguf", bits=4, zero_point=False)):
        cfg = stories_config(**kw)
        model, tok = load_model(data_dir / STORIES)
        model, _ = quantize_model(model, cfg, calib=calib, tokenizer=tok)
        a, b = tmp_path / f"mem-{kw['format']}", tmp_path / f"stream-{kw['format']}"
        save_quantized(model, a, tok)
        quantize_to_checkpoint(data_dir / STORIES, b, cfg, calib=calib)
        if kw["format"] == "gguf":
            assert (a / "model-Q4_0.gguf").read_bytes() == (b / "model-Q4_0.gguf").read_bytes()
            continue
        ta, tb = checkpoint_tensors(a), checkpoint_tensors(b)  # one file vs per-block shards
        assert sorted(ta) == sorted(tb)
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
