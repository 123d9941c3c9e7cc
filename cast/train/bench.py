"""``cast bench train``: end-to-end pretraining throughput, data loading included, for MoCo and CAST.

Runs one process on this machine with the same data, model and batch for both
methods, and prints images per second as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from cast.method.step import training_step
from cast.train import distributed
from cast.train.pretrain import Pretrainer
from cast.train.pretrain import configure as configure_pretrain


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="image root")
    parser.add_argument("--masks", type=Path, required=True, help="mask root")
    parser.add_argument("--pairs", type=Path, required=True, help="pairs.csv from 'cast check-masks'")
    parser.add_argument("--arch", default="resnet18", help="torchvision ResNet (default: resnet18)")
    parser.add_argument("--image_size", type=int, default=96, help="crop size in pixels (default: 96)")
    parser.add_argument("--batch_size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--workers", type=int, default=1, help="data-loader workers (default: 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default: 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def time_method(args: argparse.Namespace, method: str) -> dict[str, float]:
    parser = argparse.ArgumentParser()
    configure_pretrain(parser)
    pretrain_args = parser.parse_args(
        [
            "--images", str(args.images), "--masks", str(args.masks), "--pairs", str(args.pairs),
            "--out_dir", "unused", "--method", method, "--arch", args.arch,
            "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
            "--moco_k", str(args.batch_size * 32), "--workers", str(args.workers), "--device", args.device,
        ]
    )
    context = distributed.init_worker(args.device, 60)
    trainer = Pretrainer(pretrain_args, context)
    model = trainer.build_model()
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.01, momentum=0.9)
    loader, dataset, sampler = trainer.build_loader()

    def batches():
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            yield from loader

    stream = batches()
    if trainer.use_cuda_features:
        torch.cuda.reset_peak_memory_stats(context.device)
    images = 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            started = time.perf_counter()
        batch = next(stream)
        for key in ("resampled", "empty_query_mask", "fallback"):
            batch.pop(key, None)
        batch = trainer.to_device(batch)
        training_step(model, batch, optimizer, trainer.config, method, autocast_dtype=trainer.autocast_dtype)
        if step >= args.warmup:
            images += batch["query"].shape[0]
    if trainer.use_cuda_features:
        torch.cuda.synchronize(context.device)
    elapsed = time.perf_counter() - started
    result = {"images_per_second": images / elapsed, "seconds_per_step": elapsed / args.steps}
    if trainer.use_cuda_features:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(context.device) / 2**30
        result["bf16_autocast"] = trainer.autocast_dtype is not None
    return result


def run(args: argparse.Namespace) -> int:
    results = {method: time_method(args, method) for method in ("moco", "cast")}
    report = {
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        **results,
        "cast_over_moco_time": results["cast"]["seconds_per_step"] / results["moco"]["seconds_per_step"],
    }
    print(json.dumps(report, indent=2))
    return 0
