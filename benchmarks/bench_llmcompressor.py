"""Reference rows from llm-compressor (vllm-project/llm-compressor, PyPI ``llmcompressor``):
its AWQ and GPTQ on the same calibration tokens awqkit uses, with wall time and peak memory,
saved as compressed-tensors checkpoints that awqkit's ``load_quantized`` evaluates.

llm-compressor is never a dependency of awqkit: it lives in its own virtual environment
outside the repository (``/work/venvs/llmc`` here), made by ``setup-venv``. Three steps:

    # 1. main environment: the calibration tokens, exactly as awqkit's pipeline makes them
    PYTHONPATH=python python3 benchmarks/bench_llmcompressor.py calib-tokens \\
        --model build/real-models/smollm2-135m --out build/compare/smollm2_calib_8192.npy
    # 2. once: the llm-compressor environment
    python3 benchmarks/bench_llmcompressor.py setup-venv --venv /work/venvs/llmc
    # 3. each configuration, serialised with the other timed runs
    flock /tmp/awqkit-bench.lock /work/venvs/llmc/bin/python benchmarks/bench_llmcompressor.py run \\
        --model build/real-models/smollm2-135m --tokens build/compare/smollm2_calib_8192.npy \\
        --method awq --bits 4 --group-size 64 --out build/compare/llmc-awq-w4g64
    # 4. main environment: each output loads in awqkit, and a WikiText-2 perplexity sanity check
    PYTHONPATH=python flock /tmp/awqkit-bench.lock python3 benchmarks/bench_llmcompressor.py eval \
        --model build/real-models/smollm2-135m --runs build/compare/llmc-*-w*g64 \
        --out benchmarks/results/bench_llmcompressor.json

Calibration tokens (``calib-tokens``): C4 validation documents 0-999 of
``shared/data/c4-validation/c4_validation_2k.jsonl`` written as a JSONL file (as
``bench_model.py`` / ``bench_families.py`` do), then ``awqkit.model.calibration.get_calib_blocks``
with the model's tokenizer, ``seqlen=512``, ``seed=42`` and ``n_samples`` the smallest number of
documents that gives at least 16 blocks; its first 16 rows (int64 [16, 512] = 8,192 tokens) are
saved. Because the documents are kept in one seeded order, the first 16 rows are the same for
every larger ``n_samples`` (e.g. the benchmarks' 64) as well: they are awqkit's first 8,192
calibration tokens.

Recipe (``run``): ``oneshot`` on a ``datasets.Dataset`` of exactly those rows (``input_ids``
and an all-ones ``attention_mask``; no re-tokenising; ``shuffle_calibration_samples=False``,
``num_calibration_samples=16``, ``max_seq_length=512``, ``batch_size=1``), the default
``pipeline="independent"`` (each modifier's own, the sequential pipeline here). The scheme:
one config group, ``targets=["Linear"]``, weights ``num_bits=bits, type="int",
symmetric=False, strategy="group", group_size=64`` (activations not quantized), ``ignore=
["lm_head"]``; the embeddings are not Linear and are not quantized either.

- gptq: ``GPTQModifier(config_groups=..., ignore=["lm_head"])``, library defaults otherwise,
  which in 0.14.0.1 are ``block_size=128``, ``dampening_frac=0.01``, and ``actorder`` unset,
  which resolves to ``"static"`` for a group strategy (static activation ordering: columns
  processed by descending Hessian diagonal, groups kept in natural order).
- awq: ``[AWQModifier(), QuantizationModifier(config_groups=..., ignore=["lm_head"])]``, the
  0.14 API: AWQ is a transform (the smoothing scales) and the quantization is a separate
  modifier (``llmcompressor.modifiers.awq.AWQModifier``, the old API, is a deprecated shim
  that splits into exactly these two). ``AWQModifier`` defaults: mappings inferred for
  ``LlamaForCausalLM`` (input_layernorm -> q/k/v, v_proj -> o_proj, post_attention_layernorm ->
  gate/up, up_proj -> down_proj), ``duo_scaling=True``, ``n_grid=20``. On SmolLM2 (grouped-query
  attention, v_proj 192 outputs vs o_proj 576 inputs) it logs "30 mappings were skipped due to
  incompatible shapes": v_proj -> o_proj is not smoothed in any layer. llm-compressor's AWQ has
  no clip search; the weights' scale/zero come from the ``memoryless_minmax`` observer (the
  QuantizationModifier default; GPTQ's config shows the same observer).

Saved with ``model.save_pretrained(out, save_compressed=True)`` (compressed-tensors
``pack-quantized``) plus the tokenizer; ``out/run.json`` has the versions, the wall time of the
``oneshot`` call alone and of the whole command, peak RSS (``ru_maxrss``), threads, the CPU.

Workaround: on a CPU-only machine llm-compressor 0.14.0.1 calls ``Tensor.pin_memory()`` on
cached intermediates (``IntermediatesCache.pin_memory`` from the AWQ modifier), which raises
without an accelerator. ``run`` replaces ``torch.Tensor.pin_memory`` by the identity before
importing llmcompressor (pinning only speeds host-to-device copies; there is no device here).

Environment that produced the committed numbers (``setup-venv``; pip freeze, key packages):
python 3.11.7, torch==2.13.0+cpu (the CPU wheel on disk, pinned through a constraints file in
every pip call), llmcompressor==0.14.0.1, compressed-tensors==0.19.0, transformers==5.17.0,
accelerate==1.15.0, datasets==5.2.0, auto-round==0.15.1, numpy==2.4.6, safetensors==0.8.0,
tokenizers==0.23.3. The main environment (awqkit) had transformers 5.24.0 and
compressed-tensors 0.20.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

N_BLOCKS = 16
SEQLEN = 512
SEED = 42
VENV_PACKAGES = ["llmcompressor==0.14.0.1"]
TORCH_PIN = "torch==2.13.0"


# --------------------------------------------------------------------------- calib-tokens
def calib_tokens(args) -> int:
    """Main environment: awqkit's own calibration blocks, first 16 rows, as int64 .npy."""
    import numpy as np
    from transformers import AutoTokenizer

    from awqkit.data import data_dir
    from awqkit.model.calibration import get_calib_blocks

    src = data_dir() / "c4-validation" / "c4_validation_2k.jsonl"
    lines = src.read_text(encoding="utf-8").splitlines()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    calib = out.parent / "c4_calib_0-999.jsonl"  # as bench_model.py / bench_families.py write it
    calib.write_text("\n".join(lines[:1000]) + "\n", encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(args.model)
    n = 1
    while True:  # the smallest n_samples that yields N_BLOCKS blocks
        try:
            blocks = get_calib_blocks(tok, str(calib), n_samples=n, seqlen=SEQLEN, seed=SEED)
        except ValueError:  # not even one block yet
            blocks = None
        if blocks is not None and blocks.shape[0] >= N_BLOCKS:
            break
        n += 1
    arr = blocks[:N_BLOCKS].numpy().astype(np.int64)
    # the same rows come first with the benchmarks' n_samples=64
    ref = get_calib_blocks(tok, str(calib), n_samples=64, seqlen=SEQLEN, seed=SEED)[:N_BLOCKS].numpy()
    assert (ref == arr).all(), "first 16 blocks differ between n_samples values"
    np.save(out, arr)
    meta = {"source": str(src), "documents": "0-999", "n_samples": n, "seqlen": SEQLEN, "seed": SEED,
            "shape": list(arr.shape), "dtype": str(arr.dtype), "tokens": int(arr.size),
            "same_as_first_16_of_n_samples_64": True}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta))
    return 0


