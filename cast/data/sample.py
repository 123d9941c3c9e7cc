"""Build the bundled sample of real photographs from the Debian package ``gcompris-qt-data``.

The package stores GCompris' activity resources in Qt binary resource files
(``usr/share/gcompris-qt/rcc/*.rcc``). Several activities carry photographs
taken from Wikimedia Commons and similar sites, with a ``README`` per folder
that lists author (``Copyright:``), ``Source:``, ``License:`` and ``Files:``
for each photo. This module reads those archives, keeps the photos whose
licence allows redistribution, downscales them to JPEG, and splits them into
``train`` and ``val`` by a hash of their source address, so every rebuild from
the same package version yields the same files.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cast.data.rcc import RccArchive
from cast.errors import DataError
from cast.imageio import open_rgb
from cast.io import atomic_open, write_text

log = logging.getLogger(__name__)

PACKAGE = "gcompris-qt-data"
RCC_FOLDER = "usr/share/gcompris-qt/rcc"
PHOTO_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
OUTPUT_ENTRIES = {"images", "ATTRIBUTION.csv", "LICENSES.md"}


@dataclass(frozen=True)
class PhotoFolder:
    """A folder inside one resource archive whose photos form (part of) one class."""

    label: str
    archive: str
    folder: str


ACTIVITIES = "gcompris/src/activities"
PHOTO_FOLDERS = (
    PhotoFolder("animals", "explore_world_animals.rcc", f"{ACTIVITIES}/explore_world_animals/resource/animals"),
    PhotoFolder("animals", "explore_farm_animals.rcc", f"{ACTIVITIES}/explore_farm_animals/resource/animals"),
    PhotoFolder("fish", "categorization.rcc", f"{ACTIVITIES}/categorization/resource/images/fishes"),
    PhotoFolder("monuments", "categorization.rcc", f"{ACTIVITIES}/categorization/resource/images/monuments"),
    PhotoFolder("monuments", "explore_monuments.rcc", f"{ACTIVITIES}/explore_monuments/resource"),
    PhotoFolder("tools", "categorization.rcc", f"{ACTIVITIES}/categorization/resource/images/tools"),
    PhotoFolder("renewable_energy", "categorization.rcc", f"{ACTIVITIES}/categorization/resource/images/renewable"),
)

LICENCE_URLS = {
    "Public Domain": "none: the source page declares the photo public domain",
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
    "CC-BY-2.0": "https://creativecommons.org/licenses/by/2.0/legalcode",
    "CC-BY-3.0": "https://creativecommons.org/licenses/by/3.0/legalcode",
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/legalcode",
    "CC-BY-SA-2.0": "https://creativecommons.org/licenses/by-sa/2.0/legalcode",
    "CC-BY-SA-3.0": "https://creativecommons.org/licenses/by-sa/3.0/legalcode",
    "CC-BY-SA-4.0": "https://creativecommons.org/licenses/by-sa/4.0/legalcode",
}


@dataclass(frozen=True)
class CreditEntry:
    """One block of a GCompris ``README``: who made the listed files, where from, under which licence."""

    author: str
    source: str
    licence: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class SamplePhoto:
    """A photo chosen for the sample, with its place in the output tree."""

    label: str
    name: str  # output file name, ``<stem>.jpg``
    split: str
    author: str
    source: str
    licence: str
    original: str  # ``<archive>:<path inside the archive>``
    data: bytes  # the file as stored in the package, decompressed


def parse_credits(text: str) -> list[CreditEntry]:
    """Parse a GCompris ``README``: blocks of ``Key: value`` lines, the ``Files:`` key followed by one name a line."""
    entries = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            match = re.match(r"^(Copyright|Source|License|Licence|Files)\s*:\s*(.*)$", line.strip())
            if match:
                key, value = match.group(1).lower(), match.group(2).strip()
                in_files = key == "files"
                if in_files:
                    files.extend(value.split())
                else:
                    fields["licence" if key.startswith("licen") else key] = value
            elif in_files and line.strip():
                files.append(line.strip())
        if files:
            entries.append(
                CreditEntry(
                    author=fields.get("copyright", ""),
                    source=fields.get("source", ""),
                    licence=fields.get("licence", ""),
                    files=tuple(files),
                )
            )
    return entries


def normalize_licence(text: str) -> str | None:
    """Map a licence as written in a README to an identifier in ``LICENCE_URLS``, or None when redistribution is not allowed or unknown."""
    lowered = text.strip().lower()
    if lowered in {"public domain", "pd"}:
        return "Public Domain"
    if re.fullmatch(r"cc0(?:[- ]1\.0)?", lowered):
        return "CC0-1.0"
    match = re.fullmatch(r"cc[- ]by([- ]sa)?[- ]?(\d\.\d)", lowered)
    if match:
        identifier = f"CC-BY{'-SA' if match.group(1) else ''}-{match.group(2)}"
        return identifier if identifier in LICENCE_URLS else None
    return None


def collect_photos(rcc_dir: Path, val_fraction: float) -> list[SamplePhoto]:
    """Read the photo folders from the archives in ``rcc_dir`` and choose the photos of the sample."""
    archives: dict[str, RccArchive] = {}
    chosen: list[tuple[str, str, CreditEntry, str, bytes]] = []
    seen_sources: dict[str, str] = {}
    for photo_folder in PHOTO_FOLDERS:
        if photo_folder.archive not in archives:
            path = rcc_dir / photo_folder.archive
            if not path.is_file():
                raise DataError(f"{path} not found, so the package layout changed. Update the archive names in PHOTO_FOLDERS.")
            archives[photo_folder.archive] = RccArchive(path)
        archive = archives[photo_folder.archive]
        chosen.extend(_photos_of_folder(archive, photo_folder, seen_sources))

    names_taken: set[tuple[str, str]] = set()
    photos = []
    for label, archive_path, entry, archive_name, data in chosen:
        stem = Path(archive_path).stem
        name = f"{stem}.jpg"
        counter = 2
        while (label, name) in names_taken:
            name = f"{stem}_{counter}.jpg"
            counter += 1
        names_taken.add((label, name))
        photos.append(
            SamplePhoto(
                label=label,
                name=name,
                split="train",
                author=entry.author,
                source=entry.source,
                licence=normalize_licence(entry.licence) or "",
                original=f"{archive_name}:{archive_path}",
                data=data,
            )
        )
    return assign_splits(photos, val_fraction)


def _photos_of_folder(
    archive: RccArchive, photo_folder: PhotoFolder, seen_sources: dict[str, str]
) -> list[tuple[str, str, CreditEntry, str, bytes]]:
    readme = f"{photo_folder.folder}/README"
    if readme not in archive.files:
        raise DataError(f"{archive.path}: {readme} not found, so the package layout changed. Update PHOTO_FOLDERS.")
    credits = parse_credits(archive.read(readme).decode("utf-8"))
    credited: dict[str, CreditEntry] = {}
    for entry in credits:
        for name in entry.files:
            credited[f"{photo_folder.folder}/{name}"] = entry

    found = []
    for path in sorted(archive.files):
        if not path.startswith(photo_folder.folder + "/") or not path.lower().endswith(PHOTO_SUFFIXES):
            continue
        entry = credited.get(path)
        if entry is None:
            log.warning("skipped %s:%s because its README has no credit entry for it", archive.path.name, path)
            continue
        licence = normalize_licence(entry.licence)
        if licence is None:
            log.info("skipped %s:%s because its licence %r does not allow redistribution here", archive.path.name, path, entry.licence)
            continue
        if not entry.author or not entry.source:
            log.warning("skipped %s:%s because its credit entry lacks an author or a source", archive.path.name, path)
            continue
        source_key = entry.source.strip().lower()
        if source_key in seen_sources:
            log.info("skipped %s:%s because it shows the same source photo as %s", archive.path.name, path, seen_sources[source_key])
            continue
        seen_sources[source_key] = f"{archive.path.name}:{path}"
        found.append((photo_folder.label, path, entry, archive.path.name, archive.read(path)))
    return found


def assign_splits(photos: list[SamplePhoto], val_fraction: float) -> list[SamplePhoto]:
    """Put ``round(val_fraction * n)`` photos of each class into ``val``, chosen by the SHA-256 of their source address."""
    result = []
    for label in sorted({photo.label for photo in photos}):
        members = sorted((p for p in photos if p.label == label), key=lambda p: hashlib.sha256(p.source.encode()).hexdigest())
        val_count = round(val_fraction * len(members))
        for index, photo in enumerate(members):
            split = "val" if index < val_count else "train"
            result.append(SamplePhoto(**{**photo.__dict__, "split": split}))
    return sorted(result, key=lambda p: (p.split, p.label, p.name))


def encode_jpeg(data: bytes, max_side: int, quality: int) -> bytes:
    """Decode a photo, shrink it so its longer side is at most ``max_side`` pixels, and encode it as baseline JPEG."""
    image = open_rgb(io.BytesIO(data))
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def write_sample(photos: list[SamplePhoto], out_dir: Path, max_side: int, quality: int, package_version: str) -> None:
    """Write the images, ``ATTRIBUTION.csv`` and ``LICENSES.md`` of the sample into the empty folder ``out_dir``."""
    for photo in photos:
        target = out_dir / "images" / photo.split / photo.label / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_jpeg(photo.data, max_side, quality))

    with atomic_open(out_dir / "ATTRIBUTION.csv", "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["file", "class", "author", "source", "licence", "original"])
        for photo in photos:
            file = f"images/{photo.split}/{photo.label}/{photo.name}"
            writer.writerow([file, photo.label, photo.author, photo.source, photo.licence, photo.original])

    write_text(out_dir / "LICENSES.md", licences_markdown(photos, max_side, package_version))


def licences_markdown(photos: list[SamplePhoto], max_side: int, package_version: str) -> str:
    """Render ``LICENSES.md``: provenance, the licences in use with their legal code, and the share-alike terms."""
    counts: dict[str, int] = {}
    for photo in photos:
        counts[photo.licence] = counts.get(photo.licence, 0) + 1
    lines = [
        "# Licences of the sample photographs",
        "",
        f"The {len(photos)} photographs under `images/` come from the Debian package",
        f"`{PACKAGE}` version {package_version} (the GCompris educational suite). They were",
        "extracted from its Qt resource files by `scripts/build_sample.py`, downscaled so",
        f"that the longer side is at most {max_side} pixels, and re-encoded as JPEG.",
        "",
        "Each photo's author, source address and licence are in `ATTRIBUTION.csv`, copied",
        "from the `README` that GCompris ships in each image folder. The `original` column",
        "names the resource file and the path inside it. Photos under any licence other than",
        "the ones below were left out.",
        "",
        "The package's Debian copyright file gives GPL-3+ for the package as a whole and",
        "does not list these photos separately. The terms used here are the per-photo ones",
        "of the GCompris README files and of the source pages they cite.",
        "",
        "| licence | photos | legal code |",
        "|---|---|---|",
    ]
    for licence in sorted(counts):
        lines.append(f"| {licence} | {counts[licence]} | {LICENCE_URLS[licence]} |")
    lines += [
        "",
        "Public Domain and CC0-1.0 photos carry no conditions; their authors are credited",
        "all the same.",
    ]
    share_alike = [p for p in photos if p.licence.startswith("CC-BY-SA")]
    attribution = [p for p in photos if p.licence.startswith("CC-BY") and not p.licence.startswith("CC-BY-SA")]
    if attribution or share_alike:
        lines += [
            "",
            "CC-BY and CC-BY-SA photos may be redistributed and adapted on condition that the",
            "author is credited, the licence is named with a link to it, and the changes are",
            "stated. The changes made here: the photo was scaled down and re-encoded as JPEG",
            "(GCompris had already scaled it down and converted it to WebP). For CC-BY-SA,",
            "adapted versions, including these files, must be shared under the same licence,",
            "so these files stay under CC-BY-SA whatever licence the rest of this project has.",
            "",
            "| file | licence | author | source |",
            "|---|---|---|---|",
        ]
        for photo in attribution + share_alike:
            lines.append(
                f"| images/{photo.split}/{photo.label}/{photo.name} | {photo.licence} | {photo.author} | {photo.source} |"
            )
    lines.append("")
    return "\n".join(lines)


def fetch_package(work_dir: Path) -> Path:
    """Download the package's ``.deb`` into ``work_dir`` with ``apt-get download``, running ``apt-get update`` once if needed."""
    command = ["apt-get", "download", PACKAGE]
    if shutil.which("apt-get") is None:
        raise DataError("apt-get not found. Download the package on a Debian system and pass it with --deb.")
    result = subprocess.run(command, cwd=work_dir, capture_output=True, text=True)
    if result.returncode != 0:
        log.info("apt-get download failed (%s), so running apt-get update once and retrying", result.stderr.strip())
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        if update.returncode != 0:
            raise DataError(f"apt-get update failed: {update.stderr.strip()}. Pass an already downloaded package with --deb.")
        result = subprocess.run(command, cwd=work_dir, capture_output=True, text=True)
        if result.returncode != 0:
            raise DataError(f"apt-get download {PACKAGE} failed: {result.stderr.strip()}. Pass the .deb file with --deb.")
    debs = sorted(work_dir.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise DataError(f"apt-get download {PACKAGE} reported success but wrote no .deb file into {work_dir}.")
    return debs[0]


def extract_package(deb: Path, work_dir: Path) -> tuple[Path, str]:
    """Unpack ``deb`` with ``dpkg-deb -x`` and return the folder of resource files and the package version."""
    if shutil.which("dpkg-deb") is None:
        raise DataError("dpkg-deb not found. Install the Debian package 'dpkg' to unpack the .deb file.")
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"], capture_output=True, text=True)
    if version.returncode != 0:
        raise DataError(f"{deb}: not a readable Debian package ({version.stderr.strip()}).")
    fields = dict(line.split(": ", 1) for line in version.stdout.strip().splitlines() if ": " in line)
    if fields.get("Package") != PACKAGE:
        raise DataError(f"{deb}: package is {fields.get('Package')!r}, expected {PACKAGE!r}.")
    unpacked = work_dir / "unpacked"
    result = subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], capture_output=True, text=True)
    if result.returncode != 0:
        raise DataError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()}")
    return unpacked / RCC_FOLDER, fields.get("Version", "unknown")


