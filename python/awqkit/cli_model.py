"""``awqkit quantize``, ``awqkit eval``, ``awqkit footprint`` and ``awqkit compare``: the model subcommands.

``add_model_commands(subparsers)`` registers them on the main parser (see cli.py). Each
handler returns an exit code and writes results to stdout (the command's output) while
progress goes through logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .cli import group_size_arg, positive_int
from .config import AWQConfig
from .formats import FORMATS
from .quant_methods import METHODS

__all__ = ["add_model_commands"]

log = logging.getLogger(__name__)


def _config_from_args(args: argparse.Namespace) -> AWQConfig:
    d = AWQConfig.from_json(args.config).to_dict() if args.config else AWQConfig().to_dict()
    fmt = getattr(args, "format", None)
    if fmt is not None:
        d["format"] = fmt
        if fmt == "gguf" and getattr(args, "group_size", None) is None:
            d["group_size"] = 32  # GGUF's block
        if fmt == "gguf" and getattr(args, "zero_point", None) is None:
            d["zero_point"] = False  # Q4_0 (llama.cpp's most used type); --zero-point: Q4_1
    for key in ("bits", "group_size", "zero_point", "n_samples", "seqlen", "n_grid", "propagation", "inspect"):
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    if args.no_clip:
        d["clip"] = False
    if args.exclude:
        d["modules_to_not_convert"] = sorted(set(d["modules_to_not_convert"]) | set(args.exclude))
    return AWQConfig.from_dict(d)


def _check_model_folder(path: str) -> None:
    """A clear error before torch is loaded, instead of transformers' hub lookup of a typo."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path} does not exist: pass a folder holding config.json and the weights")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json: pass a Hugging Face model folder or a checkpoint folder")
    if not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(path)):
        raise FileNotFoundError(f"{path} holds no weights (*.safetensors): pass a folder with the model's weights")