# --------------------------------------------------------------------------- setup-venv
def setup_venv(args) -> int:
    venv = Path(args.venv)
    constraints = venv.parent / (venv.name + "-constraints.txt")
    cmds = [[args.python, "-m", "venv", str(venv)]]
    pip = [str(venv / "bin" / "pip"), "install", "-c", str(constraints)]
    cmds += [pip + [TORCH_PIN], pip + VENV_PACKAGES]
    venv.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text(TORCH_PIN + "\n")
    for c in cmds:
        print("+", " ".join(c), flush=True)
        subprocess.run(c, check=True)
    subprocess.run([str(venv / "bin" / "pip"), "freeze"], check=True)
    return 0


# --------------------------------------------------------------------------- run
def _cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _scheme(bits: int, group_size: int) -> dict:
    return {"group_0": {"targets": ["Linear"],
                        "weights": {"num_bits": bits, "type": "int", "symmetric": False,
                                    "strategy": "group", "group_size": group_size}}}


def run(args) -> int:
    t_start = time.perf_counter()
    import resource

    import numpy as np
    import torch

    # Workaround (see the module docstring): pin_memory() raises on a CPU-only machine.
    if not torch.accelerator.is_available():
        torch.Tensor.pin_memory = lambda self, *a, **k: self

    import compressed_tensors
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = np.load(args.tokens)
    assert tokens.dtype == np.int64 and tokens.shape == (N_BLOCKS, SEQLEN), (tokens.dtype, tokens.shape)
    ds = Dataset.from_dict({"input_ids": tokens.tolist(),
                            "attention_mask": np.ones_like(tokens).tolist()})

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    scheme = _scheme(args.bits, args.group_size)
    if args.method == "gptq":
        recipe = [GPTQModifier(config_groups=scheme, ignore=["lm_head"])]
    else:
        recipe = [AWQModifier(), QuantizationModifier(config_groups=scheme, ignore=["lm_head"])]

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=N_BLOCKS,
            max_seq_length=SEQLEN, shuffle_calibration_samples=False, batch_size=1)
    oneshot_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)
    total_s = time.perf_counter() - t_start
    info = {
        "tool": "llmcompressor", "llmcompressor": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "method": args.method, "bits": args.bits, "group_size": args.group_size, "symmetric": False,
        "calib_tokens": int(tokens.size), "calib_file": os.path.abspath(args.tokens),
        "recipe": [repr(m) for m in recipe],
        "oneshot_seconds": round(oneshot_s, 2), "total_seconds": round(total_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": torch.get_num_threads(), "cpu": _cpu_name(),
        # 1/5/15-minute load averages around the oneshot call: other processes (not under the
        # benchmark lock) share the 2 cores, and a load above ~1-2 says the time is inflated.
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "workarounds": ["torch.Tensor.pin_memory -> identity (no accelerator)"]
        if not torch.accelerator.is_available() else [],
    }
    (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "recipe"}, indent=1))
    return 0


