"""save_quantized writes a whole checkpoint or nothing: into a sibling folder renamed into
place, a non-empty folder replaced only on request and then as a whole, and a save killed
half-way leaves the old folder as it was. load_quantized refuses incomplete folders."""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import awqkit
from awqkit.model import QuantizedLinear, load_model, load_quantized, save_quantized
from model_helpers import STORIES

IDS = torch.tensor([[1, 403, 407, 261, 378]])


@pytest.fixture(scope="module")
def two_models(data_dir):
    """Two plain-rounding runs with different weights: group size 32 (A) and 64 (B)."""
    out = []
    for gs in (32, 64):
        model, _ = load_model(data_dir / STORIES)
        out.append(awqkit.rtn_quantize_model(model, awqkit.AWQConfig(bits=4, group_size=gs))[0])
    return out


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _no_siblings(folder: Path):
    left = [p.name for p in folder.parent.iterdir() if p.name.startswith(folder.name + ".")]
    assert not left, f"temporary folders left beside {folder}: {left}"


def test_overwrite_replaces_an_old_sharded_checkpoint_as_a_whole(two_models, tmp_path):
    a, b = two_models
    out = tmp_path / "ckpt"
    save_quantized(a, out, max_shard_size="200KB")
    assert (out / "model.safetensors.index.json").is_file()
    before = _digest(out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_quantized(b, out)
    assert _digest(out) == before  # refused means untouched

    save_quantized(b, out, overwrite=True)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names and "model.safetensors.index.json" not in names
    assert not [n for n in names if n.startswith("model-")], names  # no shard of A is left
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 64
    reloaded = load_quantized(out)
    for name, m in b.named_modules():
        if isinstance(m, QuantizedLinear):
            assert (reloaded.get_submodule(name).lin.to_awq()["qweight"] == m.stored["qweight"].numpy()).all(), name
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, b(IDS).logits, rtol=1e-4, atol=1e-4)
    _no_siblings(out)


def test_out_naming_a_file_or_an_empty_folder(two_models, tmp_path):
    a, _ = two_models
    f = tmp_path / "file"
    f.write_text("not a folder")
    with pytest.raises(FileExistsError, match="not a folder"):
        save_quantized(a, f, overwrite=True)
    assert f.read_text() == "not a folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    save_quantized(a, empty)  # an empty folder is simply filled
    assert load_quantized(empty) is not None
    _no_siblings(empty)


def test_a_failed_write_leaves_nothing(two_models, tmp_path, monkeypatch):
    import safetensors.torch

    a, _ = two_models

    def full_disk(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "ckpt"
    with pytest.raises(OSError, match="No space left"):
        save_quantized(a, out)
    assert not out.exists()
    _no_siblings(out)


def test_load_refuses_an_incomplete_or_mixed_folder(two_models, tmp_path):
    a, _ = two_models
    out = tmp_path / "ckpt"
    save_quantized(a, out, max_shard_size="200KB")
    shards = sorted(out.glob("model-*.safetensors"))
    broken = tmp_path / "missing-shard"
    shutil.copytree(out, broken)
    (broken / shards[-1].name).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        load_quantized(broken)
    mixed = tmp_path / "mixed"
    shutil.copytree(out, mixed)
    shutil.copy(shards[0], mixed / "model.safetensors")  # a single-file checkpoint's name beside the index
    with pytest.raises(ValueError, match="mixes two checkpoints"):
        load_quantized(mixed)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_quantized(tmp_path / "nowhere")


_KILLED_SAVER = textwrap.dedent("""
    import inspect, sys, time
    import safetensors.torch
    import awqkit
    from awqkit.model import load_model, save_quantized

    model_dir, out, ready = sys.argv[1:4]
    model, _ = awqkit.rtn_quantize_model(load_model(model_dir)[0], awqkit.AWQConfig(bits=4, group_size=64))
    write = safetensors.torch.save_file

    def write_then_hang(*args, **kwargs):  # the parent kills us after the first shard
        write(*args, **kwargs)
        open(ready, "w").close()
        time.sleep(300)

    safetensors.torch.save_file = write_then_hang
    # Replacing the folder is what the caller asks for (a version without the keyword writes into it).
    kw = {"overwrite": True} if "overwrite" in inspect.signature(save_quantized).parameters else {}
    save_quantized(model, out, max_shard_size="200KB", **kw)
""")


def test_sigkill_during_save_leaves_the_old_checkpoint(two_models, data_dir, tmp_path):
    a, _ = two_models
    out = tmp_path / "ckpt"
    save_quantized(a, out)
    before = _digest(out)
    ready = tmp_path / "first-shard-written"
    env = dict(os.environ, PYTHONPATH=str(Path(awqkit.__file__).parents[1]))  # the awqkit under test
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(data_dir / STORIES), str(out), str(ready)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the saver never wrote its first shard"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert _digest(out) == before  # not one file of the killed run in the loadable folder
    with torch.no_grad():
        torch.testing.assert_close(load_quantized(out)(IDS).logits, a(IDS).logits, rtol=1e-4, atol=1e-4)
