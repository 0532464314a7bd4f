"""Every registered model family, on a tiny random-weight model built from its transformers
config class (no download): the pipeline runs with no user mappings, folding alone keeps the
function, 8-bit AWQ is as good as 8-bit rounding at the logits, at least 90% of the blocks'
linear weights are quantized (MoE experts included), and a saved checkpoint reloads to the
same model."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import awqkit
from awqkit.model import QuantizedLinear, load_quantized, save_quantized
from awqkit.model.families import FAMILIES

VOCAB = 128
_IDS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_DECODER = dict(_IDS, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
_MOE = dict(num_experts_per_tok=2)

# model_type -> the config of a tiny model of that family (2 blocks, GQA where the family has it).
CONFIGS = {
    "llama": lambda: T.LlamaConfig(**_DECODER),
    "mistral": lambda: T.MistralConfig(**_DECODER),
    "qwen2": lambda: T.Qwen2Config(**_DECODER),
    "qwen3": lambda: T.Qwen3Config(**_DECODER, head_dim=16),
    "gemma": lambda: T.GemmaConfig(**_DECODER, head_dim=16),
    "gemma2": lambda: T.Gemma2Config(**_DECODER, head_dim=16, sliding_window=16),
    "gemma3_text": lambda: T.Gemma3TextConfig(**_DECODER, head_dim=16, sliding_window=16,
                                              layer_types=["sliding_attention", "full_attention"]),
    "phi3": lambda: T.Phi3Config(**_DECODER),
    "mixtral": lambda: T.MixtralConfig(**_DECODER, **_MOE, num_local_experts=4),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(**_DECODER, **_MOE, num_experts=4, moe_intermediate_size=64,
                                          shared_expert_intermediate_size=128),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(**_DECODER, **_MOE, num_experts=4, moe_intermediate_size=64, head_dim=16),
    "opt": lambda: T.OPTConfig(**_IDS, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                               word_embed_proj_dim=64, max_position_embeddings=256),
    "gpt_neox": lambda: T.GPTNeoXConfig(**_IDS, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=256),
    "falcon": lambda: T.FalconConfig(**_IDS, hidden_size=64, num_hidden_layers=2, num_attention_heads=4),
    "gpt2": lambda: T.GPT2Config(**_IDS, n_embd=64, n_layer=2, n_head=4, n_positions=256),
}
# gemma3 (the multimodal wrapper's text type) shares gemma3_text's family entry.
ALIASES = {"gemma3": "gemma3_text"}


def test_every_family_has_a_test_config():
    assert set(FAMILIES) - set(ALIASES) == set(CONFIGS)


def _model(model_type: str):
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[model_type]())
    with torch.no_grad():  # wider than the default init, so that activations have salient channels
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "embed" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0, 0.08)
    return model.eval()


def _calib() -> torch.Tensor:
    return torch.randint(3, VOCAB, (8, 64), generator=torch.Generator().manual_seed(1))


_EVAL = torch.randint(3, VOCAB, (2, 48), generator=torch.Generator().manual_seed(2))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(_EVAL).logits.to(torch.float32)


def _routing(model) -> torch.Tensor | None:
    """The experts every eval token is routed to, per MoE layer ([tokens, layers * top_k],
    sorted per layer), or None for a dense model."""
    picks: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda mod, a, out: picks.append(out[2].sort(dim=-1).values))
             for m in model.modules() if type(m).__name__.endswith("TopKRouter")]
    _logits(model)
    for h in hooks:
        h.remove()
    return torch.cat(picks, dim=-1) if picks else None


def _rel_max(out, ref, keep: torch.Tensor | None = None) -> float:
    err = (out - ref).abs().amax(dim=-1).flatten()
    if keep is not None:
        err = err[keep]
    return float(err.max() / ref.abs().max())


def _config(**kw):
    return awqkit.AWQConfig(**{"group_size": 32, "n_samples": 8, "seqlen": 64, **kw})


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family_run(request):
    """One family: full-precision logits and the runs every check reads."""
    mt = request.param
    ref = _logits(_model(mt))
    folded, fold_report = awqkit.quantize_model(_model(mt), _config(bits=8), calib=_calib(), method="fold")
    # More calibration tokens for the 8-bit comparison: at 8 bits both errors are small and the
    # statistics of a few hundred tokens make AWQ's choice noisy.
    awq8, report8 = awqkit.quantize_model(_model(mt), _config(bits=8, n_samples=32),
                                          calib=torch.randint(3, VOCAB, (32, 64), generator=torch.Generator().manual_seed(3)))
    rtn8, _ = awqkit.quantize_model(_model(mt), _config(bits=8), method="rtn")
    # A token whose top-k experts change under quantization (a near tie in the router) jumps
    # to other experts: a discrete effect of MoE, not of the fold or the rounding, so the
    # logit comparison keeps the tokens routed as in full precision by both models.
    route = _routing(_model(mt))
    keep = None if route is None else (_routing(awq8) == route).all(-1) & (_routing(rtn8) == route).all(-1)
    return {"type": mt, "ref": ref, "fold": _logits(folded), "fold_report": fold_report, "awq8": _logits(awq8),
            "report8": report8, "awq8_model": awq8, "rtn8": _logits(rtn8), "keep": keep}


def test_runs_with_the_family_preset_and_searches(family_run):
    report = family_run["report8"]
    assert report.family == FAMILIES[family_run["type"]].name
    searched = [m for m in report.mappings if "skipped" not in m]
    assert searched, "no mapping was searched"
    assert all(c["max_relative_error"] <= 1e-4 for c in report.fold_checks)


def test_folding_alone_keeps_the_logits(family_run):
    assert _rel_max(family_run["fold"], family_run["ref"]) < 1e-4
    assert any(m.get("ratio") is not None for m in family_run["fold_report"].mappings), "nothing was folded"


def test_8bit_awq_is_no_worse_than_8bit_rounding(family_run):
    keep = family_run["keep"]
    if keep is not None:
        assert keep.float().mean() >= 0.9, "quantization re-routed more than 10% of the tokens"
    awq = _rel_max(family_run["awq8"], family_run["ref"], keep)
    rtn = _rel_max(family_run["rtn8"], family_run["ref"], keep)
    assert awq <= 1.5 * rtn, f"8-bit AWQ max logit error {awq:.3g} vs RTN {rtn:.3g}"


def test_at_least_90_percent_of_block_weights_quantized(family_run):
    model, report = family_run["awq8_model"], family_run["report8"]
    from awqkit.model.families import layout_for

    blocks = model.get_submodule(layout_for(model.config).layers_path)
    quantized = sum(m.weight.numel() for m in blocks.modules() if isinstance(m, QuantizedLinear))
    kept = sum(e["params"] for e in report.full_precision)
    assert quantized / (quantized + kept) >= 0.9, report.full_precision
    if FAMILIES[family_run["type"]].moe is not None:
        assert report.experts and all(e["tokens"] > 0 for e in report.experts)


def test_4bit_checkpoint_reloads_to_the_same_model(family_run, tmp_path):
    mt = family_run["type"]
    model, _ = awqkit.quantize_model(_model(mt), _config(bits=4), calib=_calib())
    save_quantized(model, tmp_path / "ckpt")
    reloaded = load_quantized(tmp_path / "ckpt")
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=1e-3, atol=1e-3 * float(_logits(model).abs().max()))


def _gelu_crossing_mappings():
    # dense_h_to_4h -> dense_4h_to_h crosses the GELU: not function-preserving for s != 1
    return [{"prev_op": "input_layernorm", "layers": ["attention.query_key_value"]},
            {"prev_op": "mlp.dense_h_to_4h", "prev_kind": "linear", "layers": ["mlp.dense_4h_to_h"]}]


def _salient_neox():
    model = _model("gpt_neox")
    with torch.no_grad():  # a few large channels into dense_4h_to_h, so the search picks s != 1
        for layer in model.gpt_neox.layers:
            layer.mlp.dense_h_to_4h.weight[:8].mul_(20.0)
    return model


def test_a_fold_across_a_nonlinearity_is_an_error_with_the_numbers():
    with pytest.raises(ValueError, match=r"block 0, mapping mlp.dense_h_to_4h->dense_4h_to_h: folding the scales "
                                         r"changed the block's output by [0-9.e+-]+ .*tolerance 0.0001"):
        awqkit.quantize_model(_salient_neox(), _config(bits=8, mappings=_gelu_crossing_mappings()), calib=_calib())


def test_on_fold_error_drop_undoes_the_mapping_and_reports_it():
    model = _salient_neox()
    ref = _logits(model)
    folded, report = awqkit.quantize_model(model, _config(bits=8, mappings=_gelu_crossing_mappings(),
                                                          on_fold_error="drop"), calib=_calib(), method="fold")
    dropped = [m for m in report.mappings if "dropped" in m]
    assert dropped and all(m["mapping"] == "mlp.dense_h_to_4h->dense_4h_to_h" for m in dropped)
    assert _rel_max(_logits(folded), ref) < 1e-4  # undone: the function is intact


def test_a_wrong_norm_kind_is_caught():
    """Gemma's norm taken as a plain scale (the bug that wrote a 3.9e9-perplexity model)."""
    from dataclasses import replace

    from awqkit.model.families import register_family

    gemma = FAMILIES["gemma"]
    register_family(replace(gemma, norm="scale"))
    try:
        with pytest.raises(ValueError, match="folding the scales changed the block's output"):
            awqkit.quantize_model(_model("gemma"), _config(bits=8), calib=_calib())
    finally:
        register_family(gemma)
