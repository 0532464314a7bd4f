"""llama.cpp's own quantizations of a real model, as the reference awqkit's GGUF export is compared with.

    python3 benchmarks/bench_gguf.py build-llama                      # sdist of llama-cpp-python -> build/llama.cpp
    python3 benchmarks/bench_gguf.py reference build/real-models/smollm2-135m --out build/gguf \\
        --calib build/gguf/c4_calib_0-999.jsonl                       # F32, Q4_0, Q4_0+imatrix, Q4_1(+imatrix), Q8_0
    python3 benchmarks/bench_gguf.py perplexity build/gguf/*.gguf --text $AWQKIT_DATA/wikitext-2-raw/wiki.test.raw
    python3 benchmarks/bench_gguf.py metadata build/gguf/smollm2-135m-f32.gguf --out benchmarks/results/smollm2_gguf_metadata.txt

llama.cpp is a tool of this benchmark only, never a dependency of awqkit. ``build-llama`` takes the
llama.cpp source vendored in the ``llama-cpp-python`` sdist on PyPI (``--version``, default 0.3.36;
found through PyPI's JSON API, its SHA-256 checked) and builds ``llama-quantize``,
``llama-imatrix``, ``llama-perplexity`` and ``llama-tokenize`` with cmake (Release,
``-DLLAMA_CURL=OFF -DGGML_NATIVE=ON``). The other subcommands find the tools in
``--llama-build``/bin and ``convert_hf_to_gguf.py`` (run with the source tree's own ``gguf-py``) in
``--llama-src``; the defaults are ``build/llama.cpp/{src,build}`` or ``$AWQKIT_LLAMA_SRC`` /
``$AWQKIT_LLAMA_BUILD``.

``reference`` converts the Hugging Face folder to GGUF (F32 by default), writes the calibration
text and quantizes:

- every quantized file gets ``--token-embedding-type q8_0 --output-tensor-type q8_0``, so the
  non-block tensors are the same in every file and sizes compare (a model with tied embeddings
  has no ``output.weight``: llama-quantize then gives ``token_embd.weight`` the
  ``--token-embedding-type``, or without one the output type, and writes no output tensor);
- the calibration text is made of exactly the documents awqkit's ``get_calib_blocks`` keeps
  (same file, ``--n-samples``, ``--seqlen``, seed: the shuffled order, empty and over-long
  documents dropped, the same tokenizer), stripped and concatenated with nothing between them,
  as awqkit concatenates their token ids. llama-imatrix tokenizes that text as one stream and cuts
  it into ``--seqlen``-token chunks (the tail dropped), as awqkit cuts its blocks; the few places
  where the last token of a document and the first of the next merge into one token are counted
  (``boundary_merges``) and the llama.cpp tokenization is compared with the transformers one
  (``llama-tokenize``);
- ``llama-imatrix -c SEQLEN`` on it, then ``llama-quantize --imatrix`` for ``--imatrix-types``.
  With an imatrix, llama-quantize's Q4_0 is not uniform: ``ffn_down`` of the first n_layer/8
  blocks becomes Q4_1 (a guard in ``llama_tensor_get_type_impl``; without an imatrix every block
  tensor is Q4_0). ``--pure-imatrix-types`` adds files made with ``--pure``, all block tensors
  of the one type (``--token-embedding-type`` still applies), the like-for-like reference for a
  uniform 4-bit export.

``perplexity`` runs ``llama-perplexity`` (``-c 512``: each chunk of 512 tokens is evaluated
alone and only its second half is scored, llama.cpp's protocol, not awqkit's
``evaluate_perplexity`` which scores every token of each window) on the first ``--chunks``
chunks of the text and records the final estimate with its +/- error, the file size, the tensor
types and the wall time. ``metadata`` dumps a GGUF's key/values and tensors (for the GGUF writer).

Every result is printed and appended as a JSON line to ``benchmarks/results/bench_gguf.jsonl``
with the CPU (lscpu), the commit and the command.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "bench_gguf.jsonl"
LLAMA_SRC = Path(os.environ.get("AWQKIT_LLAMA_SRC", ROOT / "build" / "llama.cpp" / "src"))
LLAMA_BUILD = Path(os.environ.get("AWQKIT_LLAMA_BUILD", ROOT / "build" / "llama.cpp" / "build"))
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-tokenize")
SDIST_VERSION = "0.3.36"


# --------------------------------------------------------------------------- recording

def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return "?"


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _record(entry: dict) -> dict:
    entry.update({"cpu": _cpu(), "commit": _commit(), "command": " ".join(sys.argv),
                  "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)
    return entry


def _run(cmd: list, log: Path | None = None, env: dict | None = None) -> tuple[float, str]:
    """Run ``cmd`` (its output into ``log`` too); its wall time and output. Fails loudly."""
    cmd = [str(c) for c in cmd]
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                          env={**os.environ, **(env or {})})
    dt = time.perf_counter() - t0
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("$ " + " ".join(cmd) + "\n" + proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return dt, proc.stdout


def _tool(build: Path, name: str) -> Path:
    p = Path(build) / "bin" / name
    if not p.is_file():
        raise SystemExit(f"{p} not found: run `bench_gguf.py build-llama` (or pass --llama-build)")
    return p


# --------------------------------------------------------------------------- build-llama

def _fetch_sdist(version: str, dest: Path) -> Path:
    """The llama-cpp-python sdist of ``version`` from PyPI (JSON API), SHA-256 checked.

    Where the per-version JSON (``/pypi/<name>/<version>/json``) is not served (404 on some
    mirrors), the project JSON's ``releases[version]`` is used; its URLs may be relative to the
    JSON's address (``../../packages/...``)."""
    from urllib.error import HTTPError
    from urllib.parse import urljoin

    api = f"https://pypi.org/pypi/llama-cpp-python/{version}/json"
    try:
        with urllib.request.urlopen(api, timeout=60) as r:
            files = json.load(r)["urls"]
    except HTTPError:
        api = "https://pypi.org/pypi/llama-cpp-python/json"
        with urllib.request.urlopen(api, timeout=60) as r:
            files = json.load(r)["releases"].get(version, [])
    sdists = [u for u in files if u.get("packagetype") == "sdist"]
    if not sdists:
        raise SystemExit(f"llama-cpp-python {version}: no sdist on PyPI")
    u = sdists[0]
    url = urljoin(api, u["url"])
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / u["filename"]
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != u["digests"]["sha256"]:
        print(f"downloading {url}", flush=True)
        tmp = path.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=600) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        if hashlib.sha256(tmp.read_bytes()).hexdigest() != u["digests"]["sha256"]:
            raise SystemExit(f"{url}: SHA-256 mismatch")
        tmp.rename(path)
    return path


