"""Tests of ``cast check-masks``: mask layouts, conversions, statistics and rejection reasons."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cast.data.masks import mask_candidates, mask_statistics
from cast.imageio import open_mask

WIDTH, HEIGHT = 256, 192


def rectangle(x1: int, y1: int, x2: int, y2: int, width: int = WIDTH, height: int = HEIGHT, value: int = 255) -> np.ndarray:
    array = np.zeros((height, width), dtype=np.uint8)
    array[y1:y2, x1:x2] = value
    return array


def save_gray(path: Path, array: np.ndarray, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


@pytest.fixture
def dataset(tmp_path, data_photos, data_cli):
    """Images copied from the sample, their manifest from verify-data, and a mask tree with one case per image."""
    images = tmp_path / "images"
    names = [
        "good", "wrong_size", "black", "one_pixel", "deep16", "rgba", "jpeg_only", "rgb", "palette",
        "missing", "garbage", "dim", "outside_link",
    ]
    for index, name in enumerate(names):
        target = images / "train" / "photos" / f"{name}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(data_photos[index * 7]).convert("RGB").resize((WIDTH, HEIGHT)).save(target, quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = images / "val" / "rotated.jpg"
    rotated.parent.mkdir(parents=True)
    Image.open(data_photos[3]).convert("RGB").resize((WIDTH, HEIGHT)).save(rotated, quality=90, exif=exif)
    status, _ = data_cli(
        "verify-data", "--images", images, "--manifest", tmp_path / "manifest.csv",
        "--rejected", tmp_path / "verify_rejected.csv", "--summary", tmp_path / "verify.json", "--workers", "1",
    )
    assert status == 0

    masks = tmp_path / "masks"
    folder = masks / "train" / "photos"
    save_gray(folder / "good.png", rectangle(10, 20, 110, 70))
    save_gray(folder / "wrong_size.png", rectangle(0, 0, 50, 50, width=200, height=150))
    save_gray(folder / "black.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    save_gray(folder / "one_pixel.png", rectangle(5, 5, 6, 6))
    save_gray(folder / "deep16.png", rectangle(0, 0, 128, 96).astype(np.uint16) * 257)
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the left half is opaque
    rgba[:, : WIDTH // 2, 3] = 255
    save_gray(folder / "rgba.png", rgba)
    save_gray(folder / "jpeg_only.jpg", rectangle(64, 48, 192, 144), quality=75)
    save_gray(folder / "rgb.png", np.repeat(rectangle(0, 0, 64, 64)[..., None], 3, axis=2))
    save_gray(folder / "palette.png", rectangle(0, 0, 32, 32))
    Image.open(folder / "palette.png").convert("P").save(folder / "palette.png")
    (folder / "garbage.png").write_bytes(b"not a png at all")
    save_gray(folder / "dim.png", rectangle(0, 0, 100, 100, value=100))
    outside = tmp_path / "elsewhere.png"
    save_gray(outside, rectangle(0, 0, 10, 10))
    os.symlink(outside, folder / "outside_link.png")
    save_gray(masks / "val" / "rotated.png", rectangle(0, 0, HEIGHT, 100, width=HEIGHT, height=WIDTH))
    return tmp_path


def check(data_cli, root: Path, *options: object) -> tuple[int, str, pd.DataFrame, pd.DataFrame, dict]:
    status, log = data_cli(
        "check-masks", "--images", root / "images", "--manifest", root / "manifest.csv", "--masks", root / "masks",
        "--pairs", root / "pairs.csv", "--rejected", root / "rejected.csv", "--summary", root / "summary.json",
        "--workers", "1", *options,
    )
    pairs = pd.read_csv(root / "pairs.csv", dtype=str, keep_default_na=False) if (root / "pairs.csv").exists() else None
    rejected = pd.read_csv(root / "rejected.csv", dtype=str, keep_default_na=False) if (root / "rejected.csv").exists() else None
    summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").exists() else None
    return status, log, pairs, rejected, summary


def test_check_masks_outcomes(dataset, data_cli):
    status, log, pairs, rejected, summary = check(data_cli, dataset)
    assert status == 0
    assert dict(zip(rejected["image"], rejected["reason"])) == {
        "train/photos/wrong_size.jpg": "size_mismatch",
        "train/photos/black.jpg": "empty_mask",
        "train/photos/one_pixel.jpg": "too_small_salient_fraction",
        "train/photos/missing.jpg": "missing_mask",
        "train/photos/garbage.jpg": "unreadable_mask",
        "train/photos/dim.jpg": "empty_mask",
        "train/photos/outside_link.jpg": "mask_outside_root",
    }
    notes = dict(zip(pairs["image"], pairs["notes"]))
    assert notes == {
        "train/photos/good.jpg": "",
        "train/photos/deep16.jpg": "converted_from_i16",
        "train/photos/rgba.jpg": "converted_from_rgba",
        "train/photos/jpeg_only.jpg": "jpeg_mask",
        "train/photos/rgb.jpg": "converted_from_rgb",
        "train/photos/palette.jpg": "converted_from_p",
        "val/rotated.jpg": "",
    }
    assert pairs["image"].tolist() == sorted(notes)
    assert "1 mask(s) are JPEG files" in log
    assert summary["usable"] == 7
    assert summary["rejected_by_reason"]["empty_mask"] == 2


def test_check_masks_details(dataset, data_cli):
    _, _, pairs, rejected, _ = check(data_cli, dataset)
    details = dict(zip(rejected["image"], rejected["detail"]))
    assert details["train/photos/wrong_size.jpg"].startswith("mask is 200x150, image is 256x192")
    assert details["train/photos/dim.jpg"] == "no value above threshold 128; the largest value is 100"
    masks = dict(zip(rejected["image"], rejected["mask"]))
    assert masks["train/photos/missing.jpg"] == "train/photos/missing.png"
    assert dict(zip(pairs["image"], pairs["mask"]))["train/photos/jpeg_only.jpg"] == "train/photos/jpeg_only.jpg"


def test_check_masks_statistics(dataset, data_cli):
    _, _, pairs, _, _ = check(data_cli, dataset)
    rows = pairs.set_index("image")
    good = rows.loc["train/photos/good.jpg"]
    assert [int(good[c]) for c in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")] == [10, 20, 110, 70]
    assert float(good["salient_fraction"]) == pytest.approx(100 * 50 / (WIDTH * HEIGHT), abs=1e-6)
    assert float(good["com_x"]) == pytest.approx(59.5)
    assert float(good["com_y"]) == pytest.approx(44.5)
    assert (int(good["width"]), int(good["height"]), good["split"], good["label"]) == (WIDTH, HEIGHT, "train", "photos")
    # Only the opaque left half of the white RGBA mask is salient.
    rgba = rows.loc["train/photos/rgba.jpg"]
    assert float(rgba["salient_fraction"]) == pytest.approx(0.5)
    assert int(rgba["bbox_x2"]) == WIDTH // 2
    # The 16-bit mask stores 0 and 65535, which become 0 and 255.
    assert float(rows.loc["train/photos/deep16.jpg"]["salient_fraction"]) == pytest.approx(0.25)
    # The mask of the EXIF-rotated image has the upright size (192 wide, 256 high).
    rotated = rows.loc["val/rotated.jpg"]
    assert (int(rotated["width"]), int(rotated["height"])) == (HEIGHT, WIDTH)
    assert float(rotated["salient_fraction"]) == pytest.approx(100 / WIDTH)


def test_check_masks_threshold_option(dataset, data_cli):
    _, _, pairs, rejected, _ = check(data_cli, dataset, "--threshold", "99")
    assert "train/photos/dim.jpg" in set(pairs["image"])
    assert "train/photos/black.jpg" in set(rejected["image"])


def test_check_masks_split_filter(dataset, data_cli):
    status, _, pairs, rejected, summary = check(data_cli, dataset, "--splits", "val")
    assert status == 0
    assert pairs["image"].tolist() == ["val/rotated.jpg"]
    assert rejected.empty
    assert list(summary["splits"]) == ["val"]


def test_check_masks_unknown_split(dataset, data_cli):
    status, log, *_ = check(data_cli, dataset, "--splits", "test")
    assert status == 1
    assert "Splits ['test'] are not in manifest" in log


def test_check_masks_min_usable_pairs(dataset, data_cli):
    status, log, pairs, rejected, _ = check(data_cli, dataset, "--min_usable_pairs", "8")
    assert status == 1
    assert "Only 7 usable (image, mask) pairs, fewer than min_usable_pairs 8" in log
    assert len(pairs) == 7
    assert len(rejected) == 7


def test_check_masks_missing_image(dataset, data_cli):
    (dataset / "images" / "train" / "photos" / "good.jpg").unlink()
    _, _, _, rejected, _ = check(data_cli, dataset)
    assert dict(zip(rejected["image"], rejected["reason"]))["train/photos/good.jpg"] == "missing_image"


def test_check_masks_parent_layout(tmp_path, data_photos, data_cli):
    images = tmp_path / "images"
    for rel, photo in [("train/a/b/x.jpg", 0), ("train/c/b/x.jpg", 1), ("train/y.jpg", 2)]:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_photos[photo], images / rel)
    status, _ = data_cli(
        "verify-data", "--images", images, "--splits", "train", "--manifest", tmp_path / "manifest.csv",
        "--rejected", tmp_path / "verify_rejected.csv", "--summary", tmp_path / "verify.json", "--workers", "1",
    )
    assert status == 0
    sizes = {rel: Image.open(images / rel).size for rel in ("train/a/b/x.jpg", "train/y.jpg")}
    save_gray(tmp_path / "masks/train/b/x.png", rectangle(0, 0, 20, 20, *sizes["train/a/b/x.jpg"]))
    save_gray(tmp_path / "masks/train/train/y.png", rectangle(0, 0, 20, 20, *sizes["train/y.jpg"]))

    status, _, pairs, rejected, _ = check(data_cli, tmp_path, "--mask_layout", "parent")
    assert status == 0
    assert dict(zip(pairs["image"], pairs["mask"])) == {"train/a/b/x.jpg": "train/b/x.png", "train/y.jpg": "train/train/y.png"}
    assert rejected["reason"].tolist() == ["shared_mask"]
    assert rejected["image"].tolist() == ["train/c/b/x.jpg"]
    assert "train/a/b/x.jpg" in rejected["detail"][0]


def test_mask_candidates_layouts():
    assert [str(p) for p in mask_candidates("train/n01/x.JPEG", "mirrored")] == [
        "train/n01/x.png", "train/n01/x.jpg", "train/n01/x.jpeg",
    ]
    assert str(mask_candidates("train2017/000001.jpg", "parent")[0]) == "train2017/train2017/000001.png"
    assert str(mask_candidates("train/a/b/c.d.jpg", "parent")[0]) == "train/b/c.d.png"


def test_mask_statistics_single_pixel():
    salient = np.zeros((5, 7), dtype=bool)
    salient[2, 3] = True
    assert mask_statistics(salient) == ((3, 2, 4, 3), (3.0, 2.0))


def test_open_mask_matches_check_masks(dataset):
    """Training reads masks with open_mask; it must see the same salient pixels that check-masks counted."""
    folder = dataset / "masks" / "train" / "photos"
    assert open_mask(folder / "rgba.png").mean() == pytest.approx(0.5)
    assert open_mask(folder / "deep16.png").mean() == pytest.approx(0.25)
    assert not open_mask(folder / "dim.png").any()
    assert open_mask(folder / "dim.png", threshold=99).sum() == 100 * 100
