"""A non-Llama family with a user mapping list: OPT (LayerNorm with bias, ReLU MLP, biased
linears, ``model.decoder.layers``). The model is built locally from a transformers
``OPTConfig`` with random weights, so this checks structure (capture, folding, search,
checkpoint), not quality."""

import json

import torch

import awqkit
from awqkit.model import QuantizedLinear, load_quantized, save_quantized

OPT_MAPPINGS = [
    {"prev_op": "self_attn_layer_norm", "layers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
     "inp": "self_attn.q_proj", "module2inspect": "self_attn"},
    {"prev_op": "self_attn.v_proj", "layers": ["self_attn.out_proj"]},
    {"prev_op": "final_layer_norm", "layers": ["fc1"]},
    # ReLU(x / s) = ReLU(x) / s for s > 0, so fc1's outputs can carry fc2's scales
    {"prev_op": "fc1", "layers": ["fc2"]},
]


def _tiny_opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=256, do_layer_norm_before=True)
    return OPTForCausalLM(cfg).eval()


def test_opt_with_user_mappings(data_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data_dir / "stories260K-hf")
    model = _tiny_opt()
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    for inspect in ("linears", "module"):
        model = _tiny_opt()
        cfg = awqkit.AWQConfig(bits=4, group_size=32, n_samples=16, seqlen=128, mappings=OPT_MAPPINGS,
                               layers_path="model.decoder.layers", inspect=inspect)
        model, report = awqkit.quantize_model(model, cfg, calib=str(data_dir / "tinystories" / "tinystories_sample.txt"), tokenizer=tok)
        searched = [m for m in report.mappings if "skipped" not in m]
        assert len(searched) == 8
        assert all(m["awq_loss"] <= m["rtn_loss"] * (1 + 1e-6) for m in searched)
        assert report.quantized_layers == 12
        assert isinstance(model.model.decoder.layers[1].fc2, QuantizedLinear)
        with torch.no_grad():
            out = model(ids).logits
        # 4-bit on random weights: close to the full-precision function, not equal
        assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.95
    save_quantized(model, tmp_path / "opt-awq")
    cfg_json = json.loads((tmp_path / "opt-awq" / "config.json").read_text())
    assert cfg_json["model_type"] == "opt" and cfg_json["quantization_config"]["bits"] == 4
    reloaded = load_quantized(tmp_path / "opt-awq")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=2e-3, atol=2e-3)
