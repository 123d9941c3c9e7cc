"""Labelled evaluation data: manifest splits (ImageNet layout) and PASCAL VOC2007 image sets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from cast.errors import DataError
from cast.imageio import open_rgb

MANIFEST_COLUMNS = ("path", "split", "label")
# Values of a VOC ImageSets/Main/<class>_<split>.txt line.
VOC_POSITIVE, VOC_NEGATIVE, VOC_DIFFICULT = 1, -1, 0


@dataclass
class LabelledSplit:
    """Image files of one split with one integer class index each."""

    name: str
    paths: list[Path]
    labels: list[int]
    image_ids: list[str]  # manifest paths, relative to the image folder


@dataclass
class MultiLabelSplit:
    """Image files of one split with a target matrix: 1 present, -1 absent, 0 difficult (to be ignored)."""

    name: str
    paths: list[Path]
    image_ids: list[str]
    targets: np.ndarray  # images × classes, int8


class ImageFiles(Dataset):
    """Images decoded with ``open_rgb`` and transformed, returned with their index in the split."""

    def __init__(self, paths: list[Path], transform: Callable):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            image = open_rgb(path)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise DataError(f"cannot decode image {path}: {error}. Rerun 'cast verify-data' on this tree.") from error
        return self.transform(image), index


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by ``cast verify-data`` and check the columns evaluation needs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}. Run 'cast verify-data' to write it.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"cannot parse manifest {path}: {error}") from error
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"manifest {path} lacks the columns {missing}. Expected the output of 'cast verify-data'.")
    for relative in frame["path"]:
        posix = PurePosixPath(relative)
        if posix.is_absolute() or ".." in posix.parts or not relative:
            raise DataError(f"manifest {path}: invalid path {relative!r}. Paths must be relative to --images without '..'.")
    return frame


def manifest_splits(manifest: pd.DataFrame, manifest_path: str | os.PathLike, images: str | os.PathLike, train_split: str, val_split: str) -> tuple[list[str], LabelledSplit, LabelledSplit]:
    """Return the class names (sorted labels of the training split) and the two labelled splits."""
    images = Path(images)
    rows = {}
    for split in (train_split, val_split):
        selected = manifest[manifest["split"] == split]
        if selected.empty:
            available = sorted(set(manifest["split"]))
            raise DataError(f"manifest {manifest_path} has no images in split {split!r}. Its splits are {available}.")
        unlabelled = selected[selected["label"] == ""]
        if not unlabelled.empty:
            raise DataError(
                f"manifest {manifest_path}: {len(unlabelled)} images of split {split!r} have no label "
                f"(first: {unlabelled['path'].iloc[0]}). Classification needs one class folder per label "
                "below the split folder (ImageNet layout)."
            )
        rows[split] = selected.sort_values("path")

    class_names = sorted(set(rows[train_split]["label"]))
    if len(class_names) < 2:
        raise DataError(f"manifest {manifest_path}: split {train_split!r} has {len(class_names)} class, but at least 2 are needed.")
    unknown = sorted(set(rows[val_split]["label"]) - set(class_names))
    if unknown:
        raise DataError(
            f"manifest {manifest_path}: split {val_split!r} has classes {unknown} that split {train_split!r} lacks, "
            "so a classifier trained on it cannot predict them."
        )

    index = {name: position for position, name in enumerate(class_names)}
    splits = []
    for split in (train_split, val_split):
        relative_paths = list(rows[split]["path"])
        paths = [images / relative for relative in relative_paths]
        check_files_exist(paths, f"manifest {manifest_path}, split {split!r}")
        splits.append(LabelledSplit(split, paths, [index[label] for label in rows[split]["label"]], relative_paths))
    return class_names, splits[0], splits[1]


def manifest_as_multilabel(split: LabelledSplit, num_classes: int) -> MultiLabelSplit:
    """Turn single-label images into one-vs-rest targets: 1 for the image's class, -1 for every other."""
    targets = np.full((len(split.paths), num_classes), VOC_NEGATIVE, dtype=np.int8)
    targets[np.arange(len(split.paths)), split.labels] = VOC_POSITIVE
    return MultiLabelSplit(split.name, split.paths, split.image_ids, targets)


def voc_class_names(voc_root: str | os.PathLike, split: str) -> list[str]:
    """Return the classes that have an ``ImageSets/Main/<class>_<split>.txt`` file."""
    folder = Path(voc_root) / "ImageSets" / "Main"
    if not folder.is_dir():
        raise DataError(f"{folder} not found: --voc_root must be a VOC2007 folder with JPEGImages and ImageSets/Main.")
    suffix = f"_{split}.txt"
    names = sorted(path.name[: -len(suffix)] for path in folder.glob(f"*{suffix}"))
    if not names:
        raise DataError(f"{folder} has no <class>{suffix} files. Check --train_split and --val_split.")
    return names


def read_voc_split(voc_root: str | os.PathLike, split: str, class_names: list[str]) -> MultiLabelSplit:
    """Read the per-class image sets of one split into a target matrix (1, -1, or 0 for difficult)."""
    root = Path(voc_root)
    labels_per_class = []
    for name in class_names:
        path = root / "ImageSets" / "Main" / f"{name}_{split}.txt"
        if not path.is_file():
            raise DataError(f"{path} not found: every class needs an image set for split {split!r}.")
        labels_per_class.append(read_image_set(path))

    image_ids = list(labels_per_class[0])
    for name, labels in zip(class_names, labels_per_class):
        if set(labels) != set(image_ids):
            raise DataError(
                f"{root}/ImageSets/Main/{name}_{split}.txt lists other images than "
                f"{class_names[0]}_{split}.txt. All classes of a split must list the same images."
            )
    targets = np.array([[labels[image_id] for labels in labels_per_class] for image_id in image_ids], dtype=np.int8)
    paths = [root / "JPEGImages" / f"{image_id}.jpg" for image_id in image_ids]
    check_files_exist(paths, f"VOC split {split!r} of {root}")
    return MultiLabelSplit(split, paths, image_ids, targets)


def read_image_set(path: Path) -> dict[str, int]:
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in {"1", "-1", "0"}:
            raise DataError(f"{path}:{number}: expected '<image id> <1|-1|0>', found {line!r}.")
        labels[fields[0]] = int(fields[1])
    if not labels:
        raise DataError(f"{path} lists no images.")
    return labels


def check_files_exist(paths: list[Path], where: str) -> None:
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DataError(
            f"{where}: {len(missing)} of {len(paths)} image files not found (first: {missing[0]}). "
            "Check --images / --voc_root."
        )
