"""Tests of the committed sample photographs, their attribution, and the builder's parsing and split rules."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from PIL import Image

from cast.data.sample import (
    LICENCE_URLS,
    SamplePhoto,
    assign_splits,
    encode_jpeg,
    normalize_licence,
    parse_credits,
    replace_output,
)
from cast.errors import DataError

CLASSES = {"animals", "fish", "monuments", "tools", "renewable_energy"}


@pytest.fixture(scope="module")
def attribution(data_sample_root) -> list[dict[str, str]]:
    with open(data_sample_root / "ATTRIBUTION.csv", encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def test_sample_attribution_matches_files(data_sample_root, attribution):
    files = {path.relative_to(data_sample_root).as_posix() for path in (data_sample_root / "images").rglob("*") if path.is_file()}
    assert files == {row["file"] for row in attribution}
    assert len(attribution) == len(files)
    for row in attribution:
        assert row["class"] == Path(row["file"]).parts[2]
        assert row["author"].strip(), row["file"]
        assert row["source"].startswith("https://"), row["file"]
        assert row["licence"] in LICENCE_URLS, row["file"]
        assert row["original"].count(".rcc:gcompris/") == 1, row["file"]


def test_sample_share_alike_terms_beside_files(data_sample_root, attribution):
    licences = (data_sample_root / "LICENSES.md").read_text(encoding="utf-8")
    for row in attribution:
        if row["licence"].startswith("CC-BY"):
            assert f"| {row['file']} | {row['licence']} | {row['author']} |" in licences
            assert LICENCE_URLS[row["licence"]] in licences


def test_sample_size_and_splits(data_sample_root, attribution):
    total = sum(path.stat().st_size for path in data_sample_root.rglob("*") if path.is_file())
    assert total < 15 * 1024 * 1024
    val = [row for row in attribution if row["file"].startswith("images/val/")]
    train = [row for row in attribution if row["file"].startswith("images/train/")]
    assert len(val) + len(train) == len(attribution)
    assert len(val) >= 25
    assert 0.15 <= len(val) / len(attribution) <= 0.25
    assert {row["class"] for row in val} == CLASSES
    assert {row["class"] for row in train} == CLASSES


def test_sample_images_are_small_jpegs(data_sample_root, data_photos):
    for path in data_photos:
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.mode == "RGB"
            assert max(image.size) <= 256
            assert min(image.size) >= 64


def test_sample_split_follows_source_hash(attribution):
    photos = [
        SamplePhoto(
            label=row["class"], name=Path(row["file"]).name, split="", author=row["author"],
            source=row["source"], licence=row["licence"], original=row["original"], data=b"",
        )
        for row in attribution
    ]
    recomputed = {f"images/{p.split}/{p.label}/{p.name}" for p in assign_splits(photos, 0.2)}
    assert recomputed == {row["file"] for row in attribution}


def test_parse_credits_blocks():
    text = (
        "Copyright: A. Author\nSource: https://example.org/a.jpg\nLicense: CC0-1.0\nFiles:\na.webp\nsub/b.webp\n\n"
        "Copyright: B\nLicense: GPLv2+\nFiles: c.webp d.webp\n\n"
        "Copyright: Nobody\nLicense: CC-BY-SA 4.0\n"
    )
    entries = parse_credits(text)
    assert [entry.files for entry in entries] == [("a.webp", "sub/b.webp"), ("c.webp", "d.webp")]
    assert entries[0].author == "A. Author"
    assert entries[0].source == "https://example.org/a.jpg"
    assert entries[1].source == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Public Domain", "Public Domain"),
        ("Public domain", "Public Domain"),
        ("CC0-1.0", "CC0-1.0"),
        ("CC-BY-SA 4.0", "CC-BY-SA-4.0"),
        ("CC-BY 3.0", "CC-BY-3.0"),
        ("GPLv2+", None),
        ("CC-BY-NC 4.0", None),
        ("", None),
    ],
)
def test_normalize_licence(text, expected):
    assert normalize_licence(text) == expected


def test_replace_output_guards_folder(tmp_path):
    staging = tmp_path / "staging"
    (staging / "images").mkdir(parents=True)
    out = tmp_path / "sample"
    (out / "images").mkdir(parents=True)
    (out / "notes.txt").write_text("kept by hand")
    with pytest.raises(DataError, match="is not empty. Pass --overwrite"):
        replace_output(staging, out, overwrite=False)
    with pytest.raises(DataError, match=r"contains \['notes.txt'\], which this builder did not write"):
        replace_output(staging, out, overwrite=True)
    (out / "notes.txt").unlink()
    replace_output(staging, out, overwrite=True)
    assert (out / "images").is_dir()
    assert not staging.exists()


def test_encode_jpeg_shrinks_longer_side(data_photos):
    buffer = io.BytesIO()
    Image.open(data_photos[0]).resize((640, 300)).save(buffer, format="PNG")
    with Image.open(io.BytesIO(encode_jpeg(buffer.getvalue(), max_side=128, quality=80))) as image:
        assert image.format == "JPEG"
        assert image.size == (128, 60)
