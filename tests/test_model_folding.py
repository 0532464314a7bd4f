"""Folding scales into a real model never changes its function (before quantization),
including v_proj -> o_proj under grouped-query attention with scales tied per KV head."""

import pytest
import torch

from awqkit.model.capture import get_submodule
from awqkit.model.folding import expand_gqa_scales, fold_scales, tie_gqa_scales
from awqkit.model.mappings import layout_for
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
    hd = model.config.head_dim
    for block in get_submodule(model, layout.layers_path):
        for m in layout.mappings:
            prev = get_submodule(block, m.prev_op)
            layers = [get_submodule(block, n) for n in m.layers]
            k = layers[0].in_features
            s = torch.rand(k, generator=g) * 4 + 0.25
            if isinstance(prev, torch.nn.Linear) and prev.out_features != k:  # GQA v -> o
                s_prev = tie_gqa_scales(s, prev.out_features, hd)
                fold_scales(prev, layers, s_prev, expand_gqa_scales(s_prev, k, hd))
            else:
                fold_scales(prev, layers, s, s)
    with torch.no_grad():
        out = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_folding_into_a_module_without_weight_is_refused():
    with pytest.raises(ValueError, match="cannot fold"):
        fold_scales(torch.nn.ReLU(), [torch.nn.Linear(4, 4)], torch.ones(4), torch.ones(4))
