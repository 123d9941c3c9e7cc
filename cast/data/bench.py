"""``cast bench verify``: throughput of ``cast verify-data`` in images per second per worker process.

Two trees are timed: the given image tree (by default the bundled sample)
and copies of its images scaled to COCO's typical size (640×480 by default),
written to a temporary folder. Each timing covers walking, reading, hashing,
decoding and writing the manifest, report and summary, as the stage does.
The figures are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from cast.data.common import available_cpus
from cast.data.verify import verify_tree, write_outputs
from cast.errors import ConfigError
from cast.imageio import open_rgb

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, default=Path("data/sample/images"), help="image root (default: data/sample/images)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="split folders (default: train val)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker process counts to time (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; the median and best are reported (default: 3)")
    parser.add_argument("--copies", type=int, default=4, help="scaled copies per image, each JPEG-encoded at a different quality so no two are duplicates (default: 4)")
    parser.add_argument("--coco_size", "--coco-size", type=int, nargs=2, default=[640, 480], metavar=("WIDTH", "HEIGHT"), help="size of the scaled copies (default: 640 480)")


def make_scaled_copies(images: Path, splits: list[str], out: Path, size: tuple[int, int], copies: int) -> int:
    """Write ``copies`` resized copies of every image of ``images`` into the same tree under ``out``.

    Copy ``k`` is saved as JPEG with quality ``90 - k``, so the copies differ
    in bytes and verify-data does not reject them as duplicates.
    """
    count = 0
    for split in splits:
        for path in sorted((images / split).rglob("*")):
            if not path.is_file():
                continue
            resized = open_rgb(path).resize(size, Image.Resampling.BILINEAR)
            for copy in range(copies):
                target = out / path.relative_to(images).parent / f"{path.stem}_{copy}.jpg"
                target.parent.mkdir(parents=True, exist_ok=True)
                resized.save(target, format="JPEG", quality=90 - copy)
                count += 1
    return count


def time_tree(images: Path, splits: list[str], workers: int, repeats: int, scratch: Path) -> dict:
    """Time full verify-data runs on one tree and return the figures."""
    seconds = []
    accepted = 0
    for _ in range(repeats):
        start = time.perf_counter()
        result = verify_tree(images, splits, min_side=32, max_pixels=89_478_485, workers=workers)
        write_outputs(result, splits, scratch / "manifest.csv", scratch / "rejected.csv", scratch / "summary.json", 1.0)
        seconds.append(time.perf_counter() - start)
        accepted = len(result.accepted)
    median = statistics.median(seconds)
    return {
        "workers": workers,
        "images": accepted,
        "seconds_median": round(median, 4),
        "seconds_best": round(min(seconds), 4),
        "images_per_second": round(accepted / median, 1),
        "images_per_second_per_worker": round(accepted / median / workers, 1),
    }


def run(args: argparse.Namespace) -> int:
    # The stage logs one line per run; only warnings matter while timing it.
    logging.getLogger("cast.data").setLevel(logging.WARNING)
    if args.repeats < 1 or any(w < 1 for w in args.workers):
        raise ConfigError("--repeats and every --workers value must be at least 1.")
    if not 1 <= args.copies <= 40:
        raise ConfigError(f"--copies must be between 1 and 40 (JPEG quality 90 down to 51), got {args.copies}.")
    cpus = available_cpus()
    if max(args.workers) > cpus:
        log.warning("timing %d workers on %d available CPUs; per-worker figures will be low", max(args.workers), cpus)

    with tempfile.TemporaryDirectory(prefix="cast-bench-verify-") as temporary:
        scratch = Path(temporary)
        coco_root = scratch / "coco_size"
        copies = make_scaled_copies(args.images, args.splits, coco_root, tuple(args.coco_size), args.copies)
        trees = {"input": args.images, f"scaled_{args.coco_size[0]}x{args.coco_size[1]}": coco_root}
        results = {}
        for name, root in trees.items():
            results[name] = [time_tree(root, args.splits, workers, args.repeats, scratch) for workers in args.workers]

    report = {
        "benchmark": "verify",
        "images_root": str(args.images),
        "scaled_copies": copies,
        "available_cpus": cpus,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
