"""``cast bench step``: seconds per MoCo and CAST training step on the same model, input size and batch.

The steps of the methods alternate round by round, so a change in machine
load during the run affects all of them alike. Each figure is the median
over the timed rounds. Inputs are random tensors: the step's cost does not
depend on the pixel values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cast.errors import ConfigError
from cast.method.config import MethodConfig
from cast.method.moco import MoCo
from cast.method.step import training_step


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="resnet18", help="torchvision ResNet of both encoders (default: resnet18)")
    parser.add_argument("--image_size", "--image-size", type=int, default=96, help="crop side in pixels (default: 96)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--queue_size", "--queue-size", type=int, default=4096, help="MoCo queue size K (default: 4096)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds; each runs one step of every method (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing (default: 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default (default: 0)")
    parser.add_argument("--device", default="cpu", help="device to run on, for example cpu or cuda (default: cpu)")
    parser.add_argument("--amp", action="store_true", help="run the forward pass under bfloat16 autocast")
    parser.add_argument(
        "--released",
        action="store_true",
        help="also time CAST with the query encoder run a second time for Grad-CAM, as the released code does",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the random inputs (default: 0)")


def run(args: argparse.Namespace) -> int:
    for name in ("image_size", "batch_size", "queue_size", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, not {getattr(args, name)}")
    if args.warmup < 0 or args.threads < 0:
        raise ConfigError("--warmup and --threads must not be negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    config = MethodConfig(arch=args.arch, image_size=args.image_size, moco_k=args.queue_size)
    model = MoCo(arch=args.arch, dim=config.moco_dim, queue_size=args.queue_size).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    batch = make_batch(args.batch_size, args.image_size, config, device)
    autocast_dtype = torch.bfloat16 if args.amp else None

    variants = {"moco": ("moco", False), "cast": ("cast", False)}
    if args.released:
        variants["cast_released"] = ("cast", True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.warmup + args.steps):
        for name, (method, separate_pass) in variants.items():
            started = time.perf_counter()
            training_step(model, batch, optimizer, config, method, autocast_dtype, separate_gradcam_pass=separate_pass)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= args.warmup:
                times[name].append(time.perf_counter() - started)

    seconds = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "queue_size": args.queue_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "amp": bool(args.amp),
        "steps": args.steps,
        "seconds_per_step": {name: round(value, 5) for name, value in seconds.items()},
        "cast_over_moco": round(seconds["cast"] / seconds["moco"], 3),
    }
    if args.released:
        result["released_over_moco"] = round(seconds["cast_released"] / seconds["moco"], 3)
    print(json.dumps(result, indent=2))
    return 0


def make_batch(batch_size: int, image_size: int, config: MethodConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """Return a random CAST batch: images, masked keys zero outside a random mask, and query masks at the Grad-CAM resolution."""
    from cast.method.gradcam import gradcam_resolution

    resolution = gradcam_resolution(config.arch, image_size, config.gradcam_layer)
    key = torch.randn(batch_size, 3, image_size, image_size)
    key_mask = (torch.rand(batch_size, 1, image_size, image_size) > 0.5).float()
    return {
        "query": torch.randn(batch_size, 3, image_size, image_size).to(device),
        "key": key.to(device),
        "masked_key": (key * key_mask).to(device),
        "query_mask": (torch.rand(batch_size, *resolution) > 0.5).float().to(device),
    }
