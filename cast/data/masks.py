"""``cast check-masks``: pair every manifest image with its saliency mask and keep the usable pairs.

Mask paths follow one of two layouts (``mask_layout``):

- ``mirrored``: ``<masks>/<split>/<folders below the split>/<stem>.png``, the
  image tree with a ``.png`` suffix;
- ``parent``: ``<masks>/<split>/<name of the image's parent folder>/<stem>.png``,
  the layout of the released COCO saliency maps. For an image directly in
  the split folder the parent folder is the split folder itself.

When the ``.png`` file is missing, a ``.jpg`` or ``.jpeg`` file of the same
stem is used with a warning, because JPEG compression noise blurs the mask
edges. A mask is read as upright 8-bit grayscale (other modes are converted
and noted) and binarized: values above ``threshold`` are salient.

Rejection reasons: ``missing_image``, ``missing_mask``, ``mask_outside_root``,
``unreadable_mask``, ``size_mismatch``, ``empty_mask``,
``too_small_salient_fraction`` and ``shared_mask`` (a mask path already used
by an earlier image, possible in the parent layout).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from cast.data.common import (
    count_values,
    describe_files,
    is_inside,
    join_notes,
    parallel_map,
    read_manifest,
    resolve_workers,
)
from cast.errors import ConfigError, DataError
from cast.imageio import read_mask
from cast.io import write_csv, write_json
from cast.options import add_option

log = logging.getLogger(__name__)

LAYOUTS = ("mirrored", "parent")
MASK_SUFFIXES = (".png", ".jpg", ".jpeg")
PAIR_COLUMNS = [
    "image",
    "mask",
    "split",
    "label",
    "width",
    "height",
    "salient_fraction",
    "bbox_x1",
    "bbox_y1",
    "bbox_x2",
    "bbox_y2",
    "com_x",
    "com_y",
    "notes",
]
REJECTED_COLUMNS = ["image", "mask", "split", "reason", "detail"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="image root folder, as given to verify-data")
    parser.add_argument("--manifest", type=Path, required=True, help="manifest CSV written by verify-data")
    parser.add_argument("--masks", type=Path, required=True, help="mask root folder")
    parser.add_argument("--pairs", type=Path, required=True, help="output CSV of usable (image, mask) pairs with mask statistics")
    parser.add_argument("--rejected", type=Path, required=True, help="output CSV of rejected pairs with reasons")
    parser.add_argument("--summary", type=Path, required=True, help="output JSON with counts per split and reason")
    add_option(parser, "mask_layout", choices=LAYOUTS, default="mirrored", help="where masks are: mirrored image tree, or <split>/<parent folder>/<stem>.png (default: %(default)s)")
    add_option(parser, "threshold", type=int, default=128, help="mask values above this 8-bit level are salient (default: %(default)s)")
    add_option(parser, "min_salient_fraction", type=float, default=0.001, help="reject masks whose salient pixels are a smaller fraction of the image (default: %(default)s)")
    add_option(parser, "min_usable_pairs", type=int, default=1, help="fail when fewer usable pairs remain (default: %(default)s)")
    add_option(parser, "splits", nargs="+", default=None, help="splits of the manifest to check (default: all)")
    add_option(parser, "workers", type=int, default=0, help="worker processes; 0 uses one per available CPU (default: 0)")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.threshold <= 254:
        raise ConfigError(f"threshold must be between 0 and 254 so that some 8-bit value lies above it, got {args.threshold}.")
    if not 0 <= args.min_salient_fraction < 1:
        raise ConfigError(f"min_salient_fraction must be in [0, 1), got {args.min_salient_fraction}.")
    if args.min_usable_pairs < 0:
        raise ConfigError(f"min_usable_pairs must be 0 or more, got {args.min_usable_pairs}.")
    images_root = Path(args.images)
    masks_root = Path(args.masks)
    if not images_root.is_dir():
        raise DataError(f"Image root {images_root} not found. Correct --images.")
    if not masks_root.is_dir():
        raise DataError(f"Mask root {masks_root} not found. Correct --masks, or run cast estimate-saliency to create masks.")

    manifest = read_manifest(args.manifest, args.splits)
    splits = list(args.splits) if args.splits else sorted(manifest["split"].unique())
    tasks = [
        PairTask(
            image=row.path,
            split=row.split,
            label=row.label,
            width=row.width,
            height=row.height,
            image_file=str(images_root / row.path),
            masks_root=str(masks_root.resolve()),
            mask_candidates=tuple(str(path) for path in mask_candidates(row.path, args.mask_layout)),
            threshold=args.threshold,
            min_salient_fraction=args.min_salient_fraction,
        )
        for row in manifest.itertuples()
    ]
    outcomes = reject_shared_masks(list(parallel_map(check_pair, tasks, resolve_workers(args.workers), "check-masks")))
    accepted = [o for o in outcomes if not o.reason]
    rejected = [o for o in outcomes if o.reason]

    write_csv(args.pairs, pd.DataFrame([o.pair_row() for o in accepted], columns=PAIR_COLUMNS))
    write_csv(args.rejected, pd.DataFrame([o.rejected_row() for o in rejected], columns=REJECTED_COLUMNS))
    summary = summarize(outcomes, splits, args)
    write_json(args.summary, summary)

    jpeg_masks = [o.image for o in accepted if "jpeg_mask" in o.notes]
    if jpeg_masks:
        log.warning(
            "%d mask(s) are JPEG files, whose compression noise blurs mask edges: %s. Prefer PNG masks.",
            len(jpeg_masks),
            describe_files(jpeg_masks),
        )
    log.info("check-masks: %d usable pairs, %d rejected %s, pairs in %s", len(accepted), len(rejected), summary["rejected_by_reason"], args.pairs)
    if rejected:
        log.warning(
            "check-masks: %d of %d images cannot be used by CAST: %s. Every reason is in %s.",
            len(rejected), len(outcomes), describe_files([f"{o.image} ({o.reason})" for o in rejected]), args.rejected,
        )
    if len(accepted) < args.min_usable_pairs:
        named = describe_files([f"{o.image} ({o.reason})" for o in rejected])
        raise DataError(
            f"Only {len(accepted)} usable (image, mask) pairs, fewer than min_usable_pairs {args.min_usable_pairs}. "
            f"Rejected: {named}. All reasons are in {args.rejected}. Check --masks and --mask_layout, or lower --min_usable_pairs."
        )
    return 0


def mask_candidates(image_path: str, layout: str) -> list[PurePosixPath]:
    """Return the mask paths to try for a manifest image path, relative to the mask root, PNG first."""
    parts = PurePosixPath(image_path)
    if layout == "mirrored":
        base = parts.with_suffix("")
    elif layout == "parent":
        base = PurePosixPath(parts.parts[0], parts.parent.name, parts.stem)
    else:
        raise ConfigError(f"mask_layout must be one of {LAYOUTS}, got {layout!r}.")
    return [base.with_name(base.name + suffix) for suffix in MASK_SUFFIXES]


@dataclass(frozen=True)
class PairTask:
    image: str
    split: str
    label: str
    width: int
    height: int
    image_file: str
    masks_root: str
    mask_candidates: tuple[str, ...]
    threshold: int
    min_salient_fraction: float


@dataclass
class PairOutcome:
    """The result of checking one (image, mask) pair, with the mask statistics when it is usable."""

    image: str
    split: str
    label: str
    width: int
    height: int
    mask: str = ""
    reason: str = ""
    detail: str = ""
    salient_fraction: float = 0.0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)
    com: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)

    def pair_row(self) -> dict:
        x1, y1, x2, y2 = self.bbox
        return {
            "image": self.image,
            "mask": self.mask,
            "split": self.split,
            "label": self.label,
            "width": self.width,
            "height": self.height,
            "salient_fraction": round(self.salient_fraction, 6),
            "bbox_x1": x1,
            "bbox_y1": y1,
            "bbox_x2": x2,
            "bbox_y2": y2,
            "com_x": round(self.com[0], 3),
            "com_y": round(self.com[1], 3),
            "notes": join_notes(self.notes),
        }

    def rejected_row(self) -> dict:
        return {"image": self.image, "mask": self.mask, "split": self.split, "reason": self.reason, "detail": self.detail}


def check_pair(task: PairTask) -> PairOutcome:
    """Find, read and check the mask of one image, and compute its statistics."""
    outcome = PairOutcome(task.image, task.split, task.label, task.width, task.height)
    if not Path(task.image_file).is_file():
        outcome.reason, outcome.detail = "missing_image", "the image listed in the manifest no longer exists"
        return outcome

    masks_root = Path(task.masks_root)
    found = next((candidate for candidate in task.mask_candidates if (masks_root / candidate).is_file()), None)
    if found is None:
        outcome.mask = task.mask_candidates[0]
        outcome.reason, outcome.detail = "missing_mask", f"no mask file {task.mask_candidates[0]} (nor .jpg/.jpeg)"
        return outcome
    outcome.mask = found
    mask_file = masks_root / found
    if not is_inside(mask_file.resolve(), masks_root):
        outcome.reason, outcome.detail = "mask_outside_root", f"links to {mask_file.resolve()}, outside the mask root"
        return outcome

    try:
        mask = read_mask(mask_file)
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise many exception types for damaged files
        outcome.reason, outcome.detail = "unreadable_mask", f"{type(error).__name__}: {error}"
        return outcome
    outcome.notes = list(mask.notes)
    height, width = mask.gray.shape
    if (width, height) != (task.width, task.height):
        outcome.reason = "size_mismatch"
        outcome.detail = f"mask is {width}x{height}, image is {task.width}x{task.height} (width x height, after EXIF orientation)"
        return outcome

    salient = mask.gray > task.threshold
    count = int(salient.sum())
    if count == 0:
        outcome.reason = "empty_mask"
        outcome.detail = f"no value above threshold {task.threshold}; the largest value is {int(mask.gray.max())}"
        return outcome
    outcome.salient_fraction = count / salient.size
    if outcome.salient_fraction < task.min_salient_fraction:
        outcome.reason = "too_small_salient_fraction"
        outcome.detail = f"salient fraction {outcome.salient_fraction:.6f} is below min_salient_fraction {task.min_salient_fraction}"
        return outcome
    outcome.bbox, outcome.com = mask_statistics(salient)
    return outcome


def mask_statistics(salient: np.ndarray) -> tuple[tuple[int, int, int, int], tuple[float, float]]:
    """Return the bounding box (x1, y1, x2, y2 with x2, y2 exclusive) and centre of mass (x, y) of a non-empty boolean mask.

    The centre of mass is the mean column and row index of the salient pixels,
    the convention of ``scipy.ndimage.center_of_mass``, so one salient pixel at
    column 3 has ``com_x`` 3.0.
    """
    rows = np.flatnonzero(salient.any(axis=1))
    columns = np.flatnonzero(salient.any(axis=0))
    bbox = (int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1)
    ys, xs = np.nonzero(salient)
    return bbox, (float(xs.mean()), float(ys.mean()))


def reject_shared_masks(outcomes: list[PairOutcome]) -> list[PairOutcome]:
    """Reject, in image path order, usable pairs whose mask file is already used by an earlier image."""
    first: dict[str, str] = {}
    for outcome in sorted(outcomes, key=lambda o: o.image):
        if outcome.reason:
            continue
        if outcome.mask in first:
            outcome.reason = "shared_mask"
            outcome.detail = f"{outcome.mask} is also the mask of {first[outcome.mask]}. Use mask_layout mirrored or rename the images"
        else:
            first[outcome.mask] = outcome.image
    return sorted(outcomes, key=lambda o: o.image)


def summarize(outcomes: list[PairOutcome], splits: list[str], args: argparse.Namespace) -> dict:
    """Count usable and rejected pairs per split and reason, and the notes of usable pairs."""
    accepted = [o for o in outcomes if not o.reason]
    rejected = [o for o in outcomes if o.reason]
    per_split = {}
    for split in splits:
        split_accepted = [o for o in accepted if o.split == split]
        split_rejected = [o for o in rejected if o.split == split]
        fractions = [o.salient_fraction for o in split_accepted]
        per_split[split] = {
            "usable": len(split_accepted),
            "rejected": len(split_rejected),
            "rejected_by_reason": count_values(o.reason for o in split_rejected),
            "mean_salient_fraction": float(np.mean(fractions)) if fractions else None,
        }
    return {
        "splits": per_split,
        "usable": len(accepted),
        "rejected": len(rejected),
        "rejected_by_reason": count_values(o.reason for o in rejected),
        "notes": count_values(note for o in accepted for note in o.notes),
        "mask_layout": args.mask_layout,
        "threshold": args.threshold,
        "min_salient_fraction": args.min_salient_fraction,
        "min_usable_pairs": args.min_usable_pairs,
    }
