"""GGUF files for llama.cpp and ollama (``awqkit.formats`` entry ``"gguf"``).

The pipeline quantizes every linear with the exact llama.cpp reference quantizer of the target
type (Q4_0, Q4_1, Q8_0; ``awqkit.gguf_blocks``), so the AWQ scale and clip searches optimise
the weights the file holds. The checkpoint folder is first written like the other formats
(each quantized linear as its GGUF block bytes); ``finalize`` then turns it into one
``model-<TYPE>.gguf`` with the ``gguf`` package: llama.cpp's tensor names, the q/k row order
its RoPE expects, the hyperparameters and the tokenizer (vocabulary, merges, special tokens,
chat template). Token embeddings and an untied output head are stored as Q8_0 (what
``llama-quantize --token-embedding-type q8_0 --output-tensor-type q8_0`` writes), norms in
F32, linears kept in full precision in F16.

Architectures: one row of ``_ARCHS`` each (llama, mistral, qwen2 today).
"""

from __future__ import annotations

import json
import logging
import os
from hashlib import sha256
from pathlib import Path

import numpy as np
import torch

from ..gguf_blocks import pack_blocks
from ..quantizer import quantize

__all__ = ["finalize", "gguf_file", "linear_tensors", "load", "quantization_config"]

log = logging.getLogger(__name__)

# model_type -> (gguf MODEL_ARCH name, whether q/k rows are permuted as llama.cpp's
# convert_hf_to_gguf does for the llama architecture: its RoPE pairs rotate (2i, 2i+1), the
# Hugging Face layout pairs (i, i + d/2)).
_ARCHS = {"llama": ("LLAMA", True), "mistral": ("LLAMA", True), "qwen2": ("QWEN2", False)}

# convert_hf_to_gguf.py's pre-tokenizer detection: sha256 of str(tokenizer.encode(_CHECK_TEXT))
# -> the name llama.cpp knows (llama.cpp's conversion/base.py, get_vocab_base_pre).
_CHECK_TEXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 .. Qwen2.5
}
_TOKENIZER_LEFTOVERS = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                        "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json",
                        "config.json", "model.safetensors.index.json")


