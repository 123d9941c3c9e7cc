"""``cast bench linear``: wall time of the ``linear`` protocol with and without cached features.

Both runs use the same backbone, data and settings in this one process. The
timed span is ``run_linear`` (feature extraction, training and validation),
without loading the backbone or reading the manifest. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from datetime import datetime, timezone

import torch

from cast.evaluate.backbone import RANDOM_BACKBONE, RESNET_ARCHS, load_backbone
from cast.evaluate.datasets import manifest_splits, read_manifest
from cast.devices import resolve_device
from cast.evaluate.distributed import Context
from cast.evaluate.linear import LinearConfig, run_linear
from cast.io import write_json
from cast.options import add_option


def configure(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "images", required=True, help="image folder that manifest paths are relative to")
    add_option(parser, "manifest", required=True, help="manifest.csv with labelled train and val splits")
    add_option(parser, "backbone", default=RANDOM_BACKBONE, help="backbone file, pretraining checkpoint or 'random' (default: random)")
    add_option(parser, "arch", default="resnet18", choices=RESNET_ARCHS, help="architecture for --backbone random (default: resnet18)")
    add_option(parser, "epochs", type=int, default=5, help="training epochs of each run (default: 5)")
    add_option(parser, "batch_size", type=int, default=64, help="batch size (default: 64)")
    add_option(parser, "image_size", type=int, default=224, help="crop side in pixels (default: 224)")
    add_option(parser, "resize_size", type=int, default=256, help="shorter side before the centre crop, in pixels (default: 256)")
    add_option(parser, "workers", type=int, default=0, help="data-loading workers (default: 0)")
    add_option(parser, "device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_option(parser, "threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add_option(parser, "out", default=None, help="also write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    context = Context(rank=0, world_size=1, device=resolve_device(args.device))
    backbone = load_backbone(args.backbone, None if args.backbone != RANDOM_BACKBONE else args.arch, seed=0)
    class_names, train, val = manifest_splits(read_manifest(args.manifest), args.manifest, args.images, "train", "val")
    base = LinearConfig(
        batch_size=args.batch_size,
        epochs=args.epochs,
        milestones=[],
        image_size=args.image_size,
        resize_size=args.resize_size,
        workers=args.workers,
        device=args.device,
    )

    seconds = {}
    top1 = {}
    for cached in (False, True):
        config = dataclasses.replace(base, cached_features=cached)
        with tempfile.TemporaryDirectory(prefix="cast-bench-linear-") as out_dir:
            started = time.perf_counter()
            metrics = run_linear(backbone, class_names, train, val, config, context, out_dir)
            seconds["cached" if cached else "images"] = round(time.perf_counter() - started, 2)
            top1["cached" if cached else "images"] = round(metrics["top1"], 2)

    figures = {
        "benchmark": "linear",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "device": str(context.device),
        "backbone": args.backbone,
        "arch": backbone.arch,
        "num_train": len(train.paths),
        "num_val": len(val.paths),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "wall_time_s": seconds,
        "speedup": round(seconds["images"] / seconds["cached"], 2),
        "val_top1": top1,
    }
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        write_json(args.out, figures)
    return 0
