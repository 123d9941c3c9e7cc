"""The ``cast`` command-line program: one subcommand per pipeline stage.

Each subcommand lives in its own module, which defines ``configure(parser)``
to add its options and ``run(args) -> int`` to do the work. Modules are
imported only when their subcommand runs, so ``cast --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cast import __version__
from cast.errors import CastError

# Subcommand name -> (module, one-line summary).
COMMANDS: dict[str, tuple[str, str]] = {
    "verify-data": ("cast.data.verify", "Decode every image of a tree and write a manifest and a rejection report."),
    "estimate-saliency": ("cast.data.saliency", "Write binary saliency masks for a manifest with an unsupervised estimator."),
    "check-masks": ("cast.data.masks", "Pair images with masks, check them, and write the usable pairs with statistics."),
    "pretrain": ("cast.train.pretrain", "Pretrain with MoCo or CAST under torch.distributed (CPU or GPU), resumably."),
    "convert": ("cast.evaluate.convert", "Export the query backbone as torchvision and Detectron2 weights."),
    "linear-eval": ("cast.evaluate.cli", "Evaluate frozen features: linear classifier, VOC07 SVMs or k-NN."),
    "tables": ("cast.report.tables", "Collect metrics into Markdown, CSV and LaTeX tables, and draw the figures."),
    "bench": ("cast.bench", "Benchmarks: training step, crop sampling, data verification, end-to-end training."),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    """Build the parser of one subcommand by importing its module."""
    module_name, summary = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cast {command}", description=summary)
    add_logging_options(parser)
    module.configure(parser)
    parser.set_defaults(run=module.run)
    return parser


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log_level",
        "--log-level",
        dest="log_level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: INFO)",
    )


def print_overview() -> None:
    print(f"usage: cast COMMAND [options]   (cast {__version__})\n")
    print("Commands:")
    for name, (_, summary) in COMMANDS.items():
        print(f"  {name:<18} {summary}")
    print("\nRun 'cast COMMAND --help' for the options of one command.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print_overview()
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"cast: unknown command {command!r}. Run 'cast --help' for the list of commands.", file=sys.stderr)
        return 2

    args = build_parser(command).parse_args(argv[1:])
    args.argv = argv  # kept so that a command can start copies of itself (pretrain under torchrun)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.run(args) or 0)
    except CastError as error:
        logging.getLogger("cast").error("%s", error)
        return 1
