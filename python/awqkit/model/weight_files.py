"""Reading model and checkpoint weights from safetensors files without the whole model in
memory: the list of files a folder consists of (checked against its index), a reader that
returns one tensor at a time, a context that builds a model skeleton with its parameters on
the meta device, and the assignment of one file tensor to a skeleton's parameter."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, BinaryIO, cast

import numpy as np
import torch
from torch import nn

__all__ = ["TensorReader", "assign_tensor", "parameters_on_meta", "weight_files"]


def weight_files(path: str) -> list[str]:
    """The safetensors files a checkpoint folder consists of, or a clear error when it is
    incomplete or mixes two checkpoints (files no index names, an index beside a single file)."""
    present = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            listed = sorted(set(json.load(f)["weight_map"].values()))
        missing = [f for f in listed if f not in present]
        if missing:
            raise ValueError(f"{path} is incomplete: its index names {missing[:3]}, which are not there; "
                             "save the checkpoint again")
        stray = [f for f in present if f not in listed]
        if stray:
            raise ValueError(f"{path} holds weight files its index does not name ({stray[:3]}): it mixes two "
                             "checkpoints; save it again into an empty folder")
        return listed
    if present != ["model.safetensors"]:
        what = "no model.safetensors" if not present else f"weight files {present[:3]} without model.safetensors.index.json"
        raise ValueError(f"{path} has {what}: it is not a complete checkpoint; save it again")
    return present


# safetensors dtype names -> torch dtypes (https://github.com/huggingface/safetensors, format spec)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class TensorReader:
    """A checkpoint's safetensors files, one tensor at a time, read with plain reads into
    memory the caller then owns.

    Deliberately not memory-mapped (safetensors' ``safe_open`` maps the file): the pages of
    a mapped file count in the process's resident set while mapped, so mapping a checkpoint
    and converting its tensors would peak at about twice its size."""

    def __init__(self, path: str, files: list[str]):
        self._where: dict[str, tuple[str, torch.dtype, tuple[int, ...], int]] = {}
        self._files: dict[str, BinaryIO] = {}
        for fname in files:
            fpath = os.path.join(path, fname)
            size = os.path.getsize(fpath)
            with open(fpath, "rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else -1
                if not 0 < n <= size - 8:
                    raise ValueError(f"{fpath} is not a safetensors file (bad header length): save the checkpoint again")
                try:
                    header = json.loads(f.read(n))
                except ValueError as e:
                    raise ValueError(f"{fpath} has an unreadable safetensors header ({e}): save the checkpoint again") from None
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                dtype = _ST_DTYPES.get(info.get("dtype"))
                if dtype is None:
                    raise ValueError(f"{fpath}: tensor {name} has dtype {info.get('dtype')!r}, which awqkit does not read")
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
                nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
                if end - begin != nbytes or begin < 0 or base + end > size:
                    raise ValueError(f"{fpath}: tensor {name} lies outside the file or has the wrong size: "
                                     "the file is truncated or corrupt; save the checkpoint again")
                if name in self._where:
                    raise ValueError(f"{path}: tensor {name} is in two weight files")
                self._where[name] = (fpath, dtype, shape, base + begin)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for f in self._files.values():
            f.close()
        self._files.clear()

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][2]

    def _read_into(self, f, fpath: str, name: str, buf: memoryview) -> None:
        done = 0
        while done < len(buf):
            got = f.readinto(buf[done:])
            if not got:
                raise ValueError(f"{fpath} ended inside tensor {name}: the file is truncated; save the checkpoint again")
            done += got

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor ``name``, converted to ``dtype`` if given: then in chunks of about 8 MiB
        of the file, so a bf16 embedding becomes float32 without a whole bf16 copy beside it."""
        fpath, src_dtype, shape, offset = self._where[name]
        f = self._files.get(fpath)
        if f is None:
            f = self._files[fpath] = cast(BinaryIO, open(fpath, "rb", buffering=0))
        f.seek(offset)
        if dtype is None or dtype == src_dtype:
            t = torch.empty(shape, dtype=src_dtype)
            self._read_into(f, fpath, name, memoryview(cast(Any, t.reshape(-1).view(torch.uint8).numpy())))
            return t
        out = torch.empty(shape, dtype=dtype)
        flat = out.reshape(-1)
        step = max(1, (8 << 20) // torch.empty((), dtype=src_dtype).element_size())
        chunk = torch.empty(min(step, flat.numel()), dtype=src_dtype)
        for start in range(0, flat.numel(), step):
            part = chunk[: min(step, flat.numel() - start)]
            self._read_into(f, fpath, name, memoryview(cast(Any, part.view(torch.uint8).numpy())))
            flat[start : start + part.numel()].copy_(part)
        return out


@contextlib.contextmanager
def parameters_on_meta():
    """Build modules whose parameters live on the meta device (no memory, no init work) while
    their buffers are computed on the CPU as usual: non-persistent buffers (rotary
    ``inv_freq``, Gemma's embedding scale, masks) are not in a checkpoint and keep the values
    the model's own code gives them. (accelerate's ``init_empty_weights()`` does the same.)
    Not thread-safe: modules built by other threads meanwhile get meta parameters too."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device.type != "meta":
            module._parameters[name] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def assign_tensor(model: nn.Module, key: str, reader: TensorReader, name: str) -> bool:
    """Read tensor ``name`` in place of the parameter or persistent buffer ``key`` (as
    ``load_state_dict(assign=True)``, cast to the model's dtype for it); False when the
    model has no such entry."""
    if name not in reader:
        return False
    owner_name, _, leaf = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        return False
    old: Any = owner._parameters.get(leaf)
    is_param = old is not None
    if not is_param:
        old = owner._buffers.get(leaf)
        if old is None or leaf in owner._non_persistent_buffers_set:
            return False
    if tuple(old.shape) != reader.shape(name):
        raise ValueError(f"{key}: the checkpoint holds shape {reader.shape(name)}, the model expects {tuple(old.shape)}")
    value = reader.read(name, old.dtype)
    if is_param:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = value
    return True
