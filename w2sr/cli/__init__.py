"""One command line, ``w2sr``, with a subcommand per job.

Each subcommand is registered by the module that owns it (``register(subparsers)``); heavy imports
(TensorFlow, ONNX) happen only inside the handlers, so ``w2sr --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from w2sr.core.errors import UserError

#: modules that contribute subcommands, in the order they appear in --help
COMMAND_MODULES = (
    "w2sr.cli.data",      # simulate, check-data
    "w2sr.cli.train",     # train, evaluate
    "w2sr.cli.export",    # export, bundle, validate
    "w2sr.cli.engines",   # check-engines
    "w2sr.cli.predict",   # predict
    "w2sr.cli.demo",      # demo
)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one ``error:`` line, like every other error of the CLI (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="w2sr",
        description=(
            "Joint denoising + 2x super-resolution of widefield fluorescence images (W2S, ESRGAN), "
            "from training to a DeepImageJ / BioImage.IO bundle."
        ),
        epilog="Run 'w2sr COMMAND --help' for the options of one command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _close_progress_bars() -> None:
    """A bar that an error interrupted still holds the cursor mid-line: end it, so that the error
    message starts a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from w2sr.core.files import sweep_scratch

    sweep_scratch()  # scratch folders that killed w2sr runs left in the system's temp folder
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        _close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)

