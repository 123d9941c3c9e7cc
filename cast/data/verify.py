"""``cast verify-data``: decode every file of an image tree and list the usable images.

Each split folder is walked to any depth. Every regular file (and every
symbolic link that resolves to a file inside the image root) is read, hashed
and fully decoded the way the training stages decode it. Accepted images go
to the manifest with their upright size and the conversions they need.
Everything else goes to the rejection report with one of these reasons:

- ``zero_bytes``, ``truncated``, ``decode_error``;
- ``unreadable``: the operating system could not read the file or folder;
- ``not_an_image``: Pillow does not recognise the format;
- ``too_small``: the shorter side is below ``min_side``;
- ``too_many_pixels``: over ``max_pixels``, checked before decoding;
- ``duplicate``: the same bytes as an earlier path, which the detail names;
- ``duplicate_stem``: the same path as an earlier image apart from the
  extension, so both would share one mask file;
- ``link_outside_root``, ``link_loop``, ``broken_link``;
- ``not_a_regular_file``: a device, socket or pipe;
- ``invalid_file_name``: a name that is not valid UTF-8.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cast.data.common import (
    MANIFEST_COLUMNS,
    check_split_name,
    count_values,
    describe_files,
    is_inside,
    join_notes,
    parallel_map,
    resolve_workers,
)
from cast.errors import ConfigError, DataError
from cast.imageio import ImageTooLarge, decode_image
from cast.io import write_csv, write_json
from cast.options import add_option

log = logging.getLogger(__name__)

REJECTED_COLUMNS = ["path", "split", "reason", "detail"]
# Pillow's own decompression-bomb warning limit (Image.MAX_IMAGE_PIXELS in Pillow 10 to 13).
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass
class Candidate:
    """A file found in the tree, to be decoded."""

    path: str  # POSIX path relative to the image root, starting with the split folder
    split: str
    source: str  # file system path to read; the link target for symbolic links


@dataclass
class Outcome:
    """The result of checking one file: either accepted with its properties, or rejected with a reason."""

    path: str
    split: str
    reason: str = ""  # empty when accepted
    detail: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    sha256: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Verification:
    """All outcomes of one run, sorted by path."""

    accepted: list[Outcome]
    rejected: list[Outcome]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="image root folder that contains the split folders")
    parser.add_argument("--manifest", type=Path, required=True, help="output CSV of accepted images")
    parser.add_argument("--rejected", type=Path, required=True, help="output CSV of rejected files with reasons")
    parser.add_argument("--summary", type=Path, required=True, help="output JSON with counts per split and reason")
    add_option(parser, "splits", nargs="+", default=["train", "val"], help="split folder names below --images (default: train val)")
    add_option(parser, "min_side", type=int, default=32, help="reject images whose shorter side is below this many pixels (default: 32)")
    add_option(
        parser,
        "max_pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"reject images with more pixels than this before decoding them (default: {DEFAULT_MAX_PIXELS}, Pillow's bomb limit)",
    )
    add_option(
        parser,
        "max_rejected_fraction",
        type=float,
        default=0.0,
        help="fail when more than this fraction of the files is rejected (default: 0.0, any rejection fails)",
    )
    add_option(parser, "workers", type=int, default=0, help="worker processes for decoding; 0 uses one per available CPU (default: 0)")


def run(args: argparse.Namespace) -> int:
    if args.min_side < 1:
        raise ConfigError(f"min_side must be at least 1 pixel, got {args.min_side}.")
    if args.max_pixels < 1:
        raise ConfigError(f"max_pixels must be a positive number of pixels, got {args.max_pixels}.")
    if not 0.0 <= args.max_rejected_fraction <= 1.0:
        raise ConfigError(f"max_rejected_fraction must be between 0 and 1, got {args.max_rejected_fraction}.")

    result = verify_tree(args.images, args.splits, args.min_side, args.max_pixels, resolve_workers(args.workers))
    summary = write_outputs(result, args.splits, args.manifest, args.rejected, args.summary, args.max_rejected_fraction)
    log.info(
        "verify-data: %d accepted, %d rejected %s; manifest %s, report %s",
        summary["accepted"],
        summary["rejected"],
        summary["rejected_by_reason"],
        args.manifest,
        args.rejected,
    )
    check_rejections(result, summary, args.max_rejected_fraction, args.rejected)
    return 0


def verify_tree(images: Path, splits: list[str], min_side: int, max_pixels: int, workers: int) -> Verification:
    """Walk the split folders of ``images``, decode every file in ``workers`` processes and return the outcomes."""
    root = Path(images)
    if not root.is_dir():
        raise DataError(f"Image root {root} not found or not a folder. Correct --images.")
    root_real = root.resolve()
    if len(set(splits)) != len(splits):
        raise ConfigError(f"splits {splits} names a split more than once.")
    for split in splits:
        check_split_name(split)
        split_dir = root / split
        if not split_dir.is_dir():
            existing = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
            raise DataError(f"Split folder {split_dir} not found. Folders in {root}: {existing}. Correct --splits or --images.")
        if not is_inside(split_dir.resolve(), root_real):
            raise DataError(
                f"Split folder {split_dir} is a link to {split_dir.resolve()}, outside the image root {root_real}. "
                "Pass a folder that contains the split folders themselves as --images."
            )

    candidates: list[Candidate] = []
    rejected: list[Outcome] = []
    for split in splits:
        found, split_rejected = walk_split(root_real, split)
        candidates += found
        rejected += split_rejected
    log.info("verify-data: decoding %d files in %d worker process(es)", len(candidates), workers)

    tasks = [(candidate, min_side, max_pixels) for candidate in candidates]
    accepted: list[Outcome] = []
    for outcome in parallel_map(inspect_task, tasks, workers, "verify-data"):
        (rejected if outcome.reason else accepted).append(outcome)

    accepted.sort(key=lambda outcome: outcome.path)
    accepted, later = reject_repeats(accepted)
    rejected += later
    rejected.sort(key=lambda outcome: outcome.path)
    return Verification(accepted, rejected)


def walk_split(root_real: Path, split: str) -> tuple[list[Candidate], list[Outcome]]:
    """List the files under one split folder, following links that stay inside ``root_real``.

    Folders are walked with an explicit stack. The real paths of the folders
    above the current one are kept, so a link back to one of them is rejected
    as ``link_loop`` instead of being followed forever.
    """
    candidates: list[Candidate] = []
    rejected: list[Outcome] = []
    start = (root_real / split).resolve()
    stack: list[tuple[Path, str, frozenset[Path]]] = [(start, split, frozenset({start}))]
    while stack:
        folder, rel_folder, ancestors = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            rejected.append(Outcome(rel_folder, split, "unreadable", f"folder could not be listed: {error.strerror}"))
            continue
        for entry in entries:
            rel = f"{rel_folder}/{entry.name}"
            if not is_utf8(rel):
                printable = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                rejected.append(Outcome(printable, split, "invalid_file_name", "the name is not valid UTF-8; rename the file"))
                continue
            if entry.is_symlink():
                target, problem = resolve_link(Path(entry.path), root_real)
                if problem:
                    rejected.append(Outcome(rel, split, *problem))
                elif target.is_dir():
                    if target in ancestors:
                        rejected.append(Outcome(rel, split, "link_loop", f"links to {target}, a folder above it"))
                    else:
                        stack.append((target, rel, ancestors | {target}))
                elif target.is_file():
                    candidates.append(Candidate(rel, split, str(target)))
                else:
                    rejected.append(Outcome(rel, split, "not_a_regular_file", f"links to {target}, which is not a file or folder"))
            elif entry.is_dir(follow_symlinks=False):
                child = Path(entry.path)
                stack.append((child, rel, ancestors | {child}))
            elif entry.is_file(follow_symlinks=False):
                candidates.append(Candidate(rel, split, entry.path))
            else:
                rejected.append(Outcome(rel, split, "not_a_regular_file", "a device, socket or pipe"))
    return candidates, rejected


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def resolve_link(link: Path, root_real: Path) -> tuple[Path, tuple[str, str] | None]:
    """Resolve a symbolic link; return its target, or a (reason, detail) pair when it cannot be used."""
    try:
        target = link.resolve(strict=True)
    except RuntimeError as error:  # Python before 3.13 reports symbolic link loops this way
        return link, ("link_loop", str(error))
    except OSError as error:
        if error.errno == errno.ELOOP:
            return link, ("link_loop", "the chain of symbolic links loops")
        if error.errno == errno.ENOENT:
            return link, ("broken_link", f"links to {os.readlink(link)}, which does not exist")
        return link, ("unreadable", f"the link could not be resolved: {error.strerror}")
    if not is_inside(target, root_real):
        return target, ("link_outside_root", f"links to {target}, outside the image root {root_real}")
    return target, None


def inspect_task(task: tuple[Candidate, int, int]) -> Outcome:
    candidate, min_side, max_pixels = task
    return inspect_file(candidate, min_side, max_pixels)


def inspect_file(candidate: Candidate, min_side: int, max_pixels: int) -> Outcome:
    """Read, hash and decode one file and return its outcome."""
    outcome = Outcome(candidate.path, candidate.split)
    try:
        with open(candidate.source, "rb") as stream:
            data = stream.read()
    except OSError as error:
        outcome.reason, outcome.detail = "unreadable", error.strerror or str(error)
        return outcome
    if not data:
        outcome.reason, outcome.detail = "zero_bytes", "the file is empty"
        return outcome

    try:
        decoded = decode_image(io.BytesIO(data), max_pixels=max_pixels)
    except ImageTooLarge as error:
        outcome.reason, outcome.detail = "too_many_pixels", str(error)
        return outcome
    except UnidentifiedImageError:
        outcome.reason, outcome.detail = "not_an_image", f"no image format recognised in its first bytes {data[:8]!r}"
        return outcome
    except Exception as error:  # noqa: BLE001 - Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError, struct.error and others for damaged files
        outcome.reason = "truncated" if is_truncation(error) else "decode_error"
        outcome.detail = f"{type(error).__name__}: {error}"
        return outcome

    outcome.width, outcome.height = decoded.rgb.size
    outcome.mode = decoded.mode
    outcome.sha256 = hashlib.sha256(data).hexdigest()
    outcome.notes = list(decoded.notes)
    if extension_mismatch(candidate.path, decoded.format):
        outcome.notes.append("extension_mismatch")
    if min(outcome.width, outcome.height) < min_side:
        outcome.reason = "too_small"
        outcome.detail = f"{outcome.width}x{outcome.height}, shorter side below min_side {min_side}"
    return outcome


def is_truncation(error: Exception) -> bool:
    message = str(error).lower()
    return isinstance(error, EOFError) or "truncated" in message or "broken data stream" in message or "premature end" in message


def extension_mismatch(path: str, image_format: str | None) -> bool:
    """Return True when the file's suffix belongs to a Pillow format other than the decoded one."""
    suffix = PurePosixPath(path).suffix.lower()
    expected = Image.registered_extensions().get(suffix)
    return expected is not None and image_format is not None and expected != image_format