def replace_output(staging: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished sample from ``staging`` to ``out_dir``, removing an earlier sample there only with ``overwrite``."""
    if out_dir.exists():
        entries = {entry.name for entry in out_dir.iterdir()}
        if entries and not overwrite:
            raise DataError(f"{out_dir} is not empty. Pass --overwrite to replace the sample there, or choose another --out.")
        unexpected = entries - OUTPUT_ENTRIES
        if unexpected:
            raise DataError(
                f"{out_dir} contains {sorted(unexpected)}, which this builder did not write, so it will not delete the folder. "
                "Choose another --out or move those files."
            )
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out_dir)


def build_sample(out_dir: Path, deb: Path | None, max_side: int, quality: int, val_fraction: float, overwrite: bool) -> list[SamplePhoto]:
    """Build the sample into ``out_dir`` from ``deb`` (downloaded with apt-get when None)."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cast-sample-") as work:
        work_dir = Path(work)
        if deb is None:
            deb = fetch_package(work_dir)
        rcc_dir, version = extract_package(deb, work_dir)
        log.info("read %s version %s from %s", PACKAGE, version, deb)
        photos = collect_photos(rcc_dir, val_fraction)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        try:
            write_sample(photos, staging, max_side, quality, version)
            replace_output(staging, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    for split in ("train", "val"):
        per_class = {label: sum(1 for p in photos if p.split == split and p.label == label) for label in sorted({p.label for p in photos})}
        log.info("%s: %d photos %s", split, sum(per_class.values()), per_class)
    return photos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="output folder (default: data/sample)")
    parser.add_argument("--deb", type=Path, help=f"an already downloaded {PACKAGE} .deb file (default: run apt-get download)")
    parser.add_argument("--max-side", "--max_side", dest="max_side", type=int, default=256, help="longer side of the output images in pixels (default: 256)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality, 1-95 (default: 90)")
    parser.add_argument("--val-fraction", "--val_fraction", dest="val_fraction", type=float, default=0.2, help="fraction of each class put into val (default: 0.2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier sample in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality must be in 1..95, got {args.quality}")
    try:
        build_sample(args.out, args.deb, args.max_side, args.quality, args.val_fraction, args.overwrite)
    except DataError as error:
        log.error("%s", error)
        return 1
    return 0
