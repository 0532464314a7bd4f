"""Checkpoints every loader reads the same way (issue 17): transformers 4.x and 5.x, AutoAWQ,
vLLM (AWQ and AWQ-Marlin), and transformers 5 + gptqmodel actually running one on the CPU.

Each loader's reading of config.json is checked with its own code where it is installed
(transformers 5's ``should_convert_module``, AutoAWQ's ``exclude_layers_to_not_quantize``)
and with a small re-implementation, cited, where it is not (vLLM needs CUDA)."""

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import awqkit
from awqkit.model import load_model, load_quantized, save_quantized
from awqkit.model.interop import add_legacy_config_keys, loader_skips, modules_to_not_convert, tokenizer_class_for_v4
from model_helpers import STORIES, autoawq_module, stories_config

TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her dog."


def _qcfg(folder) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())["quantization_config"]


def _quantized(folder) -> set[str]:
    from safetensors import safe_open

    out = set()
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            out |= {k[: -len(".qweight")] for k in st.keys() if k.endswith(".qweight")}
    return out


def _linears(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.fixture(scope="module")
def v5_source(data_dir, tmp_path_factory):
    """stories260K as transformers 5 writes a model it converted (SmolLM2 from GGUF, here):
    RoPE base 100000 in ``rope_parameters`` only, tokenizer class ``TokenizersBackend``."""
    src = tmp_path_factory.mktemp("v5src") / "stories-v5"
    shutil.copytree(data_dir / STORIES, src)
    cfg = json.loads((src / "config.json").read_text())
    for k in ("rope_theta", "rope_scaling", "torch_dtype"):
        cfg.pop(k, None)
    cfg.update(rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, dtype="float32")
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "TokenizersBackend"
    (src / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return src


@pytest.fixture(scope="module")
def v5_checkpoint(v5_source, tmp_path_factory):
    model, tok = load_model(v5_source)
    assert type(tok).__name__ == "TokenizersBackend"
    model, _ = awqkit.rtn_quantize_model(model, stories_config())
    out = tmp_path_factory.mktemp("ckpt") / "v5-rtn"
    save_quantized(model, out, tokenizer=tok)  # transformers 5 writes TokenizersBackend here
    return model, tok, out


@pytest.fixture(scope="module")
def awq_checkpoint(data_dir, tmp_path_factory):
    model, tok = load_model(data_dir / STORIES)
    model, _ = awqkit.quantize_model(model, stories_config(), calib=str(data_dir / "c4-validation" / "c4_validation_2k.jsonl"),
                                     tokenizer=tok)
    out = tmp_path_factory.mktemp("ckpt") / "stories-awq"
    save_quantized(model, out, tokenizer=tok)
    return model, tok, out


# -- 1. config.json and the tokenizer for transformers 4.x ----------------------------------

def test_config_json_has_the_transformers4_keys(v5_checkpoint):
    _, _, out = v5_checkpoint
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["rope_parameters"] == {"rope_theta": 100000.0, "rope_type": "default"}
    # transformers 4.x reads only the top-level key (LlamaConfig(rope_theta=10000.0) otherwise)
    assert cfg["rope_theta"] == 100000.0
    assert "rope_scaling" not in cfg  # default RoPE: 4.x wants none (or null)
    assert cfg["torch_dtype"] == cfg["dtype"] == "float32"


def test_transformers5_reads_the_rope_base_back(v5_checkpoint):
    model, _, out = v5_checkpoint
    reloaded = load_quantized(out)
    assert reloaded.config.rope_parameters["rope_theta"] == 100000.0
    head_dim = reloaded.config.head_dim
    expected = 1.0 / 100000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq, expected)
    ids = torch.tensor([[1, 403, 407, 261, 378, 300, 12]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_scaled_rope_round_trips_through_the_legacy_keys():
    """A non-default RoPE gets ``rope_scaling`` in the transformers-4 form (no rope_theta inside);
    transformers 5 reads ``rope_scaling`` back as ``rope_parameters`` (it takes precedence
    there), so it must give the same parameters."""
    from transformers import LlamaConfig

    rp = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=1,
                      max_position_embeddings=131072, rope_parameters=dict(rp)).to_dict()
    add_legacy_config_keys(cfg)
    assert cfg["rope_theta"] == 500000.0
    assert cfg["rope_scaling"] == {k: v for k, v in rp.items() if k != "rope_theta"}
    back = LlamaConfig.from_dict(cfg)
    assert back.rope_parameters == rp


def test_tokenizer_class_is_one_transformers4_knows(v5_source, v5_checkpoint):
    from transformers import AutoTokenizer

    _, tok, out = v5_checkpoint
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    # the source names TokenizersBackend too, and has a tokenizer.json
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    ref = tok(TEXT).input_ids
    assert AutoTokenizer.from_pretrained(out)(TEXT).input_ids == ref
    _, tok2 = load_quantized(out, return_tokenizer=True)
    assert tok2(TEXT).input_ids == ref
    assert tok2.decode(ref) == tok.decode(ref)


def test_tokenizer_class_choice():
    assert tokenizer_class_for_v4("LlamaTokenizer", "LlamaTokenizer", True, True) == "LlamaTokenizer"
    assert tokenizer_class_for_v4("TokenizersBackend", "GPT2Tokenizer", True, False) == "GPT2Tokenizer"
    assert tokenizer_class_for_v4("TokenizersBackend", "TokenizersBackend", True, False) == "PreTrainedTokenizerFast"
    assert tokenizer_class_for_v4("TokenizersBackend", None, True, False) == "PreTrainedTokenizerFast"
    assert tokenizer_class_for_v4("SentencePieceBackend", None, False, True) == "LlamaTokenizer"


def test_source_tokenizer_class_is_kept(awq_checkpoint):
    _, _, out = awq_checkpoint
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"


# -- 2. modules_to_not_convert as every loader matches it -----------------------------------

def _autoawq_module_utils():
    """AutoAWQ's own awq/utils/module.py: get_named_linears and exclude_layers_to_not_quantize
    are what its loader (awq/models/base.py _load_quantized_modules) runs on each decoder block."""
    return autoawq_module("utils/module.py")


# vLLM's rules, re-implemented (vLLM needs CUDA). vllm/model_executor/layers/quantization/
# base_config.py QuantizationConfig.get_from_keys / get_from_keys_or: the first key present.
def _get_from_keys(config, keys):
    for k in keys:
        if k in config:
            return config[k]
    raise ValueError(f"none of {keys} in the quantization config")


def _get_from_keys_or(config, keys, default):
    try:
        return _get_from_keys(config, keys)
    except ValueError:
        return default


# vllm/model_executor/layers/quantization/utils/quant_utils.py is_layer_skipped, as AWQConfig and
# AWQMarlinConfig.get_quant_method call it (skip_with_substr=True, the model's
# packed_modules_mapping; Llama: qkv_proj and gate_up_proj): a fused layer's shards must agree.
_LLAMA_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


def _vllm_is_layer_skipped(prefix, ignored, fused=_LLAMA_PACKED):
    proj = prefix.split(".")[-1]
    if proj in fused:
        shards = {any(i in prefix.replace(proj, s) for i in ignored) for s in fused[proj]}
        if len(shards) != 1:
            raise ValueError(f"Detected some but not all shards of {prefix} are quantized")
        return shards.pop()
    return any(i in prefix for i in ignored)


def _vllm_prefixes(hf_names):
    """vLLM's Llama module names: q/k/v and gate/up fused."""
    out = set()
    for n in hf_names:
        parent, proj = n.rsplit(".", 1)
        fused = next((f for f, shards in _LLAMA_PACKED.items() if proj in shards), None)
        out.add(f"{parent}.{fused}" if fused else n)
    return out


def test_skips_in_every_layer_are_layer_relative(awq_checkpoint, data_dir):
    from transformers.quantizers.quantizers_utils import should_convert_module

    _, _, out = awq_checkpoint
    model, _ = load_model(data_dir / STORIES)  # the skeleton a loader builds before converting
    q = _qcfg(out)
    # stories260K: intermediate 172 fits neither the group size nor the 8-column packing
    assert q["modules_to_not_convert"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    quantized = _quantized(out)
    linears = _linears(model) - {"lm_head"}
    assert len(quantized) == 20 and quantized < linears
    # transformers 5 (its own function): converts exactly the quantized linears
    assert {n for n in linears if should_convert_module(n, q["modules_to_not_convert"])} == quantized
    # AutoAWQ (its own functions, per decoder block, on names inside the block)
    mu = _autoawq_module_utils()
    for i, layer in enumerate(model.model.layers):
        kept = mu.exclude_layers_to_not_quantize(mu.get_named_linears(layer), q["modules_to_not_convert"])
        assert {f"model.layers.{i}.{n}" for n in kept} == {n for n in quantized if n.startswith(f"model.layers.{i}.")}
    # vLLM: skips exactly the fused layers whose shards are all in full precision
    for prefix in _vllm_prefixes(linears):
        assert _vllm_is_layer_skipped(prefix, q["modules_to_not_convert"]) == \
            (prefix not in _vllm_prefixes(quantized)), prefix


def test_skips_in_some_layers_keep_full_paths(data_dir, tmp_path, caplog):
    from transformers.quantizers.quantizers_utils import should_convert_module

    model, _ = load_model(data_dir / STORIES)
    linears = _linears(model) - {"lm_head"}  # before quantization: every linear is an nn.Linear
    model, _ = awqkit.rtn_quantize_model(model, stories_config(modules_to_not_convert=["layers.1.self_attn.o_proj"]))
    with caplog.at_level(logging.WARNING, logger="awqkit"):
        save_quantized(model, tmp_path / "partial")
    q = _qcfg(tmp_path / "partial")
    assert q["modules_to_not_convert"] == ["layers.1.self_attn.o_proj", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                                           "model.layers.1.self_attn.o_proj"]
    notes = [r.message for r in caplog.records if r.message.startswith("checkpoint config: self_attn.o_proj")]
    assert notes and "AutoAWQ" in notes[0] and "1 of 5 blocks" in notes[0], notes
    quantized = _quantized(tmp_path / "partial")
    assert "model.layers.1.self_attn.o_proj" not in quantized and "model.layers.2.self_attn.o_proj" in quantized
    assert {n for n in linears if should_convert_module(n, q["modules_to_not_convert"])} == quantized
    for prefix in _vllm_prefixes(linears):
        assert _vllm_is_layer_skipped(prefix, q["modules_to_not_convert"]) == (prefix not in _vllm_prefixes(quantized))


def test_layer_relative_name_that_matches_a_quantized_linear_falls_back(caplog):
    """Substring matching: ``mlp.gate`` (a router kept in full precision in every block) is also
    inside ``...moe.mlp.gate_proj``, which is quantized: written as full paths, with a note."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    n = 3
    skipped = [f"model.layers.{i}.mlp.gate" for i in range(n)]
    quantized = [f"model.layers.{i}.{p}" for i in range(n) for p in ("moe.mlp.gate_proj", "self_attn.q_proj")]
    with caplog.at_level(logging.WARNING, logger="awqkit"):
        entries, notes = modules_to_not_convert(skipped, quantized, "model.layers", n)
    assert entries == skipped
    assert len(notes) == 1 and "'mlp.gate'" in notes[0] and "moe.mlp.gate_proj" in notes[0] and "AutoAWQ" in notes[0]
    assert any(notes[0] in r.message for r in caplog.records)
    for name in quantized:
        assert not any(loader_skips(e, name) for e in entries) and should_convert_module(name, entries)
    for name in skipped:
        assert not should_convert_module(name, entries) and _vllm_is_layer_skipped(name, entries)
    # without the quantized look-alike the layer-relative name is written
    assert modules_to_not_convert(skipped, quantized[1::2], "model.layers", n)[0] == ["mlp.gate"]


def test_full_paths_that_match_a_quantized_linear_are_reported():
    """``model.layers.0.mlp.gate`` is inside ``model.layers.0.mlp.gate_proj``: no spelling works
    for substring matchers; the note says so (transformers 5 matches at module boundaries)."""
    skipped = ["model.layers.0.mlp.gate"]
    quantized = ["model.layers.0.mlp.gate_proj", "model.layers.1.mlp.gate_proj"]
    entries, notes = modules_to_not_convert(skipped, quantized, "model.layers", 2)
    assert entries == skipped
    assert any("substrings" in m and "model.layers.0.mlp.gate_proj" in m for m in notes), notes


# -- 3. the fields vLLM's AWQ and AWQ-Marlin loaders read -----------------------------------

def test_vllm_awq_and_awq_marlin_read_the_config(awq_checkpoint):
    _, _, out = awq_checkpoint
    q = _qcfg(out)
    # vllm/model_executor/layers/quantization/awq.py AWQConfig.from_config: the AutoAWQ name first
    awq = dict(weight_bits=_get_from_keys(q, ["w_bit", "bits"]), group_size=_get_from_keys(q, ["q_group_size", "group_size"]),
               zero_point=_get_from_keys(q, ["zero_point"]),
               modules_to_not_convert=_get_from_keys_or(q, ["modules_to_not_convert"], None))
    # vllm/model_executor/layers/quantization/awq_marlin.py AWQMarlinConfig.from_config: the new names only
    marlin = dict(weight_bits=_get_from_keys(q, ["bits"]), group_size=_get_from_keys(q, ["group_size"]),
                  zero_point=_get_from_keys(q, ["zero_point"]),
                  modules_to_not_convert=_get_from_keys_or(q, ["modules_to_not_convert"], None))
    expected = dict(weight_bits=4, group_size=32, zero_point=True, modules_to_not_convert=["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"])
    assert awq == expected and marlin == expected
    assert _get_from_keys_or(q, ["lm_head"], default=False) is False  # AWQMarlinConfig: the head is not quantized
    # AWQMarlinConfig.is_awq_marlin_compatible (bar the CUDA check): these keys present, 4 bits,
    # and marlin_utils.check_marlin_supported: group size in MARLIN_SUPPORTED_GROUP_SIZES, zero points for uint4
    assert q.get("quant_method", "").lower() == "awq"
    assert all(q.get(k) is not None for k in ("bits", "group_size", "zero_point"))
    assert q["bits"] == 4 and q["group_size"] in (-1, 32, 64, 128) and q["zero_point"] is True
    # AutoAWQ reads config.json through awq/models/_config.py AwqConfig.from_transformers_dict
    assert {k: q[k] for k in ("bits", "group_size", "zero_point", "version")} == \
        {"bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}


# -- 4. a real reader: transformers 5 + gptqmodel on the CPU --------------------------------

_GPTQMODEL_READER = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    path, ids_file, out_file = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32).eval()
    ids = torch.load(ids_file)
    awq = [m for m in model.modules() if type(m).__name__ == "TorchAtenAwqLinear"]
    out = {"kinds": sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith("_proj")}), "n_awq": len(awq)}
    with torch.no_grad():
        # its dequantizing path (weights from qweight/qzeros/scales, matmul in the input's float32)
        for m in awq:
            m.linear_mode = "train"
        out["dequant"] = model(ids).logits
        # its default CPU inference path: the int4pack kernel, in bfloat16
        for m in awq:
            m.linear_mode = None
        out["fused"] = model(ids).logits
        out["fused_modes"] = sorted({m.linear_mode for m in awq})
    torch.save(out, out_file)
""")


def _nll(logits, ids):
    return torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).item()


def test_transformers5_with_gptqmodel_reads_the_checkpoint(awq_checkpoint, data_dir, tmp_path):
    """transformers 5.24 loads the AWQ checkpoint through gptqmodel 7.6.0's CPU kernel
    (``TorchAtenAwqLinear``; the Makefile installs gptqmodel with --no-deps), in a child process,
    since importing gptqmodel sets process-wide environment variables. On its dequantizing path
    (float32 matmul) its logits agree with ``load_quantized``'s: top-1 100%, perplexity within
    0.5%. Its default CPU path runs the int4pack kernel in bfloat16 (activations and scales
    rounded to 8 bits of mantissa): the same model, read the same way, with bf16 noise, so a
    near-tie token may flip there (checked at 99%)."""
    if importlib.util.find_spec("gptqmodel") is None:
        pytest.fail("gptqmodel is not installed: make install (pip install --no-deps gptqmodel==7.6.0 and its small "
                    "pure-Python dependencies, see the Makefile)")
    _, tok, out = awq_checkpoint
    text = (data_dir / "tinystories" / "tinystories_sample.txt").read_text()
    ids = torch.tensor([tok(text).input_ids[:256]])
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA")}
    proc = subprocess.run([sys.executable, "-c", _GPTQMODEL_READER, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")
    assert theirs["n_awq"] == 20, theirs["kinds"]  # gptqmodel's AWQ kernel on every quantized linear
    assert theirs["fused_modes"] == ["inference"]
    with torch.no_grad():
        ours = load_quantized(out)(ids).logits
    ppl_ours = math.exp(_nll(ours, ids))
    stats = {}
    for path in ("dequant", "fused"):
        logits = theirs[path]
        stats[path] = ((logits.argmax(-1) == ours.argmax(-1)).float().mean().item(), math.exp(_nll(logits, ids)),
                       (logits - ours).abs().max().item())
        print(f"gptqmodel ({path}) vs load_quantized, stories260K AWQ, 256 tokens: top-1 agreement {stats[path][0]:.4f}, "
              f"perplexity {stats[path][1]:.4f} vs {ppl_ours:.4f}, max |dlogit| {stats[path][2]:.2e}")
    top1, ppl, _ = stats["dequant"]
    assert top1 == 1.0 and abs(ppl / ppl_ours - 1) < 0.005
    top1, ppl, _ = stats["fused"]
    assert top1 >= 0.99 and abs(ppl / ppl_ours - 1) < 0.005