def _unpack_llama(sdist: Path, src: Path) -> None:
    """vendor/llama.cpp of the sdist into ``src``."""
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        prefix = f"{top}/vendor/llama.cpp/"
        members = []
        for m in tf.getmembers():
            if m.name.startswith(prefix) and len(m.name) > len(prefix):
                m.name = m.name[len(prefix):]
                members.append(m)
        if not members:
            raise SystemExit(f"{sdist}: no vendor/llama.cpp in it")
        src.mkdir(parents=True, exist_ok=True)
        tf.extractall(src, members=members, filter="data")


def build_llama(args) -> None:
    src, build = Path(args.src), Path(args.build)
    sdist = None
    if not (src / "CMakeLists.txt").is_file():
        sdist = _fetch_sdist(args.version, src.parent)
        _unpack_llama(sdist, src)
    targets = list(args.targets)
    missing = [t for t in targets if not (build / "bin" / t).is_file()]
    entry = {"step": "build-llama", "src": str(src), "build": str(build), "sdist": str(sdist) if sdist else None,
             "sdist_version": args.version, "targets": targets}
    if not missing and not args.force:
        _record({**entry, "skipped": "every target already built (--force rebuilds)"})
        return
    t_cfg, _ = _run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                     "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                     "-DLLAMA_BUILD_SERVER=OFF"], log=build.parent / "cmake.log")
    t_bld, _ = _run(["cmake", "--build", build, "-j", str(args.jobs), "--target", *targets],
                    log=build.parent / "build.log")
    _, ver = _run([_tool(build, "llama-quantize"), "--version"])
    _record({**entry, "configure_s": round(t_cfg, 1), "build_s": round(t_bld, 1), "jobs": args.jobs,
             "llama_version": ver.strip().splitlines()[-1] if ver.strip() else "?"})


