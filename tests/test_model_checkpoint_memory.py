"""Checkpoints without float32 copies (issue 16, items 4 and 5):

- ``load_quantized`` builds the model with its parameters on the meta device and reads the
  packed tensors straight into the fused kernels: the same logits, bit for bit, as building
  the float32 model first (the reference below, the loader as it was), on the real
  stories260K and on several families; its peak memory stays well below the model's float32
  size (measured in a fresh process, VmHWM);
- the unquantized tensors are saved in the source model's dtype (a bf16 source gives a bf16
  checkpoint about half the float32 one), a tied head is stored once, and the reloaded model
  computes what the in-memory one does once that is rounded to the checkpoint's dtype.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers as T
from torch import nn

import awqkit
from awqkit.model import AWQLinear, QuantizedLinear, load_model, load_quantized, save_quantized
from awqkit.model.checkpoint import checkpoint_dtype, round_to_checkpoint_dtype
from model_helpers import STORIES, checkpoint_tensors, stories_config
from test_model_families import _EVAL, _model


def _load_float32_reference(path) -> nn.Module:
    """The loader before issue 16: the whole float32 model, then AWQLinear swapped in and
    the other tensors copied (load_state_dict), then contiguous_layers."""
    from safetensors.torch import load_file

    from awqkit.model.capture import set_submodule
    from awqkit.model.conversions import convert_blocks
    from awqkit.model.families import family_for, layout_for

    config = T.AutoConfig.from_pretrained(path)
    group_size = config.quantization_config["group_size"]
    del config.quantization_config
    model = T.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if family_for(config.model_type) is not None:
        layout = layout_for(config)
        convert_blocks(model.get_submodule(layout.layers_path), layout)
    tensors = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        tensors.update(load_file(f))
    for name in sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")):
        bias = tensors.pop(f"{name}.bias", None)
        set_submodule(model, name, AWQLinear(tensors.pop(f"{name}.qweight").numpy(), tensors.pop(f"{name}.qzeros").numpy(),
                                             tensors.pop(f"{name}.scales").numpy(), group_size,
                                             None if bias is None else bias.to(torch.float32).numpy()))
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()}, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    awqkit.contiguous_layers([m.lin for m in model.modules() if isinstance(m, AWQLinear)])
    return model


def _weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@pytest.fixture(scope="module")
def stories_rtn(data_dir):
    model, tok = load_model(data_dir / STORIES)
    model, _ = awqkit.rtn_quantize_model(model, stories_config())
    return model


@pytest.mark.parametrize("which", ["stories260K", "llama", "gemma3_text", "mixtral", "gpt2"])
def test_meta_loader_gives_the_float32_loaders_logits_bit_for_bit(which, data_dir, stories_rtn, tmp_path):
    if which == "stories260K":
        q, ids = stories_rtn, torch.tensor([[1, 403, 407, 261, 378, 290, 300, 410]])
    else:
        q, _ = awqkit.rtn_quantize_model(_model(which), awqkit.AWQConfig(bits=4, group_size=32, n_samples=8, seqlen=64))
        ids = _EVAL
    save_quantized(q, tmp_path / "ckpt")
    new = load_quantized(tmp_path / "ckpt")
    ref = _load_float32_reference(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(new(ids).logits, ref(ids).logits)
    # nothing left on meta; non-persistent buffers (rotary inv_freq, Gemma's embedding scale) as the model computes them
    ref_params = dict(ref.named_parameters())
    for name, p in new.named_parameters():
        assert p.device.type == "cpu" and p.dtype == ref_params[name].dtype, name
    ref_buffers = dict(ref.named_buffers())
    for name, b in new.named_buffers():
        assert torch.equal(b, ref_buffers[name]), name
    # tied head stays tied; the packed layers are one read-only arena, in call order
    if new.config.tie_word_embeddings:
        assert new.get_output_embeddings().weight is new.get_input_embeddings().weight
    lins = [m.lin for m in new.modules() if isinstance(m, AWQLinear)]
    assert len(lins) == sum(isinstance(m, QuantizedLinear) for m in q.modules())
    base = lins[0].packed.ctypes.data
    offset = 0
    for lin in lins:
        assert lin.packed.ctypes.data == base + offset and not lin.packed.flags.writeable
        offset += lin.packed.nbytes


def test_a_truncated_weight_file_is_a_clear_error(stories_rtn, tmp_path):
    save_quantized(stories_rtn, tmp_path / "ckpt")
    f = tmp_path / "ckpt" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_quantized(tmp_path / "ckpt")


def _bf16_source(data_dir, tmp_path) -> Path:
    model, tok = load_model(data_dir / STORIES)
    src = tmp_path / "bf16-src"
    model.to(torch.bfloat16).save_pretrained(src)
    tok.save_pretrained(src)
    return src


def test_a_bf16_source_gives_a_bf16_checkpoint_half_the_float32_one(data_dir, stories_rtn, tmp_path):
    src = _bf16_source(data_dir, tmp_path)
    q, _ = awqkit.rtn_quantize_model(str(src), stories_config())
    save_quantized(q, tmp_path / "bf16")
    save_quantized(stories_rtn, tmp_path / "fp32")  # the float32 source
    t16, t32 = checkpoint_tensors(tmp_path / "bf16"), checkpoint_tensors(tmp_path / "fp32")
    assert set(t16) == set(t32)
    assert "lm_head.weight" not in t16  # stories260K ties its head: stored once
    kept = [k for k in t16 if not k.endswith((".qweight", ".qzeros", ".scales"))]
    for k in kept:
        assert t16[k].dtype == torch.bfloat16 and t32[k].dtype == torch.float32, k
        assert torch.equal(t16[k].to(torch.float32), t32[k].to(torch.bfloat16).to(torch.float32)), k
    for k in set(t16) - set(kept):
        assert t16[k].dtype == t32[k].dtype and t16[k].shape == t32[k].shape, k  # (quantized from bf16-rounded weights)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    kept16 = sum(t16[k].numel() * 2 for k in kept)
    quant = sum(t16[k].numel() * t16[k].element_size() for k in t16 if k not in kept)
    size16, size32 = _weights_bytes(tmp_path / "bf16"), _weights_bytes(tmp_path / "fp32")
    print(f"stories260K 4-bit g32 RTN checkpoint: {size16} bytes from the bf16 source, {size32} from float32")
    assert abs(size32 - size16 - kept16) < 4096  # exactly the kept tensors halved (headers aside)
    assert size16 < 0.6 * size32 and quant < 0.2 * size16  # stories260K keeps most of its weights unquantized
    # RTN leaves the kept tensors as loaded (bf16 values): the reload computes what we evaluated
    reloaded = load_quantized(tmp_path / "bf16")
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, q(ids).logits, rtol=1e-4, atol=1e-4)


def test_a_model_loaded_as_float32_from_a_bf16_folder_saves_bf16(data_dir, tmp_path):
    src = _bf16_source(data_dir, tmp_path)
    model = T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    assert model.config.dtype == torch.float32  # what transformers records: the load dtype
    assert checkpoint_dtype(model) == torch.bfloat16  # the source's, from its folder
    q, _ = awqkit.rtn_quantize_model(model, stories_config())
    save_quantized(q, tmp_path / "out")
    assert checkpoint_tensors(tmp_path / "out")["model.norm.weight"].dtype == torch.bfloat16


def test_awq_on_a_bf16_source_reloads_to_the_rounded_model(tmp_path):
    """AWQ folds its scales into the norms: float32 values a bf16 checkpoint cannot hold.
    Rounded to the checkpoint dtype (round_to_checkpoint_dtype), the in-memory model computes
    what the reloaded one does; unrounded, the two differ by bf16 rounding of the norms."""
    src = tmp_path / "src"
    _model("llama").to(torch.bfloat16).save_pretrained(src)
    calib = torch.randint(3, 128, (8, 64), generator=torch.Generator().manual_seed(1))
    fp = T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)  # in memory, no tokenizer (calib is tokens)
    q, _ = awqkit.quantize_model(fp, awqkit.AWQConfig(bits=4, group_size=32, n_samples=8, seqlen=64), calib=calib)
    assert q.model.norm.weight.dtype == torch.float32
    with torch.no_grad():
        before = q(_EVAL).logits
    save_quantized(q, tmp_path / "ckpt")
    reloaded = load_quantized(tmp_path / "ckpt")
    with torch.no_grad():
        after = reloaded(_EVAL).logits
        assert round_to_checkpoint_dtype(q) == torch.bfloat16
        rounded = q(_EVAL).logits
    gap = (after - before).abs().max().item()
    assert 0 < gap < 0.05 * before.abs().max().item()  # bf16 rounding of the folded norms
    torch.testing.assert_close(after, rounded, rtol=1e-4, atol=1e-4)
    save_quantized(q, tmp_path / "again")  # rounding is idempotent: the same checkpoint
    assert all(torch.equal(a, b) for a, b in zip(checkpoint_tensors(tmp_path / "ckpt").values(), checkpoint_tensors(tmp_path / "again").values()))


_CHILD = textwrap.dedent("""
    import re, sys
    def hwm_mb():
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
    import torch, transformers, awqkit
    from awqkit.model import load_quantized
    import transformers.models.llama.modeling_llama  # import-time memory of the model code, not weights
    base = hwm_mb()
    model = load_quantized(sys.argv[1])
    peak = hwm_mb()
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    print(f"RSS {base:.1f} {peak:.1f}")
""")


def test_reload_peak_rss_is_well_below_the_float32_size(tmp_path):
    """Done-means (c) of issue 16: a Llama with 8 blocks of 1024 x 2816 and an 8k vocabulary
    (117M parameters, 456 MiB in float32; bf16 source), RTN 4-bit g128, reloaded in a fresh
    process: the peak resident memory the load adds stays under half the float32 size (about
    the checkpoint's size plus the float32 copy of the embeddings and head)."""
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=8192, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                        num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512,
                        tie_word_embeddings=False)
    model = T.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).float().eval()  # a bf16 source
    assert model.config.dtype == torch.bfloat16
    fp32_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    q, _ = awqkit.rtn_quantize_model(model, awqkit.AWQConfig(bits=4, group_size=128))
    del model
    save_quantized(q, tmp_path / "ckpt")
    del q
    ckpt_mb = _weights_bytes(tmp_path / "ckpt") / 2**20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "ckpt")], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    base, peak = (float(v) for v in re.search(r"RSS (\S+) (\S+)", r.stdout).groups())
    print(f"reload: float32 weights {fp32_mb:.0f} MiB, checkpoint {ckpt_mb:.0f} MiB, "
          f"peak RSS {peak:.0f} MiB = baseline {base:.0f} + {peak - base:.0f} MiB for the load")
    assert peak - base < 0.5 * fp32_mb
    assert peak - base < 2.5 * ckpt_mb  # packed weights + the float32 embeddings and head (bf16 on disk)
