"""The ``awqkit`` command line (also ``python -m awqkit``)."""

from __future__ import annotations

import argparse
import logging
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

        run_model_demo(data, Path(args.out), group_size=args.group_size)
        return 0
    from .demo import run_demo

    run_demo(group_size=args.group_size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="awqkit", description="Activation-aware Weight Quantization toolkit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job on its embedded default: AWQ on the shared stories260K model")
    demo.add_argument("--group-size", type=int, default=32)
    demo.add_argument("--out", default="out/stories260K-awq-w4", help="where the demo writes its checkpoint")
    demo.add_argument("--layers-only", action="store_true", help="only the numpy quantizer table (no torch)")
    demo.set_defaults(func=_cmd_demo)
    from .cli_model import add_model_commands

    add_model_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        if args.verbose:  # a bug must not hide behind a one-line message
            raise
        print(f"awqkit: error: {e} (run with -v for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