# --------------------------------------------------------------------------- reference

def _calibration_module():
    """awqkit's calibration module, loaded alone (no compiled extension needed)."""
    spec = importlib.util.spec_from_file_location("awqkit_calibration", ROOT / "python" / "awqkit" / "model" / "calibration.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def calibration_text(model_dir: Path, calib: str, n_samples: int, seqlen: int, seed: int) -> tuple[str, dict, list[int]]:
    """The documents awqkit's ``get_calib_blocks`` keeps, concatenated; how their tokens compare; the
    transformers tokenization of the concatenation."""
    import numpy as np
    from transformers import AutoTokenizer

    cal = _calibration_module()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    blocks = cal.get_calib_blocks(tok, calib, n_samples=n_samples, seqlen=seqlen, seed=seed)
    docs = cal.load_calibration_texts(calib)
    order = np.random.default_rng(seed).permutation(len(docs))
    kept: list[str] = []
    ids: list[list[int]] = []
    for i in order:  # the selection of get_calib_blocks, step by step
        line = docs[i].strip()
        if not line:
            continue
        t = tok.encode(line)
        if len(t) > seqlen or not t:
            continue
        kept.append(line)
        ids.append(t)
        if len(kept) == n_samples:
            break
    flat = [t for s in ids for t in s]
    assert flat[: blocks.numel()] == blocks.flatten().tolist(), "selection differs from get_calib_blocks"
    text = "".join(kept)
    joined = tok.encode(text)
    info = {"documents": len(kept), "awqkit_tokens": len(flat), "awqkit_blocks": int(blocks.shape[0]),
            "seqlen": seqlen, "seed": seed, "n_samples": n_samples, "text_chars": len(text),
            "hf_tokens_of_text": len(joined), "boundary_merges": len(flat) - len(joined),
            "first_diff_token": next((k for k, (a, b) in enumerate(zip(joined, flat)) if a != b), None)}
    return text, info, joined


def _llama_tokens(build: Path, model: Path, text_file: Path) -> list[int] | None:
    tool = Path(build) / "bin" / "llama-tokenize"
    if not tool.is_file():
        return None
    _, out = _run([tool, "-m", model, "-f", text_file, "--ids", "--log-disable", "--no-bos", "--no-parse-special"])
    m = re.findall(r"\[[\d, ]*\]", out)
    return json.loads(m[-1]) if m else None


def _types(path: Path) -> dict:
    """{tensor type: [count, bytes]} and the file type of a GGUF."""
    import gguf

    r = gguf.GGUFReader(str(path))
    c: Counter = Counter()
    b: Counter = Counter()
    for t in r.tensors:
        c[t.tensor_type.name] += 1
        b[t.tensor_type.name] += int(t.n_bytes)
    ft = r.fields.get("general.file_type")
    names = [t.name for t in r.tensors]
    return {"tensor_types": {k: [c[k], b[k]] for k in sorted(c)}, "n_tensors": len(r.tensors),
            "file_type": int(ft.contents()) if ft is not None else None,
            "token_embd": next((t.tensor_type.name for t in r.tensors if t.name == "token_embd.weight"), None),
            "has_output_weight": "output.weight" in names}


def reference(args) -> None:
    model_dir, out = Path(args.model_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or model_dir.name
    src, build = Path(args.llama_src), Path(args.llama_build)
    base = out / f"{name}-{args.outtype}.gguf"
    common = {"model": str(model_dir), "name": name}

    if not base.is_file() or args.force:
        conv = src / "convert_hf_to_gguf.py"
        dt, _ = _run([sys.executable, conv, model_dir, "--outtype", args.outtype, "--outfile", base],
                     log=out / "logs" / f"convert-{args.outtype}.log", env={"PYTHONPATH": str(src / "gguf-py")})
        _record({"step": "convert", **common, "file": str(base), "outtype": args.outtype, "seconds": round(dt, 1),
                 "size_bytes": base.stat().st_size, **_types(base)})

    # calibration text: the documents awqkit calibrates on
    text, info, hf_ids = calibration_text(model_dir, args.calib, args.n_samples, args.seqlen, args.seed)
    # per model: the documents kept depend on the tokenizer (over-long ones are dropped)
    calib_txt = out / f"{name}-calib_{Path(args.calib).stem}_n{args.n_samples}_s{args.seqlen}_seed{args.seed}.txt"
    calib_txt.write_text(text, encoding="utf-8")
    ll = _llama_tokens(build, base, calib_txt)
    if ll is not None:
        info["llama_tokens_of_text"] = len(ll)
        info["llama_vs_hf_tokens_equal"] = ll == hf_ids
    info["imatrix_chunks"] = (info.get("llama_tokens_of_text") or info["hf_tokens_of_text"]) // args.seqlen

    imatrix = out / f"{name}-imatrix-{calib_txt.stem}.gguf"
    if args.imatrix_types and (not imatrix.is_file() or args.force):
        dt, log = _run([_tool(build, "llama-imatrix"), "-m", base, "-f", calib_txt, "-o", imatrix, "-c", args.seqlen,
                        "-b", args.seqlen, "-t", args.threads], log=out / "logs" / "imatrix.log")
        m = re.search(r"computing over (\d+) chunks", log) or re.search(r"(\d+) chunks", log)
        fin = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", log)
        _record({"step": "imatrix", **common, "file": str(imatrix), "calib": str(args.calib),
                 "calib_text": str(calib_txt), **info, "chunks_processed": int(m.group(1)) if m else None,
                 "calib_ppl": float(fin.group(1)) if fin else None, "seconds": round(dt, 1), "threads": args.threads})

    jobs = ([(t, False, False) for t in args.types] + [(t, True, False) for t in args.imatrix_types]
            + [(t, True, True) for t in args.pure_imatrix_types])
    for qtype, use_im, pure in jobs:
        dst = out / f"{name}-{qtype.lower()}{'-imatrix' if use_im else ''}{'-pure' if pure else ''}.gguf"
        if dst.is_file() and not args.force:
            continue
        cmd = [_tool(build, "llama-quantize")]
        if use_im:
            cmd += ["--imatrix", imatrix]
        if pure:
            cmd += ["--pure"]
        cmd += ["--token-embedding-type", args.embd_type, "--output-tensor-type", args.embd_type, base, dst, qtype,
                args.threads]
        dt, log = _run(cmd, log=out / "logs" / f"quantize-{dst.stem}.log")
        _record({"step": "quantize", **common, "file": str(dst), "type": qtype, "imatrix": str(imatrix) if use_im else None, "pure": pure,
                 "token_embedding_type": args.embd_type, "output_tensor_type": args.embd_type,
                 "seconds": round(dt, 1), "size_bytes": dst.stat().st_size, **_types(dst)})


# --------------------------------------------------------------------------- perplexity

def perplexity(args) -> None:
    tool = _tool(Path(args.llama_build), "llama-perplexity")
    rows = []
    for f in args.gguf:
        f = Path(f)
        log_file = Path(args.logs) / f"ppl-{f.stem}-c{args.ctx}-n{args.chunks}.log"
        dt, log = _run([tool, "-m", f, "-f", args.text, "-c", args.ctx, "--chunks", args.chunks, "-t", args.threads],
                       log=log_file)
        fin = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", log)
        n = re.search(r"perplexity over (\d+) chunks", log)
        if not fin:
            raise SystemExit(f"{f}: no final estimate in {log_file}")
        rows.append(_record({"step": "perplexity", "file": str(f), "text": str(args.text), "ctx": args.ctx,
                             "chunks": int(n.group(1)) if n else args.chunks, "scored_tokens_per_chunk": args.ctx - args.ctx // 2,
                             "threads": args.threads, "ppl": float(fin.group(1)), "ppl_err": float(fin.group(2)),
                             "size_bytes": f.stat().st_size, **_types(f), "seconds": round(dt, 1)}))
    print("\n| file | PPL | +/- | size (bytes) | tensor types | time (s) |\n|---|---|---|---|---|---|")
    for r in rows:
        types = ", ".join(f"{k}×{v[0]}" for k, v in r["tensor_types"].items())
        print(f"| {Path(r['file']).name} | {r['ppl']:.4f} | {r['ppl_err']:.4f} | {r['size_bytes']} | {types} | {r['seconds']} |")


def kl_divergence(args) -> None:
    """llama-perplexity's KL divergence of each file's next-token distribution from the base
    file's (the full-precision model), on the same chunks: more sensitive than perplexity, and
    paired token by token."""
    tool = _tool(Path(args.llama_build), "llama-perplexity")
    base = Path(args.logs) / f"kld-base-{Path(args.base).stem}-c{args.ctx}-n{args.chunks}.bin"
    base.parent.mkdir(parents=True, exist_ok=True)
    if not base.exists():
        _run([tool, "-m", args.base, "-f", args.text, "-c", args.ctx, "--chunks", args.chunks, "-t", args.threads,
              "--kl-divergence-base", base], log=base.with_suffix(".log"))
    for f in args.gguf:
        f = Path(f)
        log_file = Path(args.logs) / f"kld-{f.parent.name}-{f.stem}-c{args.ctx}-n{args.chunks}.log"
        dt, log = _run([tool, "-m", f, "--kl-divergence-base", base, "--kl-divergence", "-t", args.threads],
                       log=log_file)
        def grab(label, text=log):
            m = re.search(rf"{label}\s*:\s*([-\d.]+)\s*±\s*([\d.]+)", text)
            return (float(m.group(1)), float(m.group(2))) if m else (None, None)
        ppl_ratio = re.search(r"Mean\s+PPL\(Q\)/PPL\(base\)\s*:\s*([\d.]+)\s*±\s*([\d.]+)", log)
        kld, kld_err = grab("Mean    KLD")
        same, same_err = grab("Same top p")
        ppl_q, _ = grab("Mean PPL\\(Q\\)")
        _record({"step": "kl_divergence", "file": str(f), "base": str(args.base), "text": str(args.text), "ctx": args.ctx,
                 "chunks": args.chunks, "mean_kld": kld, "mean_kld_err": kld_err, "same_top_p_pct": same,
                 "same_top_p_err": same_err, "ppl_q": ppl_q,
                 "ppl_ratio": float(ppl_ratio.group(1)) if ppl_ratio else None,
                 "size_bytes": f.stat().st_size, "seconds": round(dt, 1)})


# --------------------------------------------------------------------------- metadata

def _fields(r) -> dict[str, str]:
    import gguf

    out = {}
    for k, f in r.fields.items():
        types = "/".join(gguf.GGUFValueType(t).name for t in f.types)
        if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
            n = len(f.data)
            head = [f.contents(i) for i in range(min(5, n))]
            out[k] = f"[{types}] len={n} first={head!r}" if n > 5 else f"[{types}] = {f.contents()!r}"
        else:
            out[k] = f"[{types}] = {f.contents()!r}"
    return out


def _tensor_lines(r, all_blocks: bool = False) -> list[str]:
    blk = re.compile(r"^blk\.(\d+)\.")
    lines, shown = [], 0
    for t in r.tensors:
        m = blk.match(t.name)
        if m and m.group(1) != "0" and not all_blocks:
            continue
        shown += 1
        lines.append(f"{t.name:28s} {t.tensor_type.name:5s} {[int(x) for x in t.shape]} {int(t.n_bytes)}")
    lines.append(f"# ... and blk.1..blk.N with the same names ({len(r.tensors) - shown} tensors not shown)")
    return lines


def metadata(args) -> None:
    """Every key/value (long arrays: their length and first 5 entries) and the tensors of block 0
    and outside the blocks of the first GGUF; of each further GGUF, what differs from the first."""
    from importlib.metadata import version

    import gguf

    first = gguf.GGUFReader(args.gguf[0])
    f0 = _fields(first)
    lines = [f"# {args.gguf[0]} ({Path(args.gguf[0]).stat().st_size} bytes), read with gguf {version('gguf')} (GGUFReader)",
             f"# {len(first.fields)} fields (the first 3, GGUF.*, are the header), {len(first.tensors)} tensors,"
             f" tensor data from byte {first.data_offset}, alignment {first.alignment}", ""]
    lines += [f"{k} {v}" for k, v in f0.items()]
    lines += ["", "# tensors in file order: name, type, shape as GGUF stores it (ne0 first = the row length), bytes"]
    lines += _tensor_lines(first)
    for path in args.gguf[1:]:
        r = gguf.GGUFReader(path)
        f = _fields(r)
        lines += ["", f"# ---- {path} ({Path(path).stat().st_size} bytes, {len(r.tensors)} tensors): differences from the first file"]
        lines += [f"+ {k} {v}" for k, v in f.items() if k not in f0]
        lines += [f"- {k} {v}" for k, v in f0.items() if k not in f]
        lines += [f"~ {k} {v}   (first file: {f0[k]})" for k, v in f.items() if k in f0 and f0[k] != v]
        lines += _tensor_lines(r)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)


def awqkit_export(args) -> None:
    """awqkit's GGUF of the same model with the same calibration documents (``awqkit quantize
    --format gguf``), each variant into ``--out/<name>-awqkit-<variant>[-q4_1|-q8_0]/``."""
    variants = {"rtn": (["--method", "rtn"], {}), "awq": ([], {"gguf_refit": False}), "awq-refit": ([], {})}
    for v in args.variants:
        extra, cfg = variants[v]
        gtype = "q8_0" if args.bits == 8 else "q4_1" if args.zero_point else "q4_0"
        out = Path(args.out) / (f"{args.name}-awqkit-{v}" + ("" if gtype == "q4_0" else f"-{gtype}"))
        cmd = [sys.executable, "-m", "awqkit", "quantize", args.model_dir, "--out", out, "--format", "gguf",
               "--overwrite", "--restart", "--calib", args.calib, "--n-samples", args.n_samples, "--seqlen", args.seqlen,
               *extra]
        if args.bits == 8:
            cmd += ["--bits", "8"]
        elif args.zero_point:
            cmd += ["--zero-point"]
        if cfg:
            cfg_path = Path(args.out) / f"{args.name}-awqkit-{v}.json"
            cfg_path.write_text(json.dumps(cfg))
            cmd += ["--config", cfg_path]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
        dt, log = _run(cmd, env=env)
        files = sorted(out.glob("*.gguf"))
        _record({"step": "awqkit", "variant": v, "name": args.name, "file": str(files[0]), "calib": args.calib,
                 "n_samples": args.n_samples, "seqlen": args.seqlen, "seconds": round(dt, 1),
                 "size_bytes": files[0].stat().st_size})


def same_tensors(args) -> None:
    """Whether two GGUF files hold the same tensors, byte for byte (names, types, data)."""
    import gguf
    import numpy as np

    a, b = gguf.GGUFReader(args.a), gguf.GGUFReader(args.b)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    differ = sorted(n for n in set(ta) | set(tb) if n not in ta or n not in tb or ta[n].tensor_type != tb[n].tensor_type
                    or not np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)))
    _record({"step": "same_tensors", "a": args.a, "b": args.b, "tensors": len(ta), "differing": differ[:20],
             "identical": not differ})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build-llama", help="llama.cpp from the llama-cpp-python sdist, built with cmake")
    b.add_argument("--src", default=str(LLAMA_SRC), help="llama.cpp source tree (unpacked from the sdist if absent)")
    b.add_argument("--build", default=str(LLAMA_BUILD))
    b.add_argument("--version", default=SDIST_VERSION, help="llama-cpp-python version whose vendor/llama.cpp is built")
    b.add_argument("--targets", nargs="+", default=list(TOOLS))
    b.add_argument("--jobs", type=int, default=2)
    b.add_argument("--force", action="store_true", help="build even if every target exists")
    b.set_defaults(fn=build_llama)

    r = sub.add_parser("reference", help="GGUF F32 + llama.cpp quantizations (plain and imatrix)")
    r.add_argument("model_dir")
    r.add_argument("--out", required=True)
    r.add_argument("--calib", required=True, help="calibration documents (.jsonl/.txt as awqkit reads them)")
    r.add_argument("--n-samples", type=int, default=64, help="documents (benchmarks' AWQ setting; AWQConfig's default is 128)")
    r.add_argument("--seqlen", type=int, default=512)
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16"])
    r.add_argument("--types", nargs="*", default=["Q4_0", "Q4_1", "Q8_0"], help="plain quantizations")
    r.add_argument("--imatrix-types", nargs="*", default=["Q4_0", "Q4_1"], help="quantizations with the imatrix")
    r.add_argument("--pure-imatrix-types", nargs="*", default=["Q4_0"],
                   help="with the imatrix and --pure (Q4_0 with an imatrix otherwise puts ffn_down of the first n_layer/8 blocks in Q4_1)")
    r.add_argument("--embd-type", default="q8_0", help="--token-embedding-type and --output-tensor-type of every file")
    r.add_argument("--name", help="file name prefix (default: the folder's name)")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--force", action="store_true", help="redo files that exist")
    r.set_defaults(fn=reference)

    p = sub.add_parser("perplexity", help="llama-perplexity on each file")
    p.add_argument("gguf", nargs="+")
    p.add_argument("--text", required=True)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--chunks", type=int, default=40, help="~3 min for a 135M F32 model on 2 threads")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--logs", default=str(ROOT / "build" / "gguf" / "logs"))
    p.set_defaults(fn=perplexity)

    a = sub.add_parser("awqkit", help="awqkit's GGUF exports of the model on the same calibration documents")
    a.add_argument("model_dir")
    a.add_argument("--out", required=True)
    a.add_argument("--calib", required=True)
    a.add_argument("--n-samples", type=int, default=64)
    a.add_argument("--seqlen", type=int, default=512)
    a.add_argument("--bits", type=int, default=4, choices=[4, 8])
    a.add_argument("--zero-point", action="store_true", help="Q4_1 instead of Q4_0")
    a.add_argument("--variants", nargs="+", default=["rtn", "awq", "awq-refit"], choices=["rtn", "awq", "awq-refit"])
    a.add_argument("--name", default="model")
    a.set_defaults(fn=awqkit_export)

    c = sub.add_parser("same-tensors", help="whether two GGUF files hold the same tensors byte for byte")
    c.add_argument("a")
    c.add_argument("b")
    c.set_defaults(fn=same_tensors)

    k = sub.add_parser("kld", help="KL divergence of each file from a base file (llama-perplexity)")
    k.add_argument("base", help="the full-precision GGUF")
    k.add_argument("gguf", nargs="+")
    k.add_argument("--text", required=True)
    k.add_argument("--ctx", type=int, default=512)
    k.add_argument("--chunks", type=int, default=40)
    k.add_argument("--threads", type=int, default=2)
    k.add_argument("--logs", default=str(ROOT / "build" / "gguf" / "logs"))
    k.add_argument("--llama-build", default=str(LLAMA_BUILD))
    k.set_defaults(fn=kl_divergence)

    m = sub.add_parser("metadata", help="dump a GGUF's key/values and first-block tensors")
    m.add_argument("gguf", nargs="+", help="the first is dumped in full, the others as differences from it")
    m.add_argument("--out")
    m.set_defaults(fn=metadata)

    for s in (r, p):
        s.add_argument("--llama-build", default=str(LLAMA_BUILD))
    r.add_argument("--llama-src", default=str(LLAMA_SRC))
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
