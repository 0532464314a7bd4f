"""AWQ variants on one real model of ``real_models.py`` (the same calibration and evaluation as
``bench_families.py``): one JSON line per variant with its WikiText-2 perplexity and the report's
summary. Used to find what makes AWQ lose to plain rounding on Qwen2.5-Coder-0.5B.

    flock /tmp/awqkit-bench.lock env AWQKIT_DATA_DIR=../shared/data PYTHONPATH=python \\
      python3 benchmarks/bench_awq_variants.py qwen2.5-coder-0.5b '{"clip": false}' '{"propagation": "quantized"}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_families  # noqa: E402
import real_models  # noqa: E402


def main(name: str, variants: list[dict]) -> None:
    import awqkit
    from awqkit.model import evaluate_perplexity, load_model

    path = real_models.prepare(name)
    calib, _ = bench_families.c4_split(Path(real_models.DEFAULT_CACHE) / "_text")
    text = real_models.wiki_text()
    for kw in variants:
        model, tok = load_model(str(path))
        t0 = time.perf_counter()
        cfg = awqkit.AWQConfig(bits=4, group_size=64, n_samples=64, seqlen=512, **kw)
        model, report = awqkit.quantize_model(model, cfg, calib=calib, tokenizer=tok)
        seconds = time.perf_counter() - t0
        ppl = evaluate_perplexity(model, tok, text, seqlen=512, max_tokens=8192)
        print(json.dumps({"model": name, "variant": kw, "wikitext2": ppl, "summary": report.summary(),
                          "quantize_seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [json.loads(v) for v in sys.argv[2:]] or [{}])
