"""AWQConfig: defaults, validation, dict/JSON round trip (no torch needed)."""

import json

import pytest

from awqkit import AWQConfig


def test_defaults_match_the_issue():
    c = AWQConfig()
    assert (c.bits, c.group_size, c.zero_point, c.n_samples, c.seqlen) == (4, 128, True, 128, 512)
    assert c.propagation == "fp" and c.inspect == "linears" and c.clip is True


def test_json_round_trip(tmp_path):
    c = AWQConfig(bits=3, group_size=64, duo_scaling="both", propagation="quantized", inspect="module",
                  modules_to_not_convert=["lm_head"], mappings=[{"prev_op": "ln", "layers": ["fc1"]}], layers_path="h")
    assert AWQConfig.from_json(c.to_json()) == c
    path = tmp_path / "cfg.json"
    c.to_json(str(path))
    assert AWQConfig.from_json(str(path)) == c
    assert AWQConfig.from_dict(json.loads(path.read_text())) == c


@pytest.mark.parametrize("kw, msg", [
    (dict(bits=9), "bits"), (dict(group_size=0), "group_size"), (dict(propagation="x"), "propagation"),
    (dict(inspect="x"), "inspect"), (dict(duo_scaling="yes"), "duo_scaling"), (dict(n_samples=0), "n_samples"),
    (dict(mappings=[{"layers": ["a"]}]), "mapping 0"), (dict(mappings=[{"prev_op": "a", "layers": []}]), "non-empty"),
])
def test_bad_values_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AWQConfig(**kw)


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match="unknown AWQConfig fields"):
        AWQConfig.from_dict({"bitz": 4})


def test_quantization_config_block():
    q = AWQConfig(bits=4, group_size=64, zero_point=True).quantization_config(["model.layers.0.mlp.down_proj"])
    assert q == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
                 "w_bit": 4, "q_group_size": 64, "lm_head": False,
                 "modules_to_not_convert": ["model.layers.0.mlp.down_proj"]}


def test_import_awqkit_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, awqkit; awqkit.AWQConfig(); awqkit.estimate_footprint; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
