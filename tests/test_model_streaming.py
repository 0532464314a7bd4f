"""Quantizing model folders block by block from disk (issue 16, items 1-3):

- the streaming path (``quantize_to_checkpoint``, what ``awqkit quantize`` runs) writes the
  same tensors, bit for bit, as quantizing the whole model in memory and saving it, and its
  checkpoint reloads;
- (a) on a sharded bf16 model its peak memory stays under a bound (half the model's float32
  size) that the in-memory path exceeds, measured in fresh processes;
- (b) the CLI killed with SIGKILL after a block (and in the middle of writing a shard) and run
  again resumes and writes the same bytes as an uninterrupted run; a changed setting or
  model on resume is refused; the output folder exists only once complete;
- the memory plan is an error, before any work, when it exceeds the memory available.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import awqkit
import test_model_families as F
from awqkit.model import load_quantized, quantize_model, quantize_to_checkpoint, save_quantized
from model_helpers import STORIES, checkpoint_tensors, stories_config

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def _sharded_llama(folder: Path, data_dir: Path, layers: int, hidden: int, inter: int, shard: str) -> Path:
    """A random Llama in bf16, saved in several safetensors shards with an index, with the
    stories260K tokenizer (vocabulary 512)."""
    import shutil

    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128, max_position_embeddings=256,
                        tie_word_embeddings=False)
    model = T.LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder, max_shard_size=shard)
    for f in _TOKENIZER_FILES:
        if (data_dir / STORIES / f).exists():
            shutil.copy(data_dir / STORIES / f, folder / f)
    assert (folder / "model.safetensors.index.json").exists()
    return folder


def _same_tensors(a_dir, b_dir) -> None:
    a, b = checkpoint_tensors(a_dir), checkpoint_tensors(b_dir)
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _file_bytes(folder: Path) -> dict[str, bytes]:
    # Everything but the report, whose timings differ from run to run.
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "awq_report.json"}


def test_streaming_writes_the_tensors_of_the_in_memory_path(data_dir, tmp_path):
    cfg = stories_config(n_samples=8, seqlen=128)
    model, report = quantize_model(data_dir / STORIES, cfg)
    save_quantized(model, tmp_path / "mem")
    streamed = quantize_to_checkpoint(data_dir / STORIES, tmp_path / "stream", cfg)
    _same_tensors(tmp_path / "mem", tmp_path / "stream")
    assert streamed.summary() == report.summary()
    on_disk = quantize_to_checkpoint(data_dir / STORIES, tmp_path / "disk", cfg, activations="disk")
    _same_tensors(tmp_path / "mem", tmp_path / "disk")
    assert on_disk.memory_plan["activations_on_disk"] and not streamed.memory_plan["activations_on_disk"]
    # A block kept plain rounding: the streaming path read its original weights again from the files.
    assert report.summary()["blocks_kept_rtn"] >= 1
    assert streamed.memory_plan["peak_bytes"] > 0 and streamed.memory_plan["tokens"] == report.calib_tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "mem", "stream"]  # no partial folder left
    ids = torch.arange(1, 33).view(1, -1)
    a, b = load_quantized(tmp_path / "mem"), load_quantized(tmp_path / "stream")
    assert torch.equal(a(ids).logits, b(ids).logits)


@pytest.mark.parametrize("model_type", sorted(F.CONFIGS))
def test_every_family_streams_to_the_bytes_of_the_in_memory_path(model_type, tmp_path, caplog):
    """Tiny random models of every family, saved by transformers: streamed (or, where
    transformers renames the saved weights, e.g. the MoE experts, quantized in memory with a
    warning) into the same tensors as quantize_model + save_quantized."""
    import transformers as T

    src = tmp_path / "src"
    F._model(model_type).save_pretrained(src)
    cfg = F._config()
    with caplog.at_level("WARNING", logger="awqkit.model.streaming"):
        # The captured inputs on disk (DiskActivations): the bytes do not change.
        quantize_to_checkpoint(src, tmp_path / "stream", cfg, calib=F._calib(), activations="disk")
    model, _ = quantize_model(T.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), cfg, calib=F._calib())
    save_quantized(model, tmp_path / "mem")
    _same_tensors(tmp_path / "stream", tmp_path / "mem")
    fell_back = "quantizing in memory instead" in caplog.text
    assert fell_back == (model_type in _RENAMED_ON_SAVE), caplog.text


# transformers 5 saves these with other tensor names than the model it builds (legacy expert
# and head names): the streaming path quantizes them in memory, with a warning.
_RENAMED_ON_SAVE = {"gpt_neox", "mixtral", "qwen2_moe", "qwen3_moe"}


def test_quantize_model_with_out_streams_and_returns_the_reloaded_model(data_dir, tmp_path):
    from awqkit.model import AWQLinear

    cfg = stories_config(n_samples=8, seqlen=128)
    model, report = awqkit.quantize_model(data_dir / STORIES, cfg, out=tmp_path / "q")
    assert report.memory_plan and (tmp_path / "q" / "model.safetensors.index.json").exists()
    assert sum(isinstance(m, AWQLinear) for m in model.modules()) == report.quantized_layers
    with pytest.raises(ValueError, match="model folder"):
        awqkit.quantize_model(model, cfg, out=tmp_path / "r")


def test_a_sharded_bf16_model_streams_under_a_bound_the_in_memory_path_exceeds(data_dir, tmp_path):
    src = _sharded_llama(tmp_path / "src", data_dir, layers=24, hidden=512, inter=1536, shard="8MB")
    f32_bytes = sum(t.numel() for t in checkpoint_tensors(src).values()) * 4
    script = textwrap.dedent(f"""
        import json, sys, torch
        import awqkit
        from awqkit.model import quantize_model, quantize_to_checkpoint, save_quantized
        from awqkit.model.report import _peak_rss_mb
        cfg = awqkit.AWQConfig(group_size=128, n_samples=4, seqlen=64)
        tokens = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0))
        # The libraries' own first-use cost (about 150 MiB of transformers modules) before the baseline.
        import awqkit.model.streaming, transformers.models.llama.modeling_llama
        from transformers import AutoConfig, AutoTokenizer
        AutoConfig.from_pretrained({str(src)!r}), AutoTokenizer.from_pretrained({str(src)!r})
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        base = rss()
        if sys.argv[1] == "stream":
            report = quantize_to_checkpoint({str(src)!r}, sys.argv[2], cfg, calib=tokens)
        else:
            model, report = quantize_model({str(src)!r}, cfg, calib=tokens)
            save_quantized(model, sys.argv[2])
        print(json.dumps({{"peak_above_base_mb": report.peak_rss_mb - base}}))
    """)
    peaks = {}
    for mode in ("stream", "memory"):
        res = subprocess.run([sys.executable, "-c", script, mode, str(tmp_path / mode)], capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        peaks[mode] = json.loads(res.stdout.strip().splitlines()[-1])["peak_above_base_mb"]
    bound = f32_bytes / 2 / 2**20
    assert peaks["memory"] > bound, (peaks, bound)
    assert peaks["stream"] < bound, (peaks, bound)
    _same_tensors(tmp_path / "stream", tmp_path / "memory")


_KILLING_CLI = textwrap.dedent("""
    # The CLI, SIGKILLed by itself at a chosen point: after block N is committed ("after"),
    # halfway through writing the shard of block N ("during"), after block N's shard and next
    # inputs are written but before its progress file ("between"); or Ctrl-C after block N.
    import os, signal, sys
    import safetensors.torch
    from awqkit.model import streaming
    from awqkit.cli import main
    where, n = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    commit, save_file = streaming._Resume.commit, safetensors.torch.save_file
    atomic, current = streaming._Resume._atomic_write, {}
    def commit_then_die(self, i, *a, **kw):
        current["i"] = i
        commit(self, i, *a, **kw)
        if where == "after" and i == n:
            os.kill(os.getpid(), signal.SIGKILL)
        if where == "ctrl-c" and i == n:
            os.kill(os.getpid(), signal.SIGINT)
    calls = []
    def torn_write(tensors, filename, metadata=None):
        calls.append(filename)
        if where == "during" and len(calls) == 2 * n + 1:  # each block writes its shard, then the hidden states
            save_file(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return save_file(tensors, filename, metadata=metadata)
    def write_or_die(self, path, write):
        # "between": block n's shard and next inputs are written, its progress file is not.
        if where == "between" and current.get("i") == n and path.endswith("progress.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        return atomic(self, path, write)
    move = streaming.move_into_place
    def die_before_the_rename(tmp, out):
        if where == "finish":  # every block committed, the last shard and metadata written
            os.kill(os.getpid(), signal.SIGKILL)
        return move(tmp, out)
    streaming.move_into_place = die_before_the_rename
    streaming._Resume.commit = commit_then_die
    streaming._Resume._atomic_write = write_or_die
    safetensors.torch.save_file = torn_write
    sys.exit(main(sys.argv[3:]))
""")


def _cli(*args, killed=None):
    cmd = [sys.executable, "-c", _KILLING_CLI, *(killed or ("never", "-1")), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_sharded(data_dir, tmp_path_factory):
    return _sharded_llama(tmp_path_factory.mktemp("src"), data_dir, layers=6, hidden=256, inter=512, shard="1MB")


_ARGS = ("--group-size", "64", "--n-samples", "6", "--seqlen", "64")


@pytest.fixture(scope="module")
def uninterrupted(small_sharded, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "q"
    res = _cli("quantize", small_sharded, "--out", out, *_ARGS)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.mark.parametrize("killed", [("after", "2"), ("during", "3"), ("between", "1"), ("after", "0"), ("ctrl-c", "4"),
                                    ("finish", "5")])
def test_a_killed_cli_resumes_to_the_same_bytes(small_sharded, uninterrupted, tmp_path, killed):
    out = tmp_path / "q"
    res = _cli("quantize", small_sharded, "--out", out, *_ARGS, killed=killed)
    if killed[0] == "ctrl-c":
        assert res.returncode == 130 and "run the same command again to resume" in res.stderr, res.stderr[-2000:]
    else:
        assert res.returncode == -9, res.stderr[-2000:]
    assert "memory plan: peak" in res.stderr  # printed before the work, without -v
    assert not out.exists() and (tmp_path / "q.partial").is_dir()  # the output appears only when complete
    res = _cli("quantize", small_sharded, "--out", out, *_ARGS)
    assert res.returncode == 0, res.stderr[-2000:]
    done = int(killed[1]) + (killed[0] not in ("during", "between"))  # killed inside block n's commit: n committed
    if killed[0] == "finish":
        assert not list((tmp_path / "q.partial").glob("awqkit-resume/hidden-*"))  # no next block: no inputs kept
    assert f"{done} of 6 blocks done" in res.stderr
    assert _file_bytes(out) == _file_bytes(uninterrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_disk_activations_read_back_every_row_and_replay_the_scale_ops(tmp_path):
    from awqkit.model.captured_input import CapturedInput
    from awqkit.model.disk_activations import DiskActivations
    from awqkit.model.distributed import SingleProcess

    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 64, generator=g) for n in (40, 4, 9000, 3)]  # short writes stay buffered otherwise
    d = DiskActivations(64, str(tmp_path))
    for p in parts:
        d.append(p)
    s1, s2 = torch.rand(1, 64, generator=g) + 0.5, torch.rand(1, 64, generator=g) + 0.5
    d.div_(s1).div_(s2).mul_(s2)
    ref = torch.cat(parts)
    ref.div_(s1).div_(s2).mul_(s2)  # the in-memory path's in-place ops
    assert d.shape == tuple(ref.shape) and torch.equal(d.load(), ref)
    assert torch.equal(d.strided(37), ref[::37]) and torch.equal(d.strided(37, 5), ref[5::37])
    rows = [len(p) for p in parts]
    on_disk, in_memory = CapturedInput(d, rows, 64, SingleProcess()), CapturedInput(ref, rows, 64, SingleProcess())
    a, b = on_disk.stats(), in_memory.stats()
    assert (a.gram() == b.gram()).all() and (a.mean_abs() == b.mean_abs()).all()
    assert torch.equal(on_disk.sample(37), in_memory.sample(37))


def test_resume_refuses_other_settings_or_another_model(small_sharded, tmp_path):
    out = tmp_path / "q"
    assert _cli("quantize", small_sharded, "--out", out, *_ARGS, killed=("after", "1")).returncode == -9
    res = _cli("quantize", small_sharded, "--out", out, *_ARGS[:-1], "32")  # another --seqlen
    assert res.returncode == 2 and "interrupted run with different" in res.stderr and "calibration" in res.stderr
    assert "config" in res.stderr and "--restart" in res.stderr
    res = _cli("quantize", small_sharded, "--out", out, *_ARGS, "--restart")  # starts over
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "q.partial").exists()
    # The source model rewritten: its files' fingerprint changes.
    out2 = tmp_path / "q2"
    assert _cli("quantize", small_sharded, "--out", out2, *_ARGS, killed=("after", "1")).returncode == -9
    cfg = small_sharded / "config.json"
    text = cfg.read_text()
    try:
        cfg.write_text(text.replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
        res = _cli("quantize", small_sharded, "--out", out2, *_ARGS)
    finally:
        cfg.write_text(text)
    assert res.returncode == 2 and "different source" in res.stderr


def test_the_memory_plan_refuses_a_run_that_does_not_fit(data_dir, tmp_path, monkeypatch):
    from awqkit.model import streaming

    monkeypatch.setattr(streaming, "available_memory", lambda: 1 << 20)
    with pytest.raises(MemoryError, match="--n-samples"):
        quantize_to_checkpoint(data_dir / STORIES, tmp_path / "q", stories_config())
    assert list(tmp_path.iterdir()) == []
    # It names the terms of the estimate, and the run goes ahead when the check is off.
    report = quantize_to_checkpoint(data_dir / STORIES, tmp_path / "q", stories_config(), memory_check=False, method="rtn")
    assert report.quantized_layers > 0 and report.memory_plan["block_copies"] == 2


def test_the_in_memory_path_refuses_a_model_that_does_not_fit_and_names_the_streaming_one(data_dir, monkeypatch):
    from awqkit.model import memory_plan

    monkeypatch.setattr(memory_plan, "available_memory", lambda: 1 << 10)
    with pytest.raises(MemoryError, match="out="):
        quantize_model(data_dir / STORIES, stories_config())


def test_the_plan_grows_with_the_calibration_not_with_the_layers():
    import transformers as T

    from awqkit.model.conversions import convert_blocks
    from awqkit.model.families import layout_for
    from awqkit.model.memory_plan import plan_memory
    from awqkit.model.weight_files import parameters_on_meta

    def plan(layers, tokens, on_disk=False):
        cfg = T.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
                            num_attention_heads=32)
        with parameters_on_meta():
            m = T.LlamaForCausalLM(cfg)
        layout = layout_for(m.config)
        blocks = m.model.layers
        convert_blocks(blocks, layout)
        return plan_memory(m, blocks, layout, tokens, 512, activations_on_disk=on_disk)

    a, b, c = plan(2, 65536), plan(32, 65536), plan(2, 2 * 65536)
    assert a.peak_bytes - a.process_bytes == b.peak_bytes - b.process_bytes
    assert c.activation_bytes == 2 * a.activation_bytes
    # Llama-2-7B: one block is 202M parameters (0.75 GiB in float32); the captured inputs are
    # q/k/v's, o's, gate/up's and down's (4096 * 3 + 11008 wide), plus the block's input and output.
    assert a.block_bytes == 202_383_360 * 4
    assert a.activation_bytes == 65536 * 4 * (2 * 4096 + 3 * 4096 + 11008 + 11008)
    # Captured inputs on disk: one calibration chunk (8 x 512 tokens) of them stays in memory.
    d = plan(2, 65536, on_disk=True)
    assert d.activation_bytes == 65536 * 4 * 2 * 4096 + 4096 * 4 * (3 * 4096 + 11008 + 11008)
    assert d.peak_bytes < a.peak_bytes


def test_awqkit_exposes_the_streaming_entry_point():
    assert awqkit.quantize_to_checkpoint is quantize_to_checkpoint
    assert os.path.basename(awqkit.model.streaming.__file__) == "streaming.py"


def test_a_nested_stage_does_not_hide_the_outer_stages_peak():
    """Each stage resets the kernel's high-water mark; a stage started inside another (a fold
    check inside the scale search) must not erase the outer one's peak, nor the run's."""
    import mmap

    import numpy as np

    from awqkit.model.report import StageMeter

    meter = StageMeter()
    with meter.stage("outer"):
        # 64 MiB of fresh pages, touched: an anonymous mapping, not the allocator, whose heap may
        # already hold resident free memory after the other tests in this process
        big = mmap.mmap(-1, 64 << 20)
        np.frombuffer(big, dtype=np.uint8)[:] = 1
        before = meter.stages["outer"]["peak_rss_mb"]
        big.close()
        with meter.stage("inner"):
            pass
    assert meter.stages["outer"]["peak_rss_mb"] >= meter.stages["inner"]["peak_rss_mb"] + 48
    assert meter.peak_mb >= meter.stages["outer"]["peak_rss_mb"] and before == 0.0
