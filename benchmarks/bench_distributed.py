"""Distributed quantization (issue 20): wall time for 1 and 2 processes on this machine, 2-4
hosts simulated with network namespaces, the bytes each kind of message moves, and a
projection for a 70B model over 8 hosts from measured per-block costs.

    PYTHONPATH=python python3 benchmarks/bench_distributed.py local --model build/real-models/smollm2-135m --procs 1,2
    PYTHONPATH=python python3 benchmarks/bench_distributed.py make-7b-slice --layers 1      # Llama-2-7B shapes, 1 block
    PYTHONPATH=python python3 benchmarks/bench_distributed.py local --model build/distributed/llama2-7b-1layers --procs 1,2
    sudo env PYTHONPATH=python python3 benchmarks/bench_distributed.py hosts --model build/real-models/smollm2-135m \\
        --hosts 2,3,4 --rate 1gbit                      # root: ip netns, a bridge, tc rate limits
    PYTHONPATH=python python3 benchmarks/bench_distributed.py project         # 70B over 8 hosts, from the 7B slice
    PYTHONPATH=python python3 benchmarks/bench_distributed.py table

Every run is ``awqkit quantize`` with AWQ and AutoAWQ's calibration size (128 x 512 tokens of
the shared C4 sample),
started by torchrun (``--standalone`` on one machine; ``--nnodes H`` with a static rendezvous
on the simulated hosts), each process with ``threads // procs`` threads. Each run's checkpoint
is compared byte for byte with the one-process run's. Results are appended to
``benchmarks/results/bench_distributed.jsonl``. Run under ``flock /tmp/awqkit-bench.lock``
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_streaming import LLAMA2_7B, write_random_shards  # noqa: E402

WORK = ROOT / "build" / "distributed"
_C4 = str(ROOT.parent / "shared" / "data" / "c4-validation" / "c4_validation_2k.jsonl")
RESULTS = HERE / "results" / "bench_distributed.jsonl"
_VOLATILE = {"memory_plan", "stages", "total_seconds", "peak_rss_mb", "distributed"}


def _record(entry: dict) -> None:
    from awqkit.model.method_comparison import _cpu_name

    entry.update({"cpu": _cpu_name(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps({k: v for k, v in entry.items() if k != "stages"}, indent=1))


def _env(threads: int, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": str(threads), **extra}


def _quantize_args(model: Path, out: Path, args) -> list[str]:
    calib = ["--calib", str(Path(args.calib).resolve())] if args.calib else []
    return ["-m", "awqkit", "quantize", str(model), "--out", str(out), "--method", args.method, "--group-size",
            str(args.group_size), "--overwrite", *calib]


def _same_checkpoint(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    for n in names:
        if n == "awq_report.json":
            ra, rb = (json.loads((d / n).read_text()) for d in (a, b))
            if {k: v for k, v in ra.items() if k not in _VOLATILE} != {k: v for k, v in rb.items() if k not in _VOLATILE}:
                return False
        elif (a / n).read_bytes() != (b / n).read_bytes():
            return False
    return True


def _summary(out: Path) -> dict:
    report = json.loads((out / "awq_report.json").read_text())
    return {"stages": {k: round(v["seconds"], 2) for k, v in report["stages"].items()},
            "report_seconds": round(report["total_seconds"], 1), "distributed": report.get("distributed"),
            "n_blocks": report["n_blocks"], "calib_tokens": report["calib_tokens"]}


def local(args) -> None:
    """1 .. N processes on this machine, the threads shared among them."""
    model = Path(args.model).resolve()
    reference = None
    for procs in [int(p) for p in args.procs.split(",")]:
        out = WORK / f"{model.name}-{args.method}-p{procs}"
        threads = max(1, args.threads // procs)
        cmd = [sys.executable, *_quantize_args(model, out, args)] if procs == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
             *_quantize_args(model, out, args)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=_env(threads), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode:
            sys.exit(f"procs={procs} failed:\n{res.stderr[-3000:]}")
        reference = reference or out
        _record({"kind": "local", "model": model.name, "method": args.method, "procs": procs, "threads_each": threads,
                 "wall_s": round(wall, 1), "identical_to_first": _same_checkpoint(reference, out), **_summary(out)})


def make_7b_slice(args) -> None:
    """Llama-2-7B's shapes with only ``--layers`` decoder blocks (random bf16 weights), the
    stories260K tokenizer: the per-block costs of a 7B model without its 32 blocks."""
    import torch

    from awqkit.data import data_dir

    c = dict(LLAMA2_7B, num_hidden_layers=args.layers)
    h, inter = c["hidden_size"], c["intermediate_size"]
    folder = WORK / f"llama2-7b-{args.layers}layers"
    shapes = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(args.layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        shapes += [(p + f"self_attn.{k}_proj.weight", (h, h)) for k in "qkvo"]
        shapes += [(p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                   (p + "mlp.down_proj.weight", (h, inter))]
    shapes += [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab_size"], h))]
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_random_shards(folder, shapes, torch.bfloat16, seed=0, shard_bytes=2_000_000_000)
    (folder / "config.json").write_text(json.dumps(c, indent=2))
    d = data_dir()
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if d is not None and (d / "stories260K-hf" / f).exists():
            shutil.copy(d / "stories260K-hf" / f, folder / f)
    print(folder)


def _sh(cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, shell=True, check=check, capture_output=True)


def _make_hosts(n: int, rate: str | None) -> None:
    """``n`` network namespaces awqh0.. on one bridge, 10.77.0.1.. /24; each host's outgoing
    link limited to ``rate`` by a token bucket (tc tbf; this kernel has no netem for delays)."""
    _remove_hosts()
    _sh("ip link add awqbr0 type bridge && ip link set awqbr0 up")
    for h in range(n):
        ns, v, p = f"awqh{h}", f"awqv{h}", f"awqp{h}"
        _sh(f"ip netns add {ns} && ip link add {v} type veth peer name {p} && ip link set {p} master awqbr0 && "
            f"ip link set {p} up && ip link set {v} netns {ns} && ip -n {ns} addr add 10.77.0.{h + 1}/24 dev {v} && "
            f"ip -n {ns} link set {v} up && ip -n {ns} link set lo up")
        if rate:
            _sh(f"ip netns exec {ns} tc qdisc add dev {v} root tbf rate {rate} burst 1mb latency 50ms")


def _remove_hosts() -> None:
    out = subprocess.run("ip netns list", shell=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        ns = line.split()[0] if line.strip() else ""
        if ns.startswith("awqh"):
            _sh(f"ip netns del {ns}", check=False)
    _sh("ip link del awqbr0", check=False)


def hosts(args) -> None:
    """One torchrun per simulated host (a network namespace), one process each, traffic through
    the bridge (loopback of this machine only, limited by tc with --rate)."""
    model = Path(args.model).resolve()
    reference = WORK / f"{model.name}-{args.method}-p1"
    for n in [int(h) for h in args.hosts.split(",")]:
        out = WORK / f"{model.name}-{args.method}-h{n}-{args.rate or 'unshaped'}"
        _make_hosts(n, args.rate)
        threads = max(1, args.threads // n)
        procs = []
        t0 = time.perf_counter()
        try:
            for h in range(n):
                cmd = ["ip", "netns", "exec", f"awqh{h}", sys.executable, "-m", "torch.distributed.run", "--nnodes",
                       str(n), "--nproc-per-node", "1", "--node-rank", str(h), "--master-addr", "10.77.0.1",
                       "--master-port", "29511", *_quantize_args(model, out, args)]
                log = open(WORK / f"hosts-{n}-{h}.log", "w")
                procs.append(subprocess.Popen(cmd, env=_env(threads, GLOO_SOCKET_IFNAME=f"awqv{h}"), stdout=log,
                                              stderr=subprocess.STDOUT))
            rcs = [p.wait() for p in procs]
        finally:
            _remove_hosts()
        wall = time.perf_counter() - t0
        if any(rcs):
            sys.exit(f"{n} hosts: exit codes {rcs}; see {WORK}/hosts-{n}-*.log")
        _record({"kind": "hosts", "model": model.name, "method": args.method, "hosts": n, "threads_each": threads,
                 "rate": args.rate, "wall_s": round(wall, 1),
                 "identical_to_one_process": reference.exists() and _same_checkpoint(reference, out), **_summary(out)})


def _results() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []


# Stages whose work is split over the ranks (each rank's share of the chunks or of the
# dealt searches), and those every rank does in full (the checks on chunk 0, loading).
_SHARDED = ("capture", "scale_search", "clip_search", "quantize_pack", "propagate", "capture_block_calls")
_LLAMA_70B = {"hidden": 8192, "inter": 28672, "layers": 80, "kv_dim": 1024}
_LLAMA2_7B = {"hidden": 4096, "inter": 11008, "layers": 32, "kv_dim": 4096}


def _block_params(m: dict) -> float:
    h = m["hidden"]
    return 2 * h * h + 2 * h * m["kv_dim"] + 3 * h * m["inter"]


def _gram_bytes(m: dict) -> float:
    """The upper triangles (float64) of a block's four captured inputs' Gram matrices."""
    return sum(8 * k * (k + 1) / 2 for k in (m["hidden"],) * 3 + (m["inter"],))


def project(args) -> None:
    """70B over 8 hosts from the 7B slice's per-block stage costs with 1 and 2 processes:
    the split stages scale with the work per block (parameters x tokens) and divide by the
    hosts; the rest (checks on chunk 0, loading, writing) scale with the parameters and do not
    divide; the messages scale with the Gram matrices and the hidden states."""
    runs = {r["procs"]: r for r in _results() if r.get("kind") == "local" and r["model"] == args.slice}
    if 1 not in runs:
        sys.exit(f"no one-process run of {args.slice} in {RESULTS}: run `local --model build/distributed/{args.slice}`")
    one = runs[1]
    blocks = one["n_blocks"]
    split = sum(v for k, v in one["stages"].items() if k in _SHARDED) / blocks
    rest = sum(v for k, v in one["stages"].items() if k not in _SHARDED) / blocks
    scale = _block_params(_LLAMA_70B) / _block_params(_LLAMA2_7B)
    gbit = args.gbit * 1e9 / 8
    gram70 = _gram_bytes(_LLAMA_70B)
    hidden70 = 4 * _LLAMA_70B["hidden"] * one["calib_tokens"]  # float32, gathered by rank 0 each block
    codes70 = _block_params(_LLAMA_70B)  # one byte per weight code, sent to every rank
    per_block = {}
    for hosts in (1, args.hosts):
        compute = split * scale / hosts + rest * scale
        comm = 0.0 if hosts == 1 else (2 * gram70 + hidden70 * (hosts - 1) / hosts + codes70) / gbit
        per_block[hosts] = {"compute_s": compute, "comm_s": comm, "total_s": compute + comm}
    entry = {"kind": "projection", "slice": args.slice, "blocks_measured": blocks, "split_s_per_7b_block": round(split, 1),
             "unsplit_s_per_7b_block": round(rest, 1), "scale_70b_over_7b": round(scale, 2), "network_gbit": args.gbit,
             "hosts": args.hosts, "layers": _LLAMA_70B["layers"],
             "per_block": {str(k): {a: round(b, 1) for a, b in v.items()} for k, v in per_block.items()},
             "hours": {str(k): round(v["total_s"] * _LLAMA_70B["layers"] / 3600, 1) for k, v in per_block.items()}}
    if 2 in runs:
        two = runs[2]
        entry["measured_2proc_speedup_7b"] = round(one["wall_s"] / two["wall_s"], 2)
    _record(entry)


def table(args) -> None:
    rows = _results()
    print("| run | procs/hosts | threads each | wall s | same bytes | statistics MiB | hidden MiB | results MiB |")
    print("|---|---|---|---:|---|---:|---:|---:|")
    for r in rows:
        if r["kind"] not in ("local", "hosts"):
            continue
        sent = (r.get("distributed") or {}).get("bytes_sent", {})
        mib = {k: sum(v) / 2**20 for k, v in sent.items()}
        where = f"{r['procs']} procs" if r["kind"] == "local" else f"{r['hosts']} hosts ({r.get('rate') or 'unshaped'})"
        same = r.get("identical_to_first", r.get("identical_to_one_process"))
        print(f"| {r['model']} {r['method']} | {where} | {r['threads_each']} | {r['wall_s']} | {same} | "
              f"{mib.get('statistics', 0):.1f} | {mib.get('hidden states', 0):.1f} | "
              f"{mib.get('quantized linears', 0) + mib.get('scale choices', 0) + mib.get('clip samples', 0):.1f} |")
    for r in rows:
        if r["kind"] == "projection":
            print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("local")
    a.add_argument("--model", required=True)
    a.add_argument("--procs", default="1,2")
    a.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a.add_argument("--method", default="awq")
    a.add_argument("--group-size", type=int, default=128)
    a.add_argument("--calib", default=_C4, help="calibration text (default: the shared C4 sample, 128 x 512 tokens)")
    a.set_defaults(func=local)
    m = sub.add_parser("make-7b-slice")
    m.add_argument("--layers", type=int, default=1)
    m.set_defaults(func=make_7b_slice)
    h = sub.add_parser("hosts")
    h.add_argument("--model", required=True)
    h.add_argument("--hosts", default="2,3,4")
    h.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    h.add_argument("--method", default="awq")
    h.add_argument("--group-size", type=int, default=128)
    h.add_argument("--calib", default=_C4)
    h.add_argument("--rate", default=None, help="tc tbf rate of each host's link, e.g. 1gbit")
    h.set_defaults(func=hosts)
    p = sub.add_parser("project")
    p.add_argument("--slice", default="llama2-7b-1layers")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--gbit", type=float, default=10.0)
    p.set_defaults(func=project)
    t = sub.add_parser("table")
    t.set_defaults(func=table)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    args.func(args)


if __name__ == "__main__":
    main()
