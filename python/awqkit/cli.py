"""The ``awqkit`` command line (also ``python -m awqkit``)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    """The whole pipeline on stories260K when torch and the shared data are there; else the
    numpy-only quantizer demo (quantize and pack real or synthetic weights)."""
    from importlib.util import find_spec
    from pathlib import Path

    from .data import data_dir

    data = data_dir()
    have_model = (
        not args.layers_only
        and data is not None
        and (data / "stories260K-hf" / "model.safetensors").is_file()
        and find_spec("torch") is not None
        and find_spec("transformers") is not None
    )
    if have_model:
        from .demo_model import run_model_demo

        assert data is not None  # have_model checked it
        run_model_demo(data, Path(args.out), group_size=args.group_size, overwrite=args.overwrite)
        return 0
    from .demo import run_demo

    run_demo(group_size=args.group_size)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: what is wrong and where to read the usage (subcommand
    parsers inherit it), exit code 2 as argparse's own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def group_size_arg(text: str) -> int:
    """argparse type: a group size the AutoAWQ gemm layout and the fused kernels can take."""
    from .layout import group_size_problem

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer (-1 or a positive multiple of 8), got {text!r}") from None
    problem = group_size_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="awqkit", description="Activation-aware Weight Quantization toolkit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job on its embedded default: AWQ on the shared stories260K model")
    demo.add_argument("--group-size", type=group_size_arg, default=32)
    demo.add_argument("--out", default="out/stories260K-awq-w4",
                      help="where the demo writes its checkpoint (a previous demo checkpoint there is replaced)")
    demo.add_argument("--overwrite", action="store_true", help="replace --out even if it holds something else than a checkpoint")
    demo.add_argument("--layers-only", action="store_true", help="only the numpy quantizer table (no torch)")
    demo.set_defaults(func=_cmd_demo)
    from .cli_model import add_model_commands

    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # MKL's strict reproducibility mode (set before torch loads it): float32 products with the
    # same bits whatever the thread count (MKL may otherwise split a small product's inner
    # dimension among threads), so a checkpoint does not depend on how many threads or
    # processes (torchrun) computed it. It costs a few percent on small products.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, MemoryError) as e:
        if args.verbose:  # a bug must not hide behind a one-line message
            raise
        print(f"awqkit: error: {_one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return 2
    except RuntimeError as e:
        # Another rank of a distributed run died: not a bug here, and the traceback says less than the message.
        dist = sys.modules.get("awqkit.model.distributed")
        if dist is None or not isinstance(e, dist.RankFailure) or args.verbose:
            raise
        print(f"awqkit: error: {_one_line(e)}", file=sys.stderr)
        return 1


# A full or read-only disk, or a permission, is the user's to fix: say which file and what to do.
_DISK_ERRORS = {errno.ENOSPC: "free some space or choose another output folder",
                errno.EDQUOT: "free some space or choose another output folder",
                errno.EROFS: "choose an output folder on a writable file system",
                errno.EACCES: "check the permissions of that path",
                errno.EPERM: "check the permissions of that path"}


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno in _DISK_ERRORS:
        where = f" ({e.filename})" if e.filename else ""
        text = f"{e.strerror or e}{where}: {_DISK_ERRORS[e.errno]}"
    else:
        text = str(e)
    return " ".join(text.split())  # messages from libraries may span lines


if __name__ == "__main__":
    sys.exit(main())
