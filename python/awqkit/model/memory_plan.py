"""The peak memory of a streaming quantization run, estimated before it starts from the model
skeleton (shapes on the meta device: config.json and the safetensors headers), the
calibration size and the pipeline's working copies, against the memory available.

The terms follow what ``quantize_block`` holds in its busiest phases: the plain-rounding
check (the block and a rounded copy of it: 2 float32 copies, plus the block's input and
output hidden states); the capture (the block, its input and full-precision output, every
linear's captured input and one more copy of the largest while the chunks are joined); the
scale search (the block, the activations and the float64 Gram matrix of the widest input).
Each phase but the search adds one calibration chunk's forward scratch (attention scores, the
MLP's intermediates), and all add what the process already holds (Python, torch,
transformers; read from /proc). The float32 tensors outside the blocks (embeddings, head) are
resident only for the calibration forward and the last shard, beside one block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from .families import BlockLayout
from .pipeline import _CHUNK_SEQS

__all__ = ["MemoryPlan", "available_memory", "plan_memory"]

_BLOCK_COPIES = 2  # the block and its rounded copy (the plain-rounding check)
_GIB = 2**30


@dataclass
class MemoryPlan:
    process_bytes: int  # resident before the run (interpreter, torch, transformers)
    outside_blocks_bytes: int  # embeddings, final norm, head in float32 (calibration forward, last shard)
    block_bytes: int  # the largest decoder block in float32
    block_copies: int
    hidden_bytes: int  # a block's input and output hidden states over the calibration tokens
    activation_bytes: int  # those plus every captured linear input (the capture phase)
    gram_bytes: int  # the scale search's float64 Gram matrix of the widest input (K x K)
    scratch_bytes: int  # one calibration chunk's forward
    tokens: int
    activations_on_disk: bool = False

    @property
    def peak_bytes(self) -> int:
        phases = (self.block_copies * self.block_bytes + self.hidden_bytes + self.scratch_bytes,  # plain-rounding check
                  self.block_bytes + self.activation_bytes + self.scratch_bytes,  # capture
                  self.block_bytes + self.activation_bytes + self.gram_bytes,  # scale search
                  # calibration forward (it gathers block 0's inputs: half the hidden states), last shard
                  self.outside_blocks_bytes + self.block_bytes + self.hidden_bytes // 2 + self.scratch_bytes)
        return self.process_bytes + max(phases)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peak_bytes"] = self.peak_bytes
        return d

    def describe(self) -> str:
        g = lambda n: f"{n / _GIB:.2f} GiB"  # noqa: E731
        return (f"peak {g(self.peak_bytes)} = process {g(self.process_bytes)} + the largest of: {self.block_copies} x block "
                f"{g(self.block_bytes)} + hidden states {g(self.hidden_bytes)} + chunk scratch {g(self.scratch_bytes)}; "
                f"block + activations {g(self.activation_bytes)} ({self.tokens} tokens"
                f"{', captured inputs on disk' if self.activations_on_disk else ''}) + scratch or Gram "
                f"{g(max(self.scratch_bytes, self.gram_bytes))}; outside the blocks {g(self.outside_blocks_bytes)} + block "
                "+ scratch")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_memory() -> int | None:
    """Bytes this process can still take: MemAvailable, lowered by a cgroup v2 limit; None
    where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read())
        if limit != "max":
            left = int(limit) - used
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


def plan_memory(model: nn.Module, blocks: nn.ModuleList, layout: BlockLayout, tokens: int, seqlen: int,
                activations_on_disk: bool = False) -> MemoryPlan:
    """The plan for ``model`` (parameters may be on meta) whose decoder blocks, converted as the
    pipeline will (``convert_blocks``), are ``blocks``, calibrated on ``tokens`` tokens in sequences of ``seqlen``."""
    config = model.config
    inside = {id(p) for p in model.get_submodule(layout.layers_path).parameters()}
    outside = sum(p.numel() for p in model.parameters() if id(p) not in inside) * 4
    block = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0) * 4
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    widths: list[float] = []
    if tokens and len(blocks):
        b = blocks[0]
        linears = {rel: m for rel, m in b.named_modules() if isinstance(m, nn.Linear)}
        top_k = int(getattr(config, "num_experts_per_tok", 1) or 1)

        def share(rel: str) -> float:  # an expert sees about top_k / num_experts of the tokens
            if layout.moe is not None and rel.startswith(layout.moe.path + ".") and layout.num_experts:
                return top_k / layout.num_experts
            return 1.0
        covered: set[str] = set()
        for m in layout.mappings:
            if m.layers and m.layers[0] in linears:
                widths.append(linears[m.layers[0]].in_features * share(m.layers[0]))
                covered.update(m.layers)
        widths += [lin.in_features * share(rel) for rel, lin in linears.items() if rel not in covered]
    inter = max((lin.out_features for b in blocks[:1] for lin in b.modules() if isinstance(lin, nn.Linear)), default=hidden)
    captured = sum(widths) + (max(widths) if widths else 0)
    hidden_io = int(tokens * 4 * 2 * hidden)
    gram = int(max((lin.in_features for b in blocks[:1] for lin in b.modules() if isinstance(lin, nn.Linear)), default=0) ** 2
               * 8) if tokens else 0
    seqs = min(_CHUNK_SEQS, max(1, tokens // max(seqlen, 1)))
    # On disk, one calibration chunk's inputs are held while the chunk runs, and the clip
    # search reads its token sample.
    held = min(tokens, seqs * seqlen) if activations_on_disk else tokens
    activations = hidden_io + int(held * 4 * captured)
    scratch = 0 if not tokens else 4 * (2 * seqs * heads * seqlen * seqlen + 3 * seqs * seqlen * inter)
    return MemoryPlan(process_bytes=_rss_bytes(), outside_blocks_bytes=outside, block_bytes=block,
                      block_copies=_BLOCK_COPIES, hidden_bytes=hidden_io, activation_bytes=activations, gram_bytes=gram,
                      scratch_bytes=scratch, tokens=tokens, activations_on_disk=activations_on_disk)