# --------------------------------------------------------------------------- eval
def evaluate(args) -> int:
    """Main environment: each output loads through awqkit's ``load_quantized`` (compressed-tensors
    read by transformers, weights decompressed to float32) and its WikiText-2 perplexity (first
    ``--max-tokens`` tokens, 512-token windows) says it is not garbage; the float model too."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from awqkit.data import data_dir
    from awqkit.model.checkpoint import load_quantized
    from awqkit.model.perplexity import evaluate_perplexity

    text_path = Path(args.text) if args.text else data_dir() / "wikitext-2-raw" / "wiki.test.raw"
    text = text_path.read_text(encoding="utf-8")
    res = {"eval": {"text": str(text_path), "seqlen": SEQLEN, "max_tokens": args.max_tokens,
                    "threads": torch.get_num_threads()}}
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(args.model)
    res["float"] = {"path": os.path.abspath(args.model),
                    "wikitext2_ppl": evaluate_perplexity(model, tok, text, seqlen=SEQLEN, max_tokens=args.max_tokens)}
    print("float", res["float"], flush=True)
    del model
    res["runs"] = {}
    for d in args.runs:
        name = Path(d).name
        entry = {"path": os.path.abspath(d)}
        run_json = Path(d) / "run.json"
        if run_json.is_file():
            entry["run"] = json.loads(run_json.read_text())
        try:
            m = load_quantized(d)
            entry["loaded_as"] = type(m).__name__
            entry["wikitext2_ppl"] = evaluate_perplexity(m, AutoTokenizer.from_pretrained(d), text, seqlen=SEQLEN,
                                                         max_tokens=args.max_tokens)
            del m
        except Exception as e:  # recorded, the other runs go on
            entry["error"] = f"{type(e).__name__}: {e}"
        res["runs"][name] = entry
        print(name, {k: v for k, v in entry.items() if k != "run"}, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calib-tokens", help="main environment: awqkit's calibration tokens as .npy")
    c.add_argument("--model", required=True)
    c.add_argument("--out", required=True)
    v = sub.add_parser("setup-venv", help="make the llm-compressor virtual environment")
    v.add_argument("--venv", default="/work/venvs/llmc")
    v.add_argument("--python", default="python3.11")
    r = sub.add_parser("run", help="llm-compressor environment: one oneshot run")
    r.add_argument("--model", required=True)
    r.add_argument("--tokens", required=True)
    r.add_argument("--method", choices=["awq", "gptq"], required=True)
    r.add_argument("--bits", type=int, choices=[3, 4], required=True)
    r.add_argument("--group-size", type=int, default=64)
    r.add_argument("--out", required=True)
    e = sub.add_parser("eval", help="main environment: load each output with awqkit, WikiText-2 perplexity")
    e.add_argument("--model", required=True, help="the float model folder")
    e.add_argument("--runs", nargs="+", required=True, help="output folders of `run`")
    e.add_argument("--text", help="default: <data>/wikitext-2-raw/wiki.test.raw")
    e.add_argument("--max-tokens", type=int, default=8192)
    e.add_argument("--out", help="JSON with the run.json of each output, its perplexity and the float one")
    args = p.parse_args()
    return {"calib-tokens": calib_tokens, "setup-venv": setup_venv, "run": run, "eval": evaluate}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
