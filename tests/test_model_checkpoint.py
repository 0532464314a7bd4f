"""AutoAWQ gemm checkpoints: layout, config, sharding, an independent reader, and reload
onto the fused kernel (generation and perplexity)."""

import json
import os

import numpy as np
import pytest
import torch

import awqkit
from awqkit.model import AWQLinear, QuantizedLinear, evaluate_perplexity, load_model, load_quantized, save_quantized
from model_helpers import STORIES, autoawq_module, checkpoint_tensors, stories_config


@pytest.fixture(scope="module")
def quantized(data_dir, tmp_path_factory):
    model, tok = load_model(data_dir / STORIES)
    model, report = awqkit.quantize_model(model, stories_config(), calib=str(data_dir / "c4-validation" / "c4_validation_2k.jsonl"), tokenizer=tok)
    out = tmp_path_factory.mktemp("ckpt") / "stories-awq"
    save_quantized(model, out)
    return model, tok, out


def test_layout_and_config(quantized, data_dir):
    model, _, out = quantized
    files = sorted(os.listdir(out))
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "awq_report.json"):
        assert f in files, files
    cfg = json.loads((out / "config.json").read_text())
    q = cfg["quantization_config"]
    assert {k: q[k] for k in ("quant_method", "bits", "group_size", "zero_point", "version")} == \
        {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    # kept in full precision in every block: the name inside the block, as AutoAWQ matches it
    assert q["modules_to_not_convert"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    t = checkpoint_tensors(out)
    name = "model.layers.2.self_attn.k_proj"
    assert t[name + ".qweight"].dtype == torch.int32 and t[name + ".qweight"].shape == (64, 32 // 8)
    assert t[name + ".qzeros"].dtype == torch.int32 and t[name + ".qzeros"].shape == (64 // 32, 32 // 8)
    assert t[name + ".scales"].dtype == torch.float16 and t[name + ".scales"].shape == (2, 32)
    assert name + ".weight" not in t
    # everything else as in the source (fp32, tied lm_head stored once as in the source)
    src = checkpoint_tensors(data_dir / STORIES)
    for k in ("model.layers.0.mlp.down_proj.weight", "model.norm.weight"):
        assert t[k].dtype == src[k].dtype and t[k].shape == src[k].shape
    qnames = {k[: -len(".qweight")] for k in t if k.endswith(".qweight")}
    expected = {k for k in src if not (k.endswith(".weight") and k[: -len(".weight")] in qnames)}
    assert {k for k in t if not k.endswith((".qweight", ".qzeros", ".scales"))} == expected
    report = json.loads((out / "awq_report.json").read_text())
    assert report["method"] == "awq" and report["mappings"] and report["stages"]


def _autoawq_packing_utils():
    """AutoAWQ's own pure-torch unpacking code (awq/utils/packing_utils.py)."""
    return autoawq_module("utils/packing_utils.py")


def test_autoawq_reads_the_weights_we_evaluated(quantized):
    """Interoperability: an independent consumer, AutoAWQ's own `dequantize_gemm` (the code
    transformers' and AutoAWQ's loaders use to turn gemm tensors back into weights), reads
    our checkpoint and gets exactly the dequantized weights our quantized model ran with.
    Chosen because it is the reference implementation of the format, is pure torch and runs
    offline on the CPU; transformers' own AWQ path needs the CUDA kernels of autoawq or
    gptqmodel."""
    pu = _autoawq_packing_utils()
    model, _, out = quantized
    t = checkpoint_tensors(out)
    names = sorted(n for n, m in model.named_modules() if isinstance(m, QuantizedLinear))
    assert len(names) == 20
    for name in names:
        qw, qz, sc = t[name + ".qweight"], t[name + ".qzeros"], t[name + ".scales"]
        ours = model.get_submodule(name).weight  # [N, K] float32, what we evaluated
        # float32 scales: (q - z) * s is then exact, so equality is bit for bit
        theirs = pu.dequantize_gemm(qw, qz, sc.to(torch.float32), 4, 32).T
        assert torch.equal(theirs, ours), name
        # and AutoAWQ's own fp16 arithmetic agrees to fp16 rounding
        theirs16 = pu.dequantize_gemm(qw, qz, sc, 4, 32).T.to(torch.float32)
        torch.testing.assert_close(theirs16, ours, rtol=2**-10, atol=0)


def test_reload_on_the_fused_kernel(quantized, data_dir):
    model, tok, out = quantized
    reloaded, tok2 = load_quantized(out, return_tokenizer=True)
    assert isinstance(reloaded.model.layers[0].self_attn.q_proj, AWQLinear)
    assert isinstance(reloaded.model.layers[0].mlp.down_proj, torch.nn.Linear)
    ids = tok("Once upon a time, there was a", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    gen = reloaded.generate(ids, max_new_tokens=24, do_sample=False)
    text = tok2.decode(gen[0], skip_special_tokens=True)
    assert text.startswith("Once upon a time") and len(text.split()) > 12, text
    sample = (data_dir / "tinystories" / "tinystories_sample.txt").read_text()
    ppl_q = evaluate_perplexity(reloaded, tok2, sample, seqlen=128)
    ppl_fp = evaluate_perplexity(load_model(data_dir / STORIES)[0], tok, sample, seqlen=128)
    print(f"stories260K 4-bit g32 AWQ reloaded: perplexity {ppl_q:.3f} (fp {ppl_fp:.3f})")
    assert ppl_fp < ppl_q < ppl_fp * 1.15


def test_sharding(quantized, tmp_path):
    model, _, _ = quantized
    out = tmp_path / "sharded"
    save_quantized(model, out, max_shard_size="200KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 3 and all((out / s).is_file() for s in shards)
    single = checkpoint_tensors(quantized[2])
    assert set(index["weight_map"]) == set(single)
    reloaded = load_quantized(out)
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_three_bit_cannot_be_saved(data_dir, tmp_path):
    model, _ = load_model(data_dir / STORIES)
    model, _ = awqkit.rtn_quantize_model(model, stories_config(bits=3))
    with pytest.raises(ValueError, match="4-bit"):
        save_quantized(model, tmp_path / "x")


def test_not_an_awq_checkpoint(data_dir):
    with pytest.raises(ValueError, match="not an AWQ gemm checkpoint"):
        load_quantized(data_dir / STORIES)


def test_packed_tensors_are_the_quantizer_output(quantized):
    """The packed tensors unpack (our own reader) to codes that dequantize to the weight."""
    model, _, _ = quantized
    m = model.model.layers[1].self_attn.o_proj
    qt = awqkit.unpack_awq(m.stored["qweight"].numpy(), m.stored["qzeros"].numpy(), m.stored["scales"].numpy(), 32)
    np.testing.assert_array_equal(qt.dequantize(), m.weight.numpy())


def test_unquantized_tensors_keep_the_source_dtype(data_dir, tmp_path):
    """A float16 source stays float16 outside the quantized linears (we compute in float32)."""
    model, tok = load_model(data_dir / STORIES)
    src = tmp_path / "fp16-src"
    model.to(torch.float16).save_pretrained(src)
    tok.save_pretrained(src)
    q, _ = awqkit.rtn_quantize_model(str(src), stories_config())
    save_quantized(q, tmp_path / "out")
    t = checkpoint_tensors(tmp_path / "out")
    assert t["model.norm.weight"].dtype == torch.float16
    assert t["model.layers.0.mlp.down_proj.weight"].dtype == torch.float16
    assert t["model.layers.0.self_attn.q_proj.scales"].dtype == torch.float16
    assert (tmp_path / "out" / "tokenizer.json").is_file()
