"""``cast bench NAME``: benchmarks, each defined in the package that owns the code it times.

Each benchmark module defines ``configure(parser)`` and ``run(args)`` and
prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, tuple[str, str]] = {
    "step": ("cast.method.bench_step", "seconds per MoCo and CAST training step on the same model and batch"),
    "crops": ("cast.method.bench_crops", "crop pairs per second and prepared samples per second on one core"),
    "verify": ("cast.data.bench", "verify-data throughput in images per second per core"),
    "train": ("cast.train.bench", "end-to-end pretraining images per second, data loading included"),
    "linear": ("cast.evaluate.bench", "wall time of linear evaluation with and without cached features"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="benchmark to run")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark (see 'cast bench NAME --help')")


def run(args: argparse.Namespace) -> int:
    module_name, summary = BENCHMARKS[args.name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cast bench {args.name}", description=f"Benchmark: {summary}.")
    module.configure(parser)
    return int(module.run(parser.parse_args(args.options)) or 0)
