"""Distributed quantization (issue 20): wall time for 1 and 2 processes on this machine, 2-4
hosts simulated with network namespaces, the bytes each kind of message moves, and a
projection for a 70B model over 8 hosts from measured per-block costs.

    PYTHONPATH=python python3 benchmarks/bench_distributed.py local --model build/real-models/smollm2-135m --procs 1,2
    PYTHONPATH=python python3 benchmarks/bench_distributed.py local --model build/real-models/smollm2-135m --procs 1,2 \
        --threads-each 1                                  # the scaling: one core per process
    PYTHONPATH=python python3 benchmarks/bench_distributed.py make-7b-slice --layers 1      # Llama-2-7B shapes, 1 block
    PYTHONPATH=python python3 benchmarks/bench_distributed.py local --model build/distributed/llama2-7b-1layers --procs 1,2
    sudo env PYTHONPATH=python python3 benchmarks/bench_distributed.py hosts --model build/real-models/smollm2-135m \\
        --hosts 2,3,4 --rate 1gbit                      # root: ip netns, a bridge, tc rate limits
    PYTHONPATH=python python3 benchmarks/bench_distributed.py project         # 70B over 8 hosts, from the 7B slice
    PYTHONPATH=python python3 benchmarks/bench_distributed.py mkl-threads     # a 512x4096x4096 product, 1 vs 2 threads
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
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_streaming import write_llama2_7b  # noqa: E402

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
        threads = args.threads_each or max(1, args.threads // procs)
        out = WORK / f"{model.name}-{args.method}-p{procs}-t{threads}"
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
    """Llama-2-7B's shapes with only ``--layers`` decoder blocks: the per-block costs of a 7B
    model without its 32 blocks."""
    write_llama2_7b(WORK / f"llama2-7b-{args.layers}layers", args.layers)


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
    reference = WORK / f"{model.name}-{args.method}-p1-t{args.threads}"
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


_THREADS_PROBE = """
import torch
g = torch.Generator().manual_seed(0)
x, w = torch.randn(512, 4096, generator=g), torch.randn(4096, 4096, generator=g) * 0.02
out = []
for t in (1, 2):
    torch.set_num_threads(t)
    out.append(torch.nn.functional.linear(x, w))
