"""A quantization run split over processes (torchrun, gloo on loopback) writes the bytes of
the single-process run, whatever the world size; a dead rank fails the run with a message,
and the run resumes with any number of processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

_ARGS = ("--group-size", "32", "--n-samples", "40", "--seqlen", "64")
_VOLATILE = {"memory_plan", "stages", "total_seconds", "peak_rss_mb", "distributed"}


def _env():
    # awqkit as the test process imports it (installed, or PYTHONPATH); MKL's strict mode, as
    # the CLI sets it, for the in-memory test's script too.
    return {**os.environ, "MKL_CBWR": "AUTO,STRICT"}


def _quantize(model, out, *args, nproc=1, script=None):
    entry = [script] if script else ["-m", "awqkit"]
    if nproc == 1:
        cmd = [sys.executable, *entry, "quantize", str(model), "--out", str(out), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               *(entry if script else ["-m", "awqkit"]), "quantize", str(model), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())


def _same_checkpoint(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        if n != "awq_report.json":
            assert (a / n).read_bytes() == (b / n).read_bytes(), n
    ra, rb = (json.loads((d / "awq_report.json").read_text()) for d in (a, b))
    assert {k: v for k, v in ra.items() if k not in _VOLATILE} == {k: v for k, v in rb.items() if k not in _VOLATILE}


@pytest.fixture(scope="module")
def stories_path(data_dir):
    return data_dir / "stories260K-hf"


@pytest.fixture(scope="module")
def one_process(stories_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "q"
    res = _quantize(stories_path, out, *_ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_two_processes_write_the_bytes_of_one(stories_path, one_process, tmp_path):
    """The CI check of the issue: 2 ranks on loopback, the same checkpoint as 1 process
    (which ran with its own thread count; torchrun gives each rank one thread)."""
    out = tmp_path / "q"
    res = _quantize(stories_path, out, *_ARGS, nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    _same_checkpoint(one_process, out)
    dist = json.loads((out / "awq_report.json").read_text())["distributed"]
    assert dist["world_size"] == 2
    sent = dist["bytes_sent"]
    assert all(len(v) == 2 for v in sent.values())
    assert sum(sent["statistics"]) > 0 and sent["hidden states"][1] > 0 and sent["hidden states"][0] == 0
    assert json.loads((one_process / "awq_report.json").read_text())["distributed"] is None


def test_three_processes_gptq_with_activations_on_disk(stories_path, tmp_path):
    """Uneven chunk ownership (a rank may hold only the check chunk), true-sequential
    re-captures, GPTQ factors from reduced statistics, activations in files."""
    args = (*_ARGS, "--method", "awq+gptq", "--activations", "disk")
    one, three = tmp_path / "one", tmp_path / "three"
    for out, n in ((one, 1), (three, 3)):
        res = _quantize(stories_path, out, *args, nproc=n)
        assert res.returncode == 0, res.stderr[-3000:]
    _same_checkpoint(one, three)


_DYING = textwrap.dedent("""
    # The CLI, whose rank 1 SIGKILLs itself as it starts block 2.
    import os, signal, sys
    from awqkit.model import streaming
    from awqkit.cli import main
    quantize_block = streaming.quantize_block
    def dying(run, i, *a, **kw):
        if i == 2 and run.group.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return quantize_block(run, i, *a, **kw)
    streaming.quantize_block = dying
    sys.exit(main(sys.argv[1:]))
