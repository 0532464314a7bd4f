"""Every user error of the command line is one line saying what is wrong and what to do,
with exit code 2 and no traceback; nothing half-done is left behind."""

import errno
import json
import os
import subprocess
import sys

import pytest

import awqkit
from awqkit.cli import main
from model_helpers import STORIES


def _user_error(capsys, *argv) -> str:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    # Library progress bars may share stderr; the error itself is one line, and the last.
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    return errors[0]


def test_eval_on_a_missing_model_folder(capsys, data_dir, tmp_path):
    text = data_dir / "tinystories" / "tinystories_sample.txt"
    assert "does not exist" in _user_error(capsys, "eval", tmp_path / "nowhere", "--text", text)


def test_eval_on_a_folder_without_weights(capsys, data_dir, tmp_path):
    (tmp_path / "config.json").write_text((data_dir / STORIES / "config.json").read_text())
    text = data_dir / "tinystories" / "tinystories_sample.txt"
    assert "holds no weights" in _user_error(capsys, "eval", tmp_path, "--text", text)


def test_eval_text_must_be_an_existing_file(capsys, data_dir):
    """It used to print the perplexity of the path string itself."""
    msg = _user_error(capsys, "eval", data_dir / STORIES, "--text", "/missing/typo.txt", "--seqlen", 2)
    assert "/missing/typo.txt: no such file" in msg


def test_evaluate_perplexity_refuses_a_missing_path_string(data_dir):
    from awqkit.model import load_model

    model, tok = load_model(data_dir / STORIES)
    with pytest.raises(FileNotFoundError, match="looks like a file path"):
        awqkit.evaluate_perplexity(model, tok, "/missing/typo.txt", seqlen=2)


@pytest.mark.parametrize("argv", [
    ["eval", "MODEL", "--text", "TEXT", "--seqlen", "0"],
    ["eval", "MODEL", "--text", "TEXT", "--seqlen", "1"],
    ["eval", "MODEL", "--text", "TEXT", "--max-tokens", "-5"],
    ["footprint", "MODEL", "--group-size", "0"],
    ["footprint", "MODEL", "--bits", "1"],
    ["quantize", "MODEL", "--out", "OUT", "--n-samples", "0"],
])
def test_bad_numbers_are_refused_by_the_parser(capsys, data_dir, tmp_path, argv):
    subst = {"MODEL": data_dir / STORIES, "TEXT": data_dir / "tinystories" / "tinystories_sample.txt", "OUT": tmp_path / "q"}
    msg = _user_error(capsys, *[subst.get(a, a) for a in argv])
    assert "argument" in msg and "--help" in msg


def test_out_naming_a_file_fails_before_the_run(capsys, data_dir, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    msg = _user_error(capsys, "quantize", data_dir / STORIES, "--out", f, "--method", "rtn")
    assert "is not a folder" in msg and f.read_text() == "x"


def test_non_empty_out_needs_overwrite(capsys, data_dir, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    msg = _user_error(capsys, "quantize", data_dir / STORIES, "--out", out, "--method", "rtn")
    assert "--overwrite" in msg and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("code, hint", [(errno.ENOSPC, "free some space"), (errno.EROFS, "writable file system")])
def test_full_or_read_only_disk(capsys, data_dir, tmp_path, monkeypatch, code, hint):
    # chmod does not stop root (the CI user), so the writer is made to fail as the disk would.
    import safetensors.torch

    def failing_write(tensors, filename, metadata=None):
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", failing_write)
    out = tmp_path / "q"
    msg = _user_error(capsys, "quantize", data_dir / STORIES, "--out", out, "--group-size", 32, "--method", "rtn")
    assert hint in msg and ".safetensors" in msg  # names the file it could not write
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial checkpoint, no temporary folder


def test_config_with_non_integer_values_is_refused(capsys, data_dir, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"group_size": 32.7}))
    assert "group_size must be an integer" in _user_error(capsys, "quantize", data_dir / STORIES, "--out", tmp_path / "q",
                                                          "--config", cfg)
    for bad in ({"clip_n_grid": 2.5}, {"seed": 1.5}, {"n_grid": True}, {"zero_point": "yes"}, {"group_size": True},
                {"duo_scaling": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            awqkit.AWQConfig.from_dict(bad)


def test_python_m_awqkit_error_is_one_line():
    r = subprocess.run([sys.executable, "-m", "awqkit", "footprint", "x", "--group-size", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "group_size" in r.stderr, r.stderr