def linear_tensors(qt, bias: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The GGUF block bytes [N, K / 32 * type_size] uint8 of a linear (and its float32 bias)."""
    out = {"weight": torch.from_numpy(pack_blocks(qt))}
    if bias is not None:
        out["bias"] = bias.detach().to(torch.float32).contiguous()
    return out


def quantization_config(cfg, not_converted: list[str], **_context) -> dict:
    # Read back by finalize only (config.json does not survive into the .gguf folder).
    return {"quant_method": "gguf", "type": cfg.rule, "modules_to_not_convert": list(not_converted)}


def gguf_file(folder: str) -> str | None:
    """The .gguf file of a checkpoint folder written in this format, or None."""
    if not os.path.isdir(folder):
        return None
    names = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, names[0]) if names else None


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute on the rows of a weight (or of its block
    bytes: a row's blocks move with it, so quantized rows permute exactly)."""
    return np.ascontiguousarray(w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
                                .swapaxes(1, 2).reshape(w.shape))


def _rope_theta(config: dict) -> float:
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta", config.get("rope_theta"))
    if theta is None:
        raise ValueError("config.json has no RoPE base (rope_parameters.rope_theta or rope_theta)")
    rope_type = params.get("rope_type", (config.get("rope_scaling") or {}).get("rope_type", "default"))
    if rope_type not in (None, "default"):
        raise ValueError(f"RoPE scaling {rope_type!r} is not written to GGUF yet: only the default RoPE")
    return float(theta)


def _read_tensors(folder: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    out: dict[str, torch.Tensor] = {}
    for fname in files:
        with safe_open(os.path.join(folder, fname), framework="pt") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


def _add_tokenizer(writer, folder: str, vocab_size: int) -> None:
    import gguf

    if os.path.isfile(os.path.join(folder, "tokenizer.model")):  # SentencePiece (Llama 1/2, stories)
        spm = gguf.vocab.SentencePieceVocab(Path(folder))
        spm_tokens: list[bytes] = []
        scores, spm_types = [], []
        for text, score, toktype in spm.all_tokens():
            spm_tokens.append(text)
            scores.append(score)
            spm_types.append(toktype)
        for i in range(len(spm_tokens), vocab_size):  # padded vocabularies (as convert_hf_to_gguf)
            spm_tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            spm_types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(spm_tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(spm_types)
        gguf.SpecialVocab(folder, n_vocab=len(spm_tokens)).add_to_gguf(writer)
        return
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    chk = sha256(str(tok.encode(_CHECK_TEXT)).encode()).hexdigest()
    pre = _PRE_TOKENIZERS.get(chk)
    if pre is None:
        raise ValueError(f"GGUF: the tokenizer in {folder} is not one whose llama.cpp pre-tokenizer awqkit knows "
                         f"(check hash {chk}); known: {sorted(set(_PRE_TOKENIZERS.values()))}")
    vocab = tok.get_vocab()
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens: list[str] = []
    types = []
    for i in range(vocab_size):  # get_vocab_base of convert_hf_to_gguf
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added:
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, load_merges=True).add_to_gguf(writer)


def finalize(folder: str, cfg) -> None:
    """Turn the complete checkpoint folder into ``model-<TYPE>.gguf`` (plus awq_report.json)."""
    import gguf

    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type not in _ARCHS:
        raise ValueError(f"GGUF: model_type {model_type!r} is not written yet; supported: {sorted(_ARCHS)}")
    arch_name, permute = _ARCHS[model_type]
    arch = gguf.MODEL_ARCH[arch_name]
    gtype = gguf.GGMLQuantizationType[cfg.rule.upper()]
    n_layers = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    vocab_size = int(config["vocab_size"])
    names = gguf.get_tensor_name_map(arch, n_layers)

    path = os.path.join(folder, f"model-{cfg.rule.upper()}.gguf")
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(os.path.basename(os.path.normpath(config.get("_name_or_path") or folder)) or "model")
    writer.add_file_type({"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[cfg.rule])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    _add_tokenizer(writer, folder, vocab_size)

    tensors = _read_tensors(folder)
    for key in sorted(tensors, key=_tensor_order):
        t = tensors.pop(key)
        new = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"GGUF: no llama.cpp name for tensor {key} ({arch_name})")
        rows = {"q_proj": n_head, "k_proj": n_kv}.get(key.rsplit(".", 2)[-2]) if permute else None
        if t.dtype == torch.uint8:  # a quantized linear's block bytes
            data = t.numpy()
            if rows is not None and key.endswith(".weight"):
                data = _permute_rows(data, rows)
            writer.add_tensor(new, data, raw_dtype=gtype)
            continue
        a = t.to(torch.float32).numpy()
        if rows is not None:
            a = _permute_rows(a, rows)
        if a.ndim == 2 and key.endswith(("embed_tokens.weight", "lm_head.weight")) and a.shape[1] % 32 == 0:
            qt = quantize(np.ascontiguousarray(a), 8, 32, False, rule="q8_0")
            writer.add_tensor(new, pack_blocks(qt), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        elif a.ndim == 2:
            writer.add_tensor(new, a.astype(np.float16))
        else:
            writer.add_tensor(new, np.ascontiguousarray(a, dtype=np.float32))
        del a
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for fname in os.listdir(folder):
        if fname.endswith(".safetensors") or fname in _TOKENIZER_LEFTOVERS:
            os.remove(os.path.join(folder, fname))
    log.info("wrote %s", path)


def _tensor_order(key: str):
    # token embedding, then the blocks in order, then the rest (llama.cpp's files read this way)
    for p in key.split("."):
        if p.isdigit():
            return (1, int(p), key)
    return (0 if "embed" in key else 2, 0, key)


def load(path: str, return_tokenizer: bool = False):
    """A float32 transformers model from a GGUF file (or a folder holding one), read by
    transformers' own GGUF reader (config and tokenizer from the metadata, tensors dequantized
    by the ``gguf`` package, q/k rows back in Hugging Face order): to evaluate the file in
    Python. To run it fast, use llama.cpp."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from .weight_files import parameters_on_meta

    file = gguf_file(path) if os.path.isdir(path) else path
    if not file or not os.path.isfile(file):
        raise FileNotFoundError(f"no .gguf file at {path}")
    gdir, gname = os.path.dirname(os.path.abspath(file)), os.path.basename(file)
    config = AutoConfig.from_pretrained(gdir, gguf_file=gname)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(file, return_tensors=True, model_to_load=model)["tensors"]
    state = {k: torch.as_tensor(v).to(torch.float32) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{file}: GGUF tensors do not match the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    model.eval()
    if return_tokenizer:
        from transformers import AutoTokenizer

        return model, AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    return model