""")


def test_a_dead_rank_fails_the_run_and_one_process_resumes_it(stories_path, one_process, tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(_DYING)
    out = tmp_path / "q"
    res = _quantize(stories_path, out, *_ARGS, nproc=2, script=str(script))
    assert res.returncode != 0
    # Rank 0 says what it was doing and how to resume (a failed collective, or torchrun's SIGTERM).
    assert "awqkit: error: rank 0 of 2" in res.stderr and f"{out}.partial" in res.stderr
    assert "rerun the same command, with any number of processes, to resume" in res.stderr
    assert not out.exists()
    progress = json.loads((tmp_path / "q.partial" / "awqkit-resume" / "progress.json").read_text())
    assert progress["blocks_done"] == 2
    res = _quantize(stories_path, out, *_ARGS)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stderr and "2 of 5 blocks done" in res.stderr
    _same_checkpoint(one_process, out)


def test_chunk_owners_and_row_shares():
    from awqkit.model.distributed import chunk_owners
    from awqkit.model.method_stages import row_shares

    assert chunk_owners(5, 2) == [0, 0, 0, 1, 1] and chunk_owners(2, 3) == [0, 1] and chunk_owners(4, 1) == [0] * 4
    for n, w in ((7, 3), (16, 4), (3, 3)):
        owners = chunk_owners(n, w)
        assert owners == sorted(owners) and set(owners) == set(range(w))  # contiguous, nobody idle when n >= w
    assert row_shares(500, 1) == [(0, 500)]
    assert row_shares(500, 3) == [(0, 192), (192, 384), (384, 500)]
    assert row_shares(64, 2) == [(0, 0), (0, 64)]  # fewer 96-row blocks than ranks: some get none
    for n, w in ((11008, 8), (4096, 3), (100, 4)):
        shares = row_shares(n, w)
        assert shares[0][0] == 0 and shares[-1][1] == n and all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
        assert all(r0 % 96 == 0 for r0, _ in shares)


def test_module_inspection_is_refused_across_ranks(stories_path, tmp_path):
    from awqkit.config import AWQConfig
    from awqkit.model import quantize_to_checkpoint
    from awqkit.model.distributed import SingleProcess

    class TwoRanks(SingleProcess):
        world = 2

    with pytest.raises(ValueError, match="inspect='module'.*not split across ranks"):
        quantize_to_checkpoint(stories_path, tmp_path / "q", AWQConfig(group_size=32, inspect="module"), group=TwoRanks())


_IN_MEMORY = textwrap.dedent("""
    # quantize_model on a tiny random Mixtral in every rank (the in-memory path: experts),
    # rank 0 saves.
    import os, sys
    import torch
    sys.path.insert(0, sys.argv[2])
    import awqkit
    from awqkit.model import quantize_model, save_quantized
    from test_model_families import _model
    model = _model("mixtral")
    tokens = torch.randint(3, 128, (16, 64), generator=torch.Generator().manual_seed(1))  # 2 chunks: rank 2 owns none
    model, report = quantize_model(model, awqkit.AWQConfig(bits=4, group_size=32), calib=tokens)
    if int(os.environ.get("RANK", "0")) == 0:
        save_quantized(model, sys.argv[1], report=report)
""")


def test_in_memory_moe_across_three_ranks(tmp_path):
    """quantize_model under torchrun: each rank holds the model. Two calibration chunks for
    three ranks: rank 2 captures nothing and still takes part in every reduction (its inputs
    are empty), as a rank does for an expert its tokens never reach."""
    script = tmp_path / "moe.py"
    script.write_text(_IN_MEMORY)
    tests = str(Path(__file__).resolve().parent)
    one, three = tmp_path / "one", tmp_path / "three"
    res = subprocess.run([sys.executable, str(script), str(one), tests], capture_output=True, text=True, timeout=600,
                         env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                          str(script), str(three), tests], capture_output=True, text=True, timeout=600, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    _same_checkpoint(one, three)


@pytest.mark.parametrize("method,fmt", [("awq", "awq"), ("gptq", "awq"), ("awq+gptq", "awq"), ("imatrix", "awq"),
                                        ("awq", "gguf")])
def test_row_shares_put_together_are_the_whole_linear(method, fmt):
    """Each rank rounds a share of every linear's rows: the range searches and roundings of
    the shares, put together, are the whole weight's bits and report entries."""
    import dataclasses

    import numpy as np
    import torch

    from awqkit.config import AWQConfig
    from awqkit.model.captured_input import CapturedInput
    from awqkit.model.distributed import SingleProcess
    from awqkit.model.method_stages import (
        RANGE_SEARCHES,
        ROUNDINGS,
        BlockInputs,
        LinearJob,
        concat_rows,
        merge_entries,
        row_shares,
    )
    from awqkit.model.pipeline import _Entries
    from awqkit.quant_methods import method_named

    g = torch.Generator().manual_seed(0)
    cfg = AWQConfig(group_size=32, format=fmt, **({"zero_point": False} if fmt == "gguf" else {}))
    spec = method_named(method)
    x = torch.randn(3000, 128, generator=g) * (1 + 5 * torch.rand(128, generator=g))
    w = torch.randn(500, 128, generator=g) * 0.05
    job = LinearJob(weight=w, x=CapturedInput(x, [1000, 2000], 128, SingleProcess()), cfg=cfg, inputs=BlockInputs(),
                    never_clipped=False, report=_Entries(), block=0, name="lin")
    job.inputs.prepare([job], spec)

    def run(j):
        return ROUNDINGS[spec.rounding](j, RANGE_SEARCHES[spec.ranges](j)), j.report

    whole, entries = run(job)
    shares = [run(dataclasses.replace(job, weight=w[r0:r1], report=_Entries())) for r0, r1 in row_shares(500, 3)]
    assert len({r1 - r0 for r0, r1 in row_shares(500, 3)}) > 1  # uneven shares, cut at multiples of 96 rows
    put_together = concat_rows([q for q, _ in shares])
    for field in ("codes", "scales", "zeros", "offsets"):
        a, b = getattr(whole, field), getattr(put_together, field)
        assert (a is None and b is None) or np.array_equal(a, b), field
    for kind in ("clip", "gptq"):
        assert merge_entries([[*getattr(e, kind)] for _, e in shares]) == merge_entries([getattr(entries, kind)])
    assert entries.clip or entries.gptq
