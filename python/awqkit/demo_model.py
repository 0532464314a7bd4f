"""The main job on its embedded default: AWQ on the real stories260K Llama, end to end.

Size first (footprint), then quantize with calibration text, save an AutoAWQ "gemm"
checkpoint, reload it on the fused INT4 kernel, generate, and compare perplexity of full
precision, plain rounding (RTN) and AWQ on held-out TinyStories text.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from .config import AWQConfig
from .footprint import estimate_footprint

PROMPT = "Once upon a time"


def run_model_demo(data: Path, out_dir: Path, group_size: int = 32, overwrite: bool = False) -> None:
    from transformers.utils import logging as hf_logging

    from .model import check_output_folder, evaluate_perplexity, load_model, load_quantized, quantize_model, rtn_quantize_model, save_quantized

    hf_logging.set_verbosity_error()  # the demo's own lines are the story; keep library chatter out
    hf_logging.disable_progress_bar()

    # A rerun replaces the demo's own previous checkpoint; anything else in out_dir needs --overwrite.
    replace = overwrite or (out_dir / "awq_report.json").is_file()
    check_output_folder(out_dir, replace)
    model_dir = data / "stories260K-hf"
    calib = data / "c4-validation" / "c4_validation_2k.jsonl"
    eval_text = (data / "tinystories" / "tinystories_sample.txt").read_text()
    cfg = AWQConfig(bits=4, group_size=group_size, n_samples=64, seqlen=256)

    fp = estimate_footprint(str(model_dir), bits=cfg.bits, group_size=cfg.group_size)
    print(f"awqkit demo: AWQ {cfg.bits}-bit, group {cfg.group_size} on {model_dir}")
    print(f"footprint: {fp.bytes_before / 1e6:.2f} MB -> {fp.bytes_after / 1e6:.2f} MB "
          f"({fp.quantized_params:,} of {fp.params:,} parameters quantizable in the AutoAWQ gemm layout)")

    t0 = time.perf_counter()
    fp_model, tok = load_model(str(model_dir))
    model, report = quantize_model(copy.deepcopy(fp_model), cfg, calib=str(calib), tokenizer=tok)
    out = save_quantized(model, str(out_dir), tokenizer=tok, report=report, overwrite=replace)
    print(f"quantized {report.quantized_layers} linears in {time.perf_counter() - t0:.1f} s "
          f"(calibration: {report.calib_tokens} tokens of C4); kept in full precision: {len(report.not_converted)} "
          f"(their shapes do not fit the 4-bit gemm layout, see {out}/awq_report.json)")
    s = report.summary()
    print(f"mean AWQ/RTN output loss over searched mappings: {s['mean_awq_over_rtn']:.3f}; "
          f"mean clip loss after/before: {s['mean_clip_after_over_before']:.3f}")

    qmodel, qtok = load_quantized(out, return_tokenizer=True)
    ids = qtok(PROMPT, return_tensors="pt").input_ids
    text = qtok.decode(qmodel.generate(ids, max_new_tokens=40, do_sample=False)[0], skip_special_tokens=True)
    print(f"\nreloaded from {out} (fused INT4 kernel), greedy continuation:\n  {text!r}\n")

    rtn_model, _ = rtn_quantize_model(copy.deepcopy(fp_model), cfg)
    rows = [("full precision (fp32)", fp_model), ("RTN (plain rounding)", rtn_model), ("AWQ (reloaded checkpoint)", qmodel)]
    print(f"perplexity on TinyStories sample ({len(eval_text):,} chars, seqlen 128):")
    ppl = {}
    for name, m in rows:
        ppl[name] = evaluate_perplexity(m, tok, eval_text, seqlen=128)
        print(f"  {name:<28}{ppl[name]:8.3f}")
    fp_, rtn_, awq_ = ppl.values()
    if rtn_ > fp_:
        print(f"AWQ closes {100 * (rtn_ - awq_) / (rtn_ - fp_):.0f}% of the gap between RTN and full precision")
