"""Folding scales into a real model never changes its function (before quantization),
including v_proj -> o_proj under grouped-query attention with scales tied per KV head."""

import pytest
import torch

from awqkit.model.capture import get_submodule
from awqkit.model.families import layout_for
from awqkit.model.folding import expand_gqa_scales, fold_mapping, fold_scales, mapping_tie, tie_gqa_scales
from awqkit.model.pipeline import load_model


def test_tie_is_max_over_the_query_group():
    # 4 query heads, 2 KV heads, head_dim 2: query heads 0,1 read KV head 0; 2,3 read KV head 1
    s = torch.tensor([1.0, 5.0, 3.0, 2.0, 7.0, 1.0, 0.5, 4.0])
    t = tie_gqa_scales(s, n_prev_out=4, head_dim=2)
    assert t.tolist() == [3.0, 5.0, 7.0, 4.0]
    assert expand_gqa_scales(t, 8, 2).tolist() == [3.0, 5.0, 3.0, 5.0, 7.0, 4.0, 7.0, 4.0]
    with pytest.raises(ValueError):
        tie_gqa_scales(s, n_prev_out=3, head_dim=2)


def test_folding_every_preset_mapping_preserves_the_function(data_dir):
    model, tok = load_model(data_dir / "stories260K-hf")
    ids = tok("Once upon a time there was a little dog", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    layout = layout_for(model.config)
    g = torch.Generator().manual_seed(0)
    for block in get_submodule(model, layout.layers_path):
        for m in layout.mappings:
            k = get_submodule(block, m.layers[0]).in_features
            s = torch.rand(k, generator=g) * 4 + 0.25
            _, tie = mapping_tie(get_submodule(block, m.prev_op), m, layout, k)
            fold_mapping(block, m, layout, tie(s) if tie is not None else s)
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_folding_into_a_module_without_weight_is_refused():
    with pytest.raises(ValueError, match="cannot fold"):
        fold_scales(torch.nn.ReLU(), [torch.nn.Linear(4, 4)], torch.ones(4), torch.ones(4))


def test_offset_one_norm_fold_is_exact():
    """Gemma's RMSNorm computes normed(x) * (1 + w): the fold is w <- (1 + w) / s - 1."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    torch.manual_seed(0)
    norm, lin = GemmaRMSNorm(16), torch.nn.Linear(16, 8)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(5, 16)
    ref = lin(norm(x))
    s = torch.rand(16) * 4 + 0.25
    fold_scales(norm, [lin], s, s, norm="offset_one")
    torch.testing.assert_close(lin(norm(x)), ref, rtol=1e-5, atol=1e-5)
