"""The searches on real activations: stories260K run on TinyStories text, inputs captured with hooks."""

import numpy as np
import pytest
import torch  # the [torch] extra: `make test` installs it, and these tests must run, not skip
import transformers

import awqkit
from awqkit.reference import search_clip_ref, search_scale_ref

pytestmark = pytest.mark.shared_data

LAYERS = (0, 4)


@pytest.fixture(scope="module")
def captured(data_dir):
    """{(layer, name): (input activations [tokens, K] float32, [weights sharing it])}."""
    model_dir = data_dir / "stories260K-hf"
    text_file = data_dir / "tinystories" / "tinystories_sample.txt"
    for p in (model_dir, text_file):
        if not p.exists():
            pytest.fail(f"missing shared data: {p}")
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    ids = tok(text_file.read_text(), return_tensors="pt").input_ids[:, :512]
    inputs, hooks = {}, []
    for i in LAYERS:
        layer = model.model.layers[i]
        for name, mod in (("q_proj", layer.self_attn.q_proj), ("o_proj", layer.self_attn.o_proj),
                          ("gate_proj", layer.mlp.gate_proj), ("down_proj", layer.mlp.down_proj)):
            def hook(m, args, key=(i, name)):
                inputs[key] = args[0].detach().reshape(-1, args[0].shape[-1]).numpy().astype(np.float32)
            hooks.append(mod.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    out = {}
    for i in LAYERS:
        layer = model.model.layers[i]
        w = lambda m: m.weight.detach().numpy().astype(np.float32)  # noqa: E731
        att, mlp = layer.self_attn, layer.mlp
        out[(i, "qkv")] = (inputs[(i, "q_proj")], [w(att.q_proj), w(att.k_proj), w(att.v_proj)])
        out[(i, "o")] = (inputs[(i, "o_proj")], [w(att.o_proj)])
        out[(i, "gate_up")] = (inputs[(i, "gate_proj")], [w(mlp.gate_proj), w(mlp.up_proj)])
        out[(i, "down")] = (inputs[(i, "down_proj")], [w(mlp.down_proj)])
    return out


def group_for(k):
    return 32 if k % 32 == 0 else -1  # hidden 64 -> 32; intermediate 172 -> one group per row


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mapping", ["qkv", "o", "gate_up", "down"])
def test_scale_search_matches_reference(captured, layer, mapping):
    x, ws = captured[(layer, mapping)]
    assert x.shape[0] > 200 and np.all(np.isfinite(x))
    gs = group_for(x.shape[1])
    res = awqkit.search_scale(x, ws, group_size=gs)
    ref = search_scale_ref(x, ws, group_size=gs)
    assert res.best == ref["best"] and res.ratio == ref["ratio"]
    np.testing.assert_allclose(res.scales, ref["scales"], rtol=1e-5)
    np.testing.assert_allclose(res.losses, ref["losses"], rtol=1e-4)
    assert res.loss <= res.rtn_loss


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mapping", ["qkv", "down"])
@pytest.mark.parametrize("n_sample", [128, None])
def test_clip_search_matches_reference(captured, layer, mapping, n_sample):
    x, ws = captured[(layer, mapping)]
    w = ws[0]
    gs = group_for(x.shape[1])
    res = awqkit.search_clip(x, w, group_size=gs, n_sample_tokens=n_sample)
    max_val, before, after = search_clip_ref(x, w, group_size=gs, n_sample_token=n_sample)
    np.testing.assert_array_equal(res.max_val, max_val)
    np.testing.assert_allclose(res.group_loss_before, before, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(res.group_loss_after, after, rtol=1e-4, atol=1e-12)
    assert res.loss_after <= res.loss_before


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("mapping", ["qkv", "o", "gate_up", "down"])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_matches_reference(captured, layer, mapping, act_order):
    from awqkit.gptq import gptq_factor, gptq_quantize, hessian_of
    from awqkit.reference import gptq_ref

    x, ws = captured[(layer, mapping)]
    gs = group_for(x.shape[1])
    h = hessian_of(x)
    factor = gptq_factor(h, act_order=act_order)  # one factor for the linears sharing the input
    for w in ws:
        res = gptq_quantize(w, factor, group_size=gs)
        codes, scales, zeros, damp = gptq_ref(w, h, 4, gs, True, act_order=act_order)
        np.testing.assert_array_equal(res.quantized.codes, codes)
        np.testing.assert_array_equal(res.quantized.scales.astype(np.float32), scales)
        np.testing.assert_array_equal(res.quantized.zeros, zeros)
        assert res.damp == damp
