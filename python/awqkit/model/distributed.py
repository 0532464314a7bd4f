"""A quantization run split over processes (``torchrun --nproc-per-node N awqkit quantize ...``).

What each rank does (``awqkit.model.pipeline.quantize_block`` and ``streaming``):

- **Calibration** is sharded by chunks of sequences (the pipeline's forward unit): rank r runs
  a contiguous range of them through each block. The checks (fold checks, block errors,
  fallbacks) are measured on chunk 0's sequences: each rank also runs a share of them, and
  the per-sequence errors are gathered in sequence order (numpy sums, the same bits for any
  split), so every rank takes the same decisions. This relies on torch computing a sequence's
  block output with the same bits in a smaller batch (true of its CPU kernels here; the
  tests compare the bytes with one process).
- **Statistics** (sums, max, Gram) of each captured input are accumulated per rank with
  ``ActivationStats(bounds=...)``: every addend sits on a grid on which float64 sums are
  exact, so the summed statistics are bit for bit the single process's, in any reduction order.
- **Searches**: every rank scores a share of each mapping's scale candidates (a candidate's
  loss depends on it alone) and the losses are gathered; every rank searches the ranges of,
  and rounds, a share of each linear's rows (a row's result depends on it alone) and the
  shares are gathered. Every rank then holds the same quantized block.
- **Writing**: rank 0 writes the shards and commits the resume state (with every chunk's
  hidden states, gathered), so a run resumes with any number of processes.

The checkpoint's bytes are those of the single-process run on the same calibration set, for
any world size, on CPUs that select the same kernels (checked when the group forms).
``SingleProcess`` is the world of one that every run without torchrun uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["RankFailure", "SingleProcess", "TorchProcessGroup", "chunk_owners", "from_environment"]


class RankFailure(RuntimeError):
    """A collective failed: another rank died or the network went away."""


class SingleProcess:
    """The world of one process: every collective is the identity. Subclasses count the bytes
    each kind of message moves (``volume``: label -> bytes this rank sent) and ``summary``
    them for the report."""

    rank = 0
    world = 1

    def __init__(self) -> None:
        self.volume: dict[str, int] = {}
        self.where = ""  # what the run is doing, for the error when a rank fails
        self.hint = "rerun the same command to resume"  # what the user can do then (streaming names its folder)

    # Arrays (float64 numpy, in place).
    def all_sum(self, arrays: Sequence[np.ndarray], label: str) -> None:
        """Element-wise sum over the ranks, on every rank."""

    def all_max(self, arrays: Sequence[np.ndarray], label: str) -> None:
        """Element-wise max over the ranks, on every rank."""

    # Python objects (pickled).
    def all_gather(self, obj: Any, label: str) -> list[Any]:
        return [obj]

    def gather(self, obj: Any, dst: int, label: str) -> list[Any] | None:
        return [obj]

    def broadcast(self, obj: Any, src: int, label: str) -> Any:
        return obj

    def scatter(self, objs: list[Any] | None, src: int, label: str) -> Any:
        assert objs is not None
        return objs[0]

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> dict[str, Any] | None:
        """What the report says of the ranks (None: one process)."""
        return None



class TorchProcessGroup(SingleProcess):
    """``torch.distributed`` (gloo on CPU) under the environment torchrun sets (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT). A collective that fails, because a rank died or
    the network went away, raises ``RankFailure`` naming what the run was doing."""

    def __init__(self, timeout_s: float | None = None) -> None:
        super().__init__()
        import datetime

        import torch.distributed as dist

        self._dist = dist
        if timeout_s is None:
            timeout_s = float(os.environ.get("AWQKIT_DIST_TIMEOUT", "1800"))
        if not dist.is_initialized():
            import atexit

            import torch

            # awqkit's messages are CPU tensors and pickles: gloo carries them. On a machine with
            # GPUs, NCCL is registered for CUDA tensors too (a caller's own collectives).
            backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            self._owns_group = True
            # A process that exits with the group alive can abort in gloo's teardown.
            atexit.register(self.close)
        else:
            self._owns_group = False
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self._say_why_when_stopped()
        self._check_same_kernels()

    def _say_why_when_stopped(self) -> None:
        """When one rank dies, torchrun stops the others with SIGTERM, often while they wait
        in a collective (native code, where no Python signal handler runs). The signal's
        number goes to a pipe (signal.set_wakeup_fd, written by the C handler at once); a
        thread reading it says what this rank was doing and how to resume, then exits."""
        import signal
        import sys
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.signal(signal.SIGTERM, lambda *_: None)  # the wakeup fd only works with a Python handler
        signal.set_wakeup_fd(w)

        def watch() -> None:
            while True:
                got = os.read(r, 1)
                if got and got[0] == signal.SIGTERM:
                    print(f"awqkit: error: rank {self.rank} of {self.world} was stopped by its launcher (SIGTERM) while "
                          f"{self.where or 'setting up'}: another rank failed (see the launcher's report) or the run was "
                          f"cancelled. {self.hint}", file=sys.stderr, flush=True)
                    os._exit(128 + signal.SIGTERM)

        threading.Thread(target=watch, name="awqkit-sigterm", daemon=True).start()

    def _check_same_kernels(self) -> None:
        """The bytes are the same for any world size only if every rank computes the same
        floats: the same native kernels (ISA) and the same torch build."""
        import torch

        from ..isa import active_isa

        # MKL_CBWR: MKL's reproducibility mode (the CLI sets AUTO,STRICT: the same bits for any
        # thread count); AUTO picks MKL's code path by CPU, so a mixed cluster needs a common one.
        mine = {"isa": active_isa(), "torch": torch.__version__, "MKL_CBWR": os.environ.get("MKL_CBWR")}
        seen = self.all_gather(mine, "setup")
        differ = [f"rank {r}: {s}" for r, s in enumerate(seen) if s != seen[0]]
        if differ:
            raise ValueError(f"the ranks would not compute the same floats (rank 0: {seen[0]}; {'; '.join(differ)}): "
                             "give every host the same torch, cap awqkit's kernels to a level all CPUs have "
                             "(AWQKIT_ISA=avx512_vnni or avx2) and MKL's likewise (MKL_CBWR=AVX2,STRICT) so that the "
                             "checkpoint does not depend on where each part ran")
        self.threads = torch.get_num_threads()

    def _fail(self, e: BaseException):
        self._failed = True
        return RankFailure(
            f"rank {self.rank} of {self.world}: a collective failed while {self.where or 'setting up'} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Another rank probably died (see its "
            f"output) or the network went away. {self.hint}")

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ConnectionError, OSError) as e:
            raise self._fail(e) from e

    def _count(self, label: str, nbytes: int) -> None:
        self.volume[label] = self.volume.get(label, 0) + int(nbytes)

    def all_sum(self, arrays, label):
        import torch

        for a in arrays:
            self._count(label, a.nbytes)
            self._call(self._dist.all_reduce, torch.from_numpy(a), op=self._dist.ReduceOp.SUM)

    def all_max(self, arrays, label):
        import torch

        for a in arrays:
            self._count(label, a.nbytes)
            self._call(self._dist.all_reduce, torch.from_numpy(a), op=self._dist.ReduceOp.MAX)

    def all_gather(self, obj, label):
        out: list[Any] = [None] * self.world
        self._count(label, _payload_bytes(obj))
        self._call(self._dist.all_gather_object, out, obj)
        return out

    def gather(self, obj, dst, label):
        out: list[Any] | None = [None] * self.world if self.rank == dst else None
        if self.rank != dst:
            self._count(label, _payload_bytes(obj))
        self._call(self._dist.gather_object, obj, out, dst=dst)
        return out

    def broadcast(self, obj, src, label):
        box = [obj if self.rank == src else None]
        if self.rank == src:
            self._count(label, _payload_bytes(obj) * (self.world - 1))
        self._call(self._dist.broadcast_object_list, box, src=src)
        return box[0]

    def scatter(self, objs, src, label):
        box: list[Any] = [None]
        if self.rank == src:
            assert objs is not None
            self._count(label, sum(_payload_bytes(o) for r, o in enumerate(objs) if r != src))
        self._call(self._dist.scatter_object_list, box, objs if self.rank == src else None, src=src)
        return box[0]

    def barrier(self):
        self._call(self._dist.barrier)

    def close(self) -> None:
        if getattr(self, "_failed", False):
            # A group whose peer is gone cannot be torn down (gloo aborts the process): leave
            # now, with the error already said, and the exit code of a failed run.
            import sys

            sys.stderr.flush()
            os._exit(1)
        if self._owns_group and self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._owns_group = False

    def summary(self) -> dict[str, Any]:
        """World size, each rank's threads and the bytes each rank sent per kind (a collective)."""
        per_rank = self.all_gather(dict(self.volume), "report")
        labels = sorted({k for v in per_rank for k in v})
        return {"world_size": self.world, "threads": self.all_gather(self.threads, "report"),
                "bytes_sent": {k: [v.get(k, 0) for v in per_rank] for k in labels}}


def _payload_bytes(obj: Any) -> int:
    """The bytes an object's arrays and tensors hold (what a message moves, without pickling it
    a second time just to count it); small scalars and strings count 8 bytes."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_payload_bytes(k) + _payload_bytes(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(_payload_bytes(v) for v in obj)
    if hasattr(obj, "__dict__"):
        return _payload_bytes(vars(obj))
    return 8


def from_environment() -> SingleProcess:
    """The group torchrun (or any launcher setting WORLD_SIZE > 1) started this process in,
    else the world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return TorchProcessGroup()
    return SingleProcess()


def chunk_owners(n_chunks: int, world: int) -> list[int]:
    """The rank of each calibration chunk: contiguous, as even as possible (rank r takes
    chunks [r n / W, (r + 1) n / W))."""
    return [min(world - 1, (c * world) // max(1, n_chunks)) if n_chunks >= world else c for c in range(n_chunks)]
