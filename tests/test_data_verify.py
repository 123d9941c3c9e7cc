"""Tests of ``cast verify-data`` on a corpus of good and bad files built from sample photos."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cast.data.verify import verify_tree
from cast.errors import DataError
from cast.imageio import decode_image, open_rgb

# Expected outcome of every file in the corpus: accepted with (width, height, mode, notes), or rejected with a reason.
ACCEPTED = {
    "train/animals/good.jpg": (256, 192, "RGB", ""),
    "train/animals/inside_link.jpg": (256, 192, "RGB", ""),
    "train/fish/cmyk.jpg": (256, 192, "CMYK", "converted_from_cmyk"),
    "train/fish/rotated.jpg": (192, 256, "RGB", "exif_rotated"),
    "train/fish/gray.png": (256, 192, "L", "converted_from_l"),
    "train/fish/palette.png": (256, 192, "P", "converted_from_p"),
    "train/fish/deep.png": (256, 192, "I;16", "converted_from_i16"),
    "train/fish/alpha.png": (256, 192, "RGBA", "converted_from_rgba"),
    "train/fish/png_named.jpg": (256, 192, "RGB", "extension_mismatch"),
    "train/fish/twin.jpg": (256, 192, "RGB", ""),
    "train/top level.jpg": (256, 192, "RGB", ""),
    "train/a/b/c/deep nested.jpg": (256, 192, "RGB", ""),
    "train/Ñandú y café/foto ñ.jpg": (256, 192, "RGB", ""),
    "val/tools/hammer.jpg": (256, 192, "RGB", ""),
}
REJECTED = {
    "train/animals/truncated.jpg": "truncated",
    "train/animals/empty.jpg": "zero_bytes",
    "train/animals/notes.jpg": "not_an_image",
    "train/animals/outside_link.jpg": "link_outside_root",
    "train/animals/broken_link.jpg": "broken_link",
    "train/animals/loop_a.jpg": "link_loop",
    "train/animals/loop_b.jpg": "link_loop",
    "train/animals/up": "link_loop",
    "train/fish/tiny.png": "too_small",
    "train/fish/bomb.png": "too_many_pixels",
    "train/fish/twin.png": "duplicate_stem",
    "train/fish/x_linked_twin.jpg": "duplicate",
    "val/animals/copy.jpg": "duplicate",
}


def png_header_only(width: int, height: int) -> bytes:
    """Return a PNG file whose header declares ``width`` x ``height`` 1-bit pixels but whose data is far too short."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def build_corpus(base: Path, photos: list[Path]) -> Path:
    """Write the corpus below ``base/images`` from three different sample photos and return the image root."""
    root = base / "images"
    photo = Image.open(photos[0]).convert("RGB")
    assert photo.size == (256, 192), "the corpus expects a 256x192 sample photo first"
    other = Image.open(photos[1]).convert("RGB").resize((256, 192))
    third = Image.open(photos[2]).convert("RGB").resize((256, 192))

    def path(rel: str) -> Path:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    shutil.copyfile(photos[0], path("train/animals/good.jpg"))
    data = photos[0].read_bytes()
    path("train/animals/truncated.jpg").write_bytes(data[: len(data) // 2])
    path("train/animals/empty.jpg").write_bytes(b"")
    path("train/animals/notes.jpg").write_text("these are notes, not a photo\n")
    shutil.copyfile(photos[0], path("val/animals/copy.jpg"))

    photo.convert("CMYK").save(path("train/fish/cmyk.jpg"), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display upright
    other.save(path("train/fish/rotated.jpg"), quality=90, exif=exif)
    other.convert("L").save(path("train/fish/gray.png"))
    other.convert("P", palette=Image.Palette.ADAPTIVE).save(path("train/fish/palette.png"))
    deep = (np.asarray(other.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(path("train/fish/deep.png"))
    rgba = third.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(path("train/fish/alpha.png"))
    third.save(path("train/fish/png_named.jpg"), format="PNG")
    third.resize((10, 10)).save(path("train/fish/tiny.png"))
    path("train/fish/bomb.png").write_bytes(png_header_only(30000, 30000))
    other.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path("train/fish/twin.jpg"), quality=90)
    third.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(path("train/fish/twin.png"))

    other.transpose(Image.Transpose.ROTATE_180).save(path("train/top level.jpg"), quality=85)
    third.transpose(Image.Transpose.ROTATE_180).save(path("train/a/b/c/deep nested.jpg"), quality=85)
    photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(path("train/Ñandú y café/foto ñ.jpg"), quality=85)
    third.save(path("val/tools/hammer.jpg"), quality=80)

    # A folder inside the root but outside every split, and one outside the root.
    photo.transpose(Image.Transpose.ROTATE_90).resize((256, 192)).save(path("originals/kept.jpg"), quality=80)
    outside = base / "outside" / "elsewhere.jpg"
    outside.parent.mkdir()
    photo.save(outside, quality=70)

    links = root / "train" / "animals"
    os.symlink("../../originals/kept.jpg", links / "inside_link.jpg")
    os.symlink(str(outside), links / "outside_link.jpg")
    os.symlink("missing.jpg", links / "broken_link.jpg")
    os.symlink("loop_b.jpg", links / "loop_a.jpg")
    os.symlink("loop_a.jpg", links / "loop_b.jpg")
    os.symlink("..", links / "up")
    os.symlink("twin.jpg", root / "train" / "fish" / "x_linked_twin.jpg")
    return root


@pytest.fixture
def corpus(tmp_path, data_photos) -> Path:
    return build_corpus(tmp_path, data_photos)


def run_verify(data_cli, root: Path, out: Path, *options: object) -> tuple[int, str, pd.DataFrame, pd.DataFrame, dict]:
    status, log = data_cli(
        "verify-data", "--images", root, "--splits", "train", "val",
        "--manifest", out / "manifest.csv", "--rejected", out / "rejected.csv", "--summary", out / "summary.json",
        "--workers", "1", *options,
    )
    manifest = pd.read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    rejected = pd.read_csv(out / "rejected.csv", dtype=str, keep_default_na=False)
    summary = json.loads((out / "summary.json").read_text())
    return status, log, manifest, rejected, summary


def test_verify_corpus_accepted_files(corpus, tmp_path, data_cli):
    status, _, manifest, _, _ = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", "1")
    assert status == 0
    assert manifest["path"].tolist() == sorted(ACCEPTED)
    for row in manifest.itertuples():
        width, height, mode, notes = ACCEPTED[row.path]
        assert (int(row.width), int(row.height)) == (width, height), row.path
        assert row.mode == mode, row.path
        assert row.notes == notes, row.path
        assert row.split == row.path.split("/")[0]


def test_verify_corpus_rejected_reasons(corpus, tmp_path, data_cli):
    _, _, _, rejected, summary = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", "1")
    assert dict(zip(rejected["path"], rejected["reason"])) == REJECTED
    assert rejected["path"].tolist() == sorted(REJECTED)
    details = dict(zip(rejected["path"], rejected["detail"]))
    assert details["val/animals/copy.jpg"] == "same bytes as train/animals/good.jpg"
    assert details["train/fish/x_linked_twin.jpg"] == "same bytes as train/fish/twin.jpg"
    assert "train/fish/twin.jpg" in details["train/fish/twin.png"]
    assert "30000x30000" in details["train/fish/bomb.png"]
    assert summary["accepted"] == len(ACCEPTED)
    assert summary["rejected"] == len(REJECTED)
    assert summary["splits"]["val"] == {"accepted": 1, "rejected": 1, "rejected_by_reason": {"duplicate": 1}, "labels": 1}
    assert summary["rejected_by_reason"]["link_loop"] == 3


def test_verify_labels_and_sizes(corpus, tmp_path, data_cli):
    _, _, manifest, _, _ = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", "1")
    labels = dict(zip(manifest["path"], manifest["label"]))
    assert labels["train/top level.jpg"] == ""
    assert labels["train/a/b/c/deep nested.jpg"] == "a"
    assert labels["train/Ñandú y café/foto ñ.jpg"] == "Ñandú y café"
    # Every stage decodes through cast.imageio, so sizes agree with the manifest after EXIF rotation.
    assert open_rgb(corpus / "train/fish/rotated.jpg").size == (192, 256)
    assert decode_image(corpus / "train/fish/cmyk.jpg").rgb.mode == "RGB"


def test_verify_manifest_paths_stay_inside_root(corpus, tmp_path, data_cli):
    _, _, manifest, rejected, _ = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", "1")
    root = corpus.resolve()
    for path in manifest["path"].tolist() + rejected["path"].tolist():
        assert not os.path.isabs(path)
        assert ".." not in Path(path).parts
    for path in manifest["path"]:
        assert (corpus / path).resolve().is_relative_to(root), path
    assert "train/animals/outside_link.jpg" not in set(manifest["path"])


def test_verify_fails_on_rejections_by_default(corpus, tmp_path, data_cli):
    status, log, manifest, rejected, _ = run_verify(data_cli, corpus, tmp_path)
    assert status == 1
    assert len(manifest) == len(ACCEPTED)
    assert len(rejected) == len(REJECTED)
    assert f"{len(REJECTED)} of {len(ACCEPTED) + len(REJECTED)} files rejected" in log
    assert "train/animals/broken_link.jpg (broken_link)" in log
    assert f"and {len(REJECTED) - 5} more" in log
    assert "--max_rejected_fraction" in log


def test_verify_fraction_limit_is_inclusive(corpus, tmp_path, data_cli):
    fraction = len(REJECTED) / (len(ACCEPTED) + len(REJECTED))
    status, *_ = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", repr(fraction))
    assert status == 0
    status, *_ = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", f"{fraction - 0.01:.6f}")
    assert status == 1


def test_verify_two_workers_match_one(corpus, tmp_path):
    one = verify_tree(corpus, ["train", "val"], 32, 89_478_485, workers=1)
    two = verify_tree(corpus, ["train", "val"], 32, 89_478_485, workers=2)
    assert [o.__dict__ for o in one.accepted] == [o.__dict__ for o in two.accepted]
    assert [o.__dict__ for o in one.rejected] == [o.__dict__ for o in two.rejected]


def test_verify_max_pixels_option(corpus, tmp_path, data_cli):
    _, _, manifest, rejected, _ = run_verify(data_cli, corpus, tmp_path, "--max_rejected_fraction", "1", "--max-pixels", "40000")
    reasons = dict(zip(rejected["path"], rejected["reason"]))
    assert reasons["train/animals/good.jpg"] == "too_many_pixels"
    assert manifest.empty


def test_verify_missing_split_folder(corpus, tmp_path, data_cli):
    status, log = data_cli(
        "verify-data", "--images", corpus, "--splits", "train", "test",
        "--manifest", tmp_path / "m.csv", "--rejected", tmp_path / "r.csv", "--summary", tmp_path / "s.json",
    )
    assert status == 1
    assert f"Split folder {corpus / 'test'} not found" in log
    assert "['originals', 'train', 'val']" in log
    assert not (tmp_path / "m.csv").exists()


def test_verify_split_link_outside_root(tmp_path, data_photos):
    root = tmp_path / "root"
    root.mkdir()
    real = tmp_path / "real_train"
    real.mkdir()
    shutil.copyfile(data_photos[0], real / "a.jpg")
    os.symlink(real, root / "train")
    with pytest.raises(DataError, match="outside the image root"):
        verify_tree(root, ["train"], 32, 89_478_485, workers=1)


def test_verify_split_link_inside_root(tmp_path, data_photos):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    shutil.copyfile(data_photos[0], root / "real" / "a.jpg")
    os.symlink("real", root / "train")
    result = verify_tree(root, ["train"], 32, 89_478_485, workers=1)
    assert [o.path for o in result.accepted] == ["train/a.jpg"]


def test_verify_empty_tree_fails(tmp_path, data_cli):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
    status, log = data_cli(
        "verify-data", "--images", tmp_path / "images",
        "--manifest", tmp_path / "m.csv", "--rejected", tmp_path / "r.csv", "--summary", tmp_path / "s.json",
    )
    assert status == 1
    assert "No files found in the split folders" in log


def test_verify_accepts_committed_sample(data_sample_root, tmp_path, data_cli):
    status, _, manifest, rejected, summary = run_verify(data_cli, data_sample_root / "images", tmp_path)
    assert status == 0
    assert rejected.empty
    assert len(manifest) == len(list((data_sample_root / "images").rglob("*.jpg")))
    assert summary["splits"]["train"]["labels"] == 5
    assert summary["splits"]["val"]["labels"] == 5