print(int(torch.equal(out[0], out[1])))
"""


def mkl_threads(args) -> None:
    """Whether one check sequence through a 4096-wide projection (512 x 4096 x 4096, float32)
    has the same bits with 1 and 2 threads, with MKL's default mode and with the CLI's strict one."""
    for mode in ("", "AUTO,STRICT"):
        env = {k: v for k, v in _env(2).items() if k != "MKL_CBWR"}
        if mode:
            env["MKL_CBWR"] = mode
        res = subprocess.run([sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True, check=True)
        _record({"kind": "mkl-threads", "MKL_CBWR": mode or None, "same_bits_1_and_2_threads": res.stdout.strip() == "1"})


def _results() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []


# Per-block cost model, 7B -> 70B. Shapes of a Llama block: (K, N) of each captured input and
# the rows N of the linears reading it (q/k/v, o, gate/up, down).
_SHAPES = {
    "7b": {"hidden": 4096, "inter": 11008, "kv": 4096, "layers": 32},
    "70b": {"hidden": 8192, "inter": 28672, "kv": 1024, "layers": 80},
}


def _inputs(m: dict) -> list[tuple[int, int]]:
    h, i, kv = m["hidden"], m["inter"], m["kv"]
    return [(h, h + 2 * kv), (h, h), (h, 2 * i), (i, h)]


def _params(m: dict) -> float:
    return float(sum(k * n for k, n in _inputs(m)))


def _cost_ratios(tokens: int) -> dict[str, float]:
    """70B over 7B per block, per stage: forward passes and rounding scale with the block's
    weights; the scale search with the Gram matrices (T K^2 / 2) and the candidates' scoring
    (21 N K^2); the clip search with the clipped weights (samples fixed)."""
    big, small = _SHAPES["70b"], _SHAPES["7b"]
    search = [sum(k * k * (tokens / 2 + 21 * n) for k, n in _inputs(m)) for m in (big, small)]
    weights = _params(big) / _params(small)
    return {"scale_search": search[0] / search[1], "default": weights}


def _bytes_per_block(m: dict, tokens: int, world: int) -> dict[str, float]:
    """What one rank sends per block (ring all-reduce: about 2 (W-1)/W of the array; all-gather:
    its share to each of the W - 1 others; the hidden states once to rank 0)."""
    gram = sum(8 * k * (k + 1) / 2 + 16 * k for k, _ in _inputs(m))
    return {"statistics": 2 * (world - 1) / world * gram,
            "quantized rows": (world - 1) * _params(m) * 1.1 / world,  # codes as bytes, scales and zeros
            "hidden states": 4 * m["hidden"] * tokens / world}


def project(args) -> None:
    """70B over ``--hosts`` hosts like this machine, from the 7B slice's per-block stage times
    (one process): each stage scaled by its cost ratio, the split stages divided by the hosts
    (with the rounding-up of 21 candidates and 8 check sequences over the hosts), loading and
    writing not divided, plus the messages at ``--gbit``."""
    runs = {r["procs"]: r for r in _results() if r.get("kind") == "local" and r["model"] == args.slice}
    if 1 not in runs:
        sys.exit(f"no one-process run of {args.slice} in {RESULTS}: run `local --model build/distributed/{args.slice}`")
    one = runs[1]
    tokens, blocks = one["calib_tokens"], one["n_blocks"]
    ratios = _cost_ratios(tokens)
    hosts = args.hosts
    uneven = {"scale_search": -(-21 // hosts) * hosts / 21, "block_check": -(-8 // hosts) * hosts / 8,
              "fold_check": -(-8 // hosts) * hosts / 8}
    unsplit = {"load", "write", "calibration"}
    per_stage = {}
    for k, v in one["stages"].items():
        t70 = v / blocks * ratios.get(k, ratios["default"])
        per_stage[k] = {"one_host_s": t70, "hosts_s": t70 if k in unsplit else t70 / hosts * uneven.get(k, 1.0)}
    sent = _bytes_per_block(_SHAPES["70b"], tokens, hosts)
    comm = sum(sent.values()) / (args.gbit * 1e9 / 8)
    one_host = sum(v["one_host_s"] for v in per_stage.values())
    split = sum(v["hosts_s"] for v in per_stage.values()) + comm
    layers = _SHAPES["70b"]["layers"]
    entry = {"kind": "projection", "slice": args.slice, "calib_tokens": tokens, "hosts": hosts, "network_gbit": args.gbit,
             "ratios_70b_over_7b": {k: round(v, 2) for k, v in ratios.items()},
             "per_block_stage_s": {k: {a: round(b, 1) for a, b in v.items()} for k, v in per_stage.items()},
             "bytes_sent_per_rank_per_block_gb": {k: round(v / 1e9, 2) for k, v in sent.items()},
             "comm_s_per_block": round(comm, 1), "block_s_one_host": round(one_host, 1),
             "block_s_hosts": round(split, 1), "hours_one_host": round(one_host * layers / 3600, 1),
             "hours_hosts": round(split * layers / 3600, 1), "speedup": round(one_host / split, 2)}
    if 2 in runs:
        entry["measured_7b_slice_wall_1_vs_2_procs"] = [one["wall_s"], runs[2]["wall_s"]]
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
    a.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="shared among the processes")
    a.add_argument("--threads-each", type=int, default=None, help="threads per process instead (the scaling)")
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
    sub.add_parser("mkl-threads").set_defaults(func=mkl_threads)
    t = sub.add_parser("table")
    t.set_defaults(func=table)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    args.func(args)


if __name__ == "__main__":
    main()