def reject_repeats(accepted: list[Outcome]) -> tuple[list[Outcome], list[Outcome]]:
    """Reject, in path order, images whose bytes or whose path without extension repeat an earlier image."""
    first_by_hash: dict[str, str] = {}
    first_by_stem: dict[str, str] = {}
    kept, rejected = [], []
    for outcome in accepted:
        stem = str(PurePosixPath(outcome.path).with_suffix(""))
        if outcome.sha256 in first_by_hash:
            outcome.reason, outcome.detail = "duplicate", f"same bytes as {first_by_hash[outcome.sha256]}"
            rejected.append(outcome)
        elif stem in first_by_stem:
            outcome.reason = "duplicate_stem"
            outcome.detail = f"same path without extension as {first_by_stem[stem]}, so both would share one mask file"
            rejected.append(outcome)
        else:
            first_by_hash[outcome.sha256] = outcome.path
            first_by_stem[stem] = outcome.path
            kept.append(outcome)
    return kept, rejected


def label_of(path: str) -> str:
    """Return the first folder below the split folder, or '' for an image directly in the split folder."""
    parts = PurePosixPath(path).parts
    return parts[1] if len(parts) > 2 else ""


def write_outputs(
    result: Verification,
    splits: list[str],
    manifest: Path,
    rejected: Path,
    summary_path: Path,
    max_rejected_fraction: float,
) -> dict:
    """Write the manifest, the rejection report and the summary; return the summary."""
    manifest_rows = [
        {
            "path": o.path,
            "split": o.split,
            "label": label_of(o.path),
            "width": o.width,
            "height": o.height,
            "mode": o.mode,
            "sha256": o.sha256,
            "notes": join_notes(o.notes),
        }
        for o in result.accepted
    ]
    rejected_rows = [{"path": o.path, "split": o.split, "reason": o.reason, "detail": o.detail} for o in result.rejected]
    write_csv(manifest, pd.DataFrame(manifest_rows, columns=MANIFEST_COLUMNS))
    write_csv(rejected, pd.DataFrame(rejected_rows, columns=REJECTED_COLUMNS))

    total = len(result.accepted) + len(result.rejected)
    per_split = {}
    for split in splits:
        split_accepted = [o for o in result.accepted if o.split == split]
        split_rejected = [o for o in result.rejected if o.split == split]
        per_split[split] = {
            "accepted": len(split_accepted),
            "rejected": len(split_rejected),
            "rejected_by_reason": count_values(o.reason for o in split_rejected),
            "labels": len({label_of(o.path) for o in split_accepted}),
        }
    summary = {
        "splits": per_split,
        "accepted": len(result.accepted),
        "rejected": len(result.rejected),
        "rejected_fraction": len(result.rejected) / total if total else 0.0,
        "max_rejected_fraction": max_rejected_fraction,
        "rejected_by_reason": count_values(o.reason for o in result.rejected),
        "notes": count_values(note for o in result.accepted for note in o.notes),
        "modes": count_values(o.mode for o in result.accepted),
    }
    write_json(summary_path, summary)
    return summary


def check_rejections(result: Verification, summary: dict, max_rejected_fraction: float, report: Path) -> None:
    """Raise ``DataError`` when nothing was accepted or more files were rejected than allowed."""
    if not result.accepted and not result.rejected:
        raise DataError("No files found in the split folders. Check --images and --splits.")
    if not result.accepted:
        raise DataError(f"None of the {len(result.rejected)} files is a usable image; see {report} for the reasons.")
    if summary["rejected_fraction"] > max_rejected_fraction:
        named = describe_files([f"{o.path} ({o.reason})" for o in result.rejected])
        raise DataError(
            f"{summary['rejected']} of {summary['accepted'] + summary['rejected']} files rejected "
            f"({summary['rejected_fraction']:.2%}, allowed {max_rejected_fraction:.2%}): {named}. "
            f"The full list with reasons is in {report}. Fix or remove those files, or allow a fraction "
            "with --max_rejected_fraction (for example 0.01)."
        )