def _cmd_quantize(args: argparse.Namespace) -> int:
    from .formats import format_named
    from .model import check_output_folder

    cfg = _config_from_args(args)
    problem = format_named(cfg.format).config_problem(cfg)
    if problem:
        raise ValueError(problem)
    _check_model_folder(args.model)
    check_output_folder(args.out, args.overwrite)  # before the run, not after it
    from .footprint import estimate_footprint

    fp = estimate_footprint(args.model, bits=cfg.bits, group_size=cfg.group_size)  # size before quality
    log.info("estimated weights: %.1f MiB -> %.1f MiB (%d of %d parameters quantized)",
             fp.bytes_before / 2**20, fp.bytes_after / 2**20, fp.quantized_params, fp.params)
    if args.in_memory and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--in-memory runs in one process: a distributed run (torchrun) streams the model folder")
    if args.in_memory:
        from .model import load_model, quantize_model, save_quantized

        model, tok = load_model(args.model)
        model, report = quantize_model(model, cfg, calib=args.calib, tokenizer=tok, method=args.method)
        save_quantized(model, args.out, tokenizer=tok, report=report, overwrite=args.overwrite)
    else:
        from .model import quantize_to_checkpoint
        from .model.distributed import RankFailure, from_environment

        # Under torchrun (WORLD_SIZE > 1) the run is split over the ranks; rank 0 writes and reports.
        group = from_environment()
        # The memory plan, a resume and the result are worth a line each without -v; from
        # rank 0 only (the others would repeat its warnings).
        logging.getLogger("awqkit.model.streaming").setLevel(logging.INFO)
        if group.rank != 0:
            logging.getLogger("awqkit").setLevel(logging.ERROR)
        try:
            report = quantize_to_checkpoint(args.model, args.out, cfg, calib=args.calib, method=args.method,
                                            overwrite=args.overwrite, restart=args.restart,
                                            memory_check=args.memory_check, activations=args.activations,
                                            group=group)
        except KeyboardInterrupt:
            print(f"awqkit: interrupted; the finished blocks are kept in {os.path.abspath(args.out)}.partial: "
                  "run the same command again to resume", file=sys.stderr)
            return 130
        except RankFailure as e:  # another rank died: its message, not a traceback of ours
            print(f"awqkit: error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
            return 1
        finally:
            group.close()  # after a RankFailure it ends the process (exit code 1)
        if group.rank != 0:
            return 0
    s = report.summary()
    print(json.dumps({"out": args.out, "quantized_layers": report.quantized_layers,
                      "not_converted": len(report.not_converted), "seconds": round(report.total_seconds, 2),
                      "peak_rss_mb": round(report.peak_rss_mb, 1),
                      **{k: None if v is None else round(v, 4) for k, v in s.items()}}, allow_nan=False))
    return 0


def _is_gguf(path: str) -> bool:
    return path.endswith(".gguf") and os.path.isfile(path) or \
        os.path.isdir(path) and any(f.endswith(".gguf") for f in os.listdir(path))


def _is_quantized_dir(path: str) -> bool:
    """A checkpoint awqkit writes (AWQ gemm, compressed-tensors, GGUF): load_quantized reads it."""
    if _is_gguf(path):
        return True
    try:
        with open(os.path.join(path, "config.json")) as f:
            method = json.load(f).get("quantization_config", {}).get("quant_method")
        return method in ("awq", "compressed-tensors")
    except (OSError, ValueError):
        return False


def _cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not _is_gguf(args.model):
        _check_model_folder(args.model)
    if not os.path.isfile(args.text):
        raise FileNotFoundError(f"--text {args.text}: no such file; pass the path of a UTF-8 text file")
    from .model import evaluate_perplexity, load_model, load_quantized

    if _is_quantized_dir(args.model):
        model, tok = load_quantized(args.model, return_tokenizer=True)
    else:
        model, tok = load_model(args.model)
    # A Path is always read as a file (a str that is no file would be taken as the text itself).
    ppl = evaluate_perplexity(model, tok, Path(args.text), seqlen=args.seqlen, max_tokens=args.max_tokens)
    print(json.dumps({"model": args.model, "text": args.text, "seqlen": args.seqlen, "perplexity": round(ppl, 4)}))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    _check_model_folder(args.model)
    if not _is_quantized_dir(args.model):
        raise ValueError(f"{args.model} is not an AWQ checkpoint folder (awqkit quantize writes one)")
    from . import isa
    from .model import load_quantized
    from .model.decode_runtime import NativeDecoder

    model, tok = load_quantized(args.model, return_tokenizer=True)
    ids = tok(args.prompt)["input_ids"]
    with isa.use_threads(args.threads or isa.num_threads()):
        dec = NativeDecoder(model, head=args.head, prefill=args.prefill,
                            context=min(len(ids) + args.max_new_tokens, getattr(model.config, "max_position_embeddings", 4096)))
        out = dec.generate(ids, args.max_new_tokens, eos_token_id=None if args.ignore_eos else tok.eos_token_id)
    t = dec.last_timing
    print(tok.decode(out, skip_special_tokens=True))
    print(json.dumps({"prompt_tokens": len(ids), "new_tokens": len(out) - len(ids),
                      "prefill_tok_s": round(len(ids) / t["prompt_s"], 1),
                      "decode_tok_s": round(t["decode_steps"] / t["decode_s"], 1) if t["decode_steps"] else None,
                      "head": args.head, "prefill": args.prefill, "threads": args.threads or isa.num_threads()}))
    return 0


def _fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024:
            return f"{size:.1f} {unit}"
    return f"{size / 1024:.1f} TiB"


def _cmd_footprint(args: argparse.Namespace) -> int:
    from .footprint import estimate_footprint

    fp = estimate_footprint(args.model, bits=args.bits, group_size=args.group_size, memory=args.memory)
    if args.json:
        print(json.dumps(fp.to_dict()))
    else:
        print(f"source: {fp.source}")
        print(f"parameters: {fp.params:,} ({fp.quantized_params:,} quantized at {args.bits}-bit, group {args.group_size})")
        print(f"before: {_fmt_bytes(fp.bytes_before)}  after: {_fmt_bytes(fp.bytes_after)}  ({fp.bytes_before / fp.bytes_after:.2f}x smaller)")
        if fp.memory is not None:
            print(f"fits in {_fmt_bytes(fp.memory)}: {'yes' if fp.fits else 'no'} (weights only; activations and KV cache come on top)")
    return 0 if fp.fits in (None, True) else 1


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _extra_arg(text: str) -> tuple[str, str]:
    """argparse type: NAME=CHECKPOINT_DIR."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"must be NAME=CHECKPOINT_DIR, got {text!r}")
    return name.strip(), folder.strip()


def _cmd_compare(args: argparse.Namespace) -> int:
    _check_model_folder(args.model)
    cfg = _config_from_args(argparse.Namespace(config=args.config, format=args.format, group_size=args.group_size,
                                               n_samples=args.n_samples, seqlen=args.calib_seqlen, no_clip=False, exclude=None))
    texts = [t for group in args.eval_text for t in _comma_list(group)]
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise FileNotFoundError(f"--json {args.json}: its folder does not exist")
    from .model.method_comparison import compare_methods

    logging.getLogger("awqkit.model.method_comparison").setLevel(logging.INFO)  # a line per row on stderr
    result = compare_methods(args.model, _comma_list(args.methods), _comma_list(args.bits), config=cfg, calib=args.calib,
                             eval_texts=texts, prompts=args.prompts or (), max_new_tokens=args.max_new_tokens,
                             eval_tokens=args.eval_tokens, seqlen=args.seqlen, batch_size=args.batch_size,
                             extras=args.extra or [], save_calib=args.save_calib)
    print(result.table())
    if result.prompts:
        print()
        print(result.outputs_table())
    if args.json:
        result.to_json(args.json)
    return 1 if any(r.error for r in result.rows) else 0


def _window_length(text: str) -> int:
    value = positive_int(text)
    if value < 2:  # a window predicts tokens 2..seqlen from the ones before
        raise argparse.ArgumentTypeError(f"must be at least 2 (a window of one token predicts nothing), got {text!r}")
    return value


def add_model_commands(sub) -> None:
    q = sub.add_parser("quantize", help="quantize a Hugging Face causal LM with AWQ into a checkpoint (AutoAWQ gemm, "
                       "compressed-tensors or GGUF), one block in memory at a time; an interrupted run resumes when "
                       "the same command is run again")
    q.add_argument("model", help="model folder (config.json, safetensors, tokenizer)")
    q.add_argument("--out", required=True, help="output folder (absent or empty, unless --overwrite)")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder as a whole")
    q.add_argument("--config", help="AWQConfig JSON file (flags override it)")
    q.add_argument("--format", choices=sorted(FORMATS), default=None,
                   help="checkpoint format (default awq: AutoAWQ gemm). gguf: Q4_0 (default, group 32), Q4_1 with "
                   "--zero-point, Q8_0 with --bits 8, rounded exactly as llama.cpp does; compressed-tensors: "
                   "pack-quantized, 2..8 bits")
    q.add_argument("--bits", type=int)
    q.add_argument("--group-size", dest="group_size", type=group_size_arg)
    q.add_argument("--zero-point", dest="zero_point", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument("--calib", help=".txt or .jsonl calibration text (default: built-in offline text)")
    q.add_argument("--n-samples", dest="n_samples", type=positive_int)
    q.add_argument("--seqlen", type=positive_int)
    q.add_argument("--n-grid", dest="n_grid", type=positive_int)
    q.add_argument("--no-clip", dest="no_clip", action="store_true")
    q.add_argument("--propagation", choices=["fp", "quantized"])
    q.add_argument("--inspect", choices=["linears", "module"])
    q.add_argument("--exclude", action="append", help="name substring of linears to keep in full precision (repeatable)")
    q.add_argument("--method", choices=[m for m, spec in METHODS.items() if spec.quantizes], default="awq",
                   help="; ".join(f"{m}: {spec.summary}" for m, spec in METHODS.items() if spec.quantizes))
    q.add_argument("--restart", action="store_true",
                   help="discard an interrupted run of --out (<out>.partial) instead of resuming it")
    q.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="run even when the memory plan exceeds the available memory")
    q.add_argument("--activations", choices=["auto", "memory", "disk"], default="auto",
                   help="where a block's captured calibration inputs live (auto: on disk when the memory plan "
                   "does not fit otherwise); the checkpoint is the same")
    q.add_argument("--in-memory", dest="in_memory", action="store_true",
                   help="load the whole model in float32 instead of streaming it block by block (no resume)")
    q.set_defaults(func=_cmd_quantize)

    e = sub.add_parser("eval", help="perplexity of a model or an AWQ checkpoint on a text file")
    e.add_argument("model", help="model folder, checkpoint folder (AWQ, compressed-tensors) or GGUF file/folder")
    e.add_argument("--text", required=True, help="text file")
    e.add_argument("--seqlen", type=_window_length, default=512, help="tokens per window (at least 2)")
    e.add_argument("--max-tokens", dest="max_tokens", type=positive_int, default=None, help="evaluate the first N tokens only")
    e.set_defaults(func=_cmd_eval)

    g = sub.add_parser("generate", help="greedy text from an AWQ checkpoint on the native decode runtime (Llama family), "
                                        "with prefill and decode tokens/s")
    g.add_argument("model", help="AWQ checkpoint folder")
    g.add_argument("prompt", help="prompt text")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=positive_int, default=64)
    g.add_argument("--head", choices=["int8", "int4", "float"], default="int8",
                   help="output head: int8 per channel (default), int4 groups of 32, or as stored")
    g.add_argument("--prefill", choices=["auto", "exact", "int16", "int8"], default="auto",
                   help="activations of the prompt's linears (auto: 16-bit where the CPU has no AMX tiles)")
    g.add_argument("--threads", type=positive_int, default=None, help="OpenMP threads (default: all)")
    g.add_argument("--ignore-eos", dest="ignore_eos", action="store_true", help="always generate --max-new-tokens tokens")
    g.set_defaults(func=_cmd_generate)

    f = sub.add_parser("footprint", help="estimated weight size before/after quantization (reads config.json or safetensors headers only)")
    f.add_argument("model", help="model folder or config.json")
    f.add_argument("--bits", type=int, choices=range(2, 9), metavar="{2..8}", default=4)
    f.add_argument("--group-size", dest="group_size", type=group_size_arg, default=128)
    f.add_argument("--memory", help="memory budget, e.g. 8GB or 512MiB: exit code 1 when it does not fit")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.set_defaults(func=_cmd_footprint)

    c = sub.add_parser("compare", help="quantize a model with several methods and bit widths (in memory) and compare them "
                       "with the float model and existing checkpoints: perplexity, KL divergence, top-1 agreement, size, "
                       "time, memory, greedy outputs")
    c.add_argument("model", help="model folder (config.json, safetensors, tokenizer), loaded once in float32")
    c.add_argument("--methods", required=True, help="comma-separated method names, e.g. rtn,awq (see awqkit.model.method_comparison."
                   "available_methods)")
    c.add_argument("--bits", default="4", help="comma-separated bit widths, e.g. 4,3 (default 4)")
    c.add_argument("--group-size", dest="group_size", type=group_size_arg)
    c.add_argument("--format", choices=sorted(FORMATS), default=None,
                   help="checkpoint format: which linears are quantized, how they round, and the size measured "
                   "(default awq: AutoAWQ gemm, 4-bit only, other widths get no size; compressed-tensors: 2..8 bits)")
    c.add_argument("--config", help="AWQConfig JSON file (flags override it; --bits sets the width of each row)")
    c.add_argument("--calib", help=".txt or .jsonl calibration text (default: built-in offline text), tokenised once for "
                   "every row; or an .npy of int tokens [blocks, seqlen] (e.g. written by --save-calib)")
    c.add_argument("--n-samples", dest="n_samples", type=positive_int, help="calibration documents")
    c.add_argument("--calib-seqlen", dest="calib_seqlen", type=positive_int, help="calibration block length (the config's seqlen)")
    c.add_argument("--save-calib", dest="save_calib", help="write the calibration tokens (int64 [blocks, seqlen]) to this .npy file")
    c.add_argument("--eval-text", dest="eval_text", action="append", required=True,
                   help="text file(s) to evaluate on, comma-separated or repeated")
    c.add_argument("--seqlen", type=_window_length, default=512, help="evaluation window in tokens (at least 2)")
    c.add_argument("--eval-tokens", dest="eval_tokens", type=positive_int, default=8192,
                   help="evaluate the first N tokens of each text (whole windows)")
    c.add_argument("--batch-size", dest="batch_size", type=positive_int, default=4, help="evaluation windows per forward")
    c.add_argument("--prompts", help=".jsonl ({\"prompt\": ...} a line) or .txt (a prompt a line): greedy outputs side by side")
    c.add_argument("--max-new-tokens", dest="max_new_tokens", type=positive_int, default=32)
    c.add_argument("--extra", action="append", type=_extra_arg, metavar="NAME=DIR",
                   help="an existing quantized checkpoint to evaluate the same way (repeatable); its run.json "
                   "(oneshot_seconds, peak_rss_mb) is shown when present")
    c.add_argument("--json", help="write every setting, measurement and output to this JSON file")
    c.set_defaults(func=_cmd_compare)
