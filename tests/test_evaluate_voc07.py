"""Tests of the voc07 protocol: average precision by hand, a VOC-layout fixture of real photos, manifest mode, errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score

from cast import cli
from cast.evaluate import cli as evaluate_cli
from cast.errors import DataError
from cast.evaluate.datasets import read_voc_split, voc_class_names
from cast.evaluate.voc07 import average_precision, average_precision_11_point
from test_evaluate_fixtures import (  # noqa: F401
    IMAGE_SIZE,
    RESIZE_SIZE,
    SAMPLE_IMAGES,
    one_thread,
    sample_files,
    small_manifest,
)

VOC_CLASSES = ["animals", "fish", "tools"]


def hand_average_precision(labels, scores) -> float:
    """AP written out step by step: rank by score, drop difficult images, and average over the
    positives the best precision reached at that positive's rank or any later rank."""
    ranked = [label for _, label in sorted(zip(scores, labels), key=lambda pair: -pair[0]) if label != 0]
    precisions, hits = [], 0
    for rank, label in enumerate(ranked, start=1):
        hits += label == 1
        precisions.append(hits / rank)
    total = sum(max(precisions[index:]) for index, label in enumerate(ranked) if label == 1)
    return total / ranked.count(1)


def test_average_precision_by_hand():
    # Ranked labels 1, -1, 1, 0, -1, 1. The difficult image (0) is dropped, leaving
    # precisions 1/1, 2/3 and 3/5 at the three positives. None is beaten later, so
    # AP = (1 + 2/3 + 3/5) / 3 = 34/45. At 11 recalls: 4 points (0 to 0.3) reach
    # precision 1, 3 points (0.4 to 0.6) 2/3, 4 points (0.7 to 1) 3/5: 8.4 / 11.
    scores = np.array([0.9, 0.8, 0.7, 0.65, 0.6, 0.5])
    labels = np.array([1, -1, 1, 0, -1, 1])
    assert average_precision(labels, scores) == pytest.approx(34 / 45)
    assert average_precision_11_point(labels, scores) == pytest.approx(8.4 / 11)


def test_average_precision_interpolates():
    # Ranked -1, 1, 1: precision 1/2 at the first positive is beaten by 2/3 later, so the
    # interpolated AP is 2/3 while the plain mean of precisions (scikit-learn) is 7/12.
    scores = np.array([3.0, 2.0, 1.0])
    labels = np.array([-1, 1, 1])
    assert average_precision(labels, scores) == pytest.approx(2 / 3)
    assert average_precision_11_point(labels, scores) == pytest.approx(2 / 3)
    assert average_precision_score(labels == 1, scores) == pytest.approx(7 / 12)


def test_difficult_images_are_ignored():
    scores = np.array([5.0, 4.0, 3.0, 2.0])
    with_difficult = np.array([0, 1, -1, 1])
    without = np.array([1, -1, 1])
    assert average_precision(with_difficult, scores) == average_precision(without, scores[1:])
    assert average_precision(np.array([-1, 1, -1, 1]), scores) < average_precision(with_difficult, scores)


def write_voc(root: Path, splits: dict[str, list[tuple[Path, str]]], difficult: dict[str, dict[str, str]]) -> None:
    """Copy photos to root/JPEGImages/<id>.jpg and write ImageSets/Main/<class>_<split>.txt.

    Each photo is positive for its own class and negative for the others, except the
    (image id, class) pairs in ``difficult``, which are marked 0.
    """
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    number = 0
    for split, photos in splits.items():
        lines = {name: [] for name in VOC_CLASSES}
        for photo, label in photos:
            number += 1
            image_id = f"{number:06d}"
            shutil.copyfile(photo, root / "JPEGImages" / f"{image_id}.jpg")
            for name in VOC_CLASSES:
                value = "1" if name == label else "-1"
                if difficult.get(split, {}).get(image_id) == name:
                    value = "0"
                lines[name].append(f"{image_id} {value:>2}")
        for name, rows in lines.items():
            (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text("\n".join(rows) + "\n")


def photos_of(split: str, per_class: int) -> list[tuple[Path, str]]:
    return [(path, path.parent.name) for path in sample_files({split: per_class}, classes=VOC_CLASSES)]


def voc_argv(voc_root: Path, out_dir: Path, *extra: str) -> list[str]:
    return [
        "linear-eval", "--protocol", "voc07", "--backbone", "random", "--arch", "resnet18", "--voc_root", str(voc_root),
        "--out_dir", str(out_dir), "--image_size", str(IMAGE_SIZE), "--resize_size", str(RESIZE_SIZE),
        "--workers", "0", "--batch_size", "16", "--costs", "0.1", "1", "10", *extra,
    ]


def test_voc_layout_matches_hand_computation(tmp_path):
    # Test ids 000013 to 000021: animals, animals, animals, fish, ..., tools. 000016 (a fish photo)
    # is difficult for fish, 000013 (an animals photo) is difficult for tools.
    splits = {"trainval": photos_of("train", 4), "test": photos_of("val", 3)}
    difficult = {"trainval": {"000001": "animals"}, "test": {"000016": "fish", "000013": "tools"}}
    write_voc(tmp_path / "VOC2007", splits, difficult)

    assert cli.main(voc_argv(tmp_path / "VOC2007", tmp_path / "out")) == 0

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    per_class = pd.read_csv(tmp_path / "out" / "per_class_ap.csv").set_index("class")
    scores = pd.read_csv(tmp_path / "out" / "test_scores.csv", dtype={"image": str})
    assert list(per_class.index) == VOC_CLASSES
    assert per_class.loc["fish", "test_difficult"] == 1
    assert per_class.loc["fish", "test_positive"] == 2
    assert per_class.loc["tools", "test_difficult"] == 1
    assert scores.query("image == '000016' and `class` == 'fish'")["label"].item() == 0
    for name in VOC_CLASSES:
        rows = scores[scores["class"] == name]
        assert len(rows) == 9
        expected = 100 * hand_average_precision(rows["label"].tolist(), rows["score"].tolist())
        assert per_class.loc[name, "ap"] == pytest.approx(expected)
    assert metrics["map"] == pytest.approx(per_class["ap"].mean())
    assert metrics["map_11point"] == pytest.approx(per_class["ap_11point"].mean())
    assert metrics["data_source"].startswith("VOC layout")
    assert (metrics["trainval_split"], metrics["test_split"]) == ("trainval", "test")


def test_separable_classes_score_full_ap(tmp_path):
    # Every image of a class is a copy of the same photo, so the features of a class
    # coincide and a linear SVM separates the classes: every AP is 100.
    one_photo = {name: sample_files({"train": 1}, classes=[name])[0] for name in VOC_CLASSES}
    splits = {split: [(one_photo[name], name) for name in VOC_CLASSES for _ in range(count)] for split, count in (("trainval", 3), ("test", 2))}
    write_voc(tmp_path / "VOC2007", splits, {})

    assert cli.main(voc_argv(tmp_path / "VOC2007", tmp_path / "out", "--cv_folds", "3")) == 0

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["map"] == pytest.approx(100.0)
    assert metrics["map_11point"] == pytest.approx(100.0)


def test_manifest_one_vs_rest(tmp_path, small_manifest):
    argv = [
        "linear-eval", "--protocol", "voc07", "--backbone", "random", "--arch", "resnet18", "--seed", "1",
        "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest), "--out_dir", str(tmp_path / "out"),
        "--image_size", str(IMAGE_SIZE), "--resize_size", str(RESIZE_SIZE), "--workers", "0", "--costs", "1", "10",
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["method"], metrics["seed"]) == ("random", 1)
    assert "one-vs-rest" in metrics["data_source"]
    assert (metrics["trainval_split"], metrics["test_split"]) == ("train", "val")
    assert metrics["num_classes"] == 5
    assert 0.0 < metrics["map"] <= 100.0
    per_class = pd.read_csv(tmp_path / "out" / "per_class_ap.csv")
    assert per_class["train_positive"].tolist() == [4] * 5
    assert per_class["test_positive"].tolist() == [2] * 5


def test_voc_layout_errors(tmp_path):
    write_voc(tmp_path / "VOC2007", {"trainval": photos_of("train", 1), "test": photos_of("val", 1)}, {})
    main = tmp_path / "VOC2007" / "ImageSets" / "Main"
    assert voc_class_names(tmp_path / "VOC2007", "trainval") == VOC_CLASSES

    (main / "fish_test.txt").unlink()
    with pytest.raises(DataError, match="fish_test.txt not found"):
        read_voc_split(tmp_path / "VOC2007", "test", VOC_CLASSES)

    (main / "tools_trainval.txt").write_text("000001 2\n")
    with pytest.raises(DataError, match=r"tools_trainval.txt:1: expected '<image id> <1\|-1\|0>'"):
        read_voc_split(tmp_path / "VOC2007", "trainval", VOC_CLASSES)

    with pytest.raises(DataError, match="has no <class>_val.txt files"):
        voc_class_names(tmp_path / "VOC2007", "val")


def test_too_few_positives_for_folds(tmp_path):
    write_voc(tmp_path / "VOC2007", {"trainval": photos_of("train", 2), "test": photos_of("val", 1)}, {})
    args = cli.build_parser("linear-eval").parse_args(voc_argv(tmp_path / "VOC2007", tmp_path / "out")[1:])
    with pytest.raises(DataError, match="has 2 positive training images, fewer than cv_folds = 3"):
        evaluate_cli.run(args)


def test_voc_root_takes_precedence_over_manifest(tmp_path, small_manifest):
    # The workflow always passes the evaluation manifest; a VOC folder given in params wins.
    write_voc(tmp_path / "VOC2007", {"trainval": photos_of("train", 3), "test": photos_of("val", 2)}, {})
    argv = voc_argv(tmp_path / "VOC2007", tmp_path / "out", "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest))
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data_source"].startswith("VOC layout")
    assert metrics["num_classes"] == 3


def test_empty_voc_root_means_manifest(tmp_path, small_manifest):
    argv = [
        "linear-eval", "--protocol", "voc07", "--backbone", "random", "--arch", "resnet18", "--voc_root", "",
        "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest), "--out_dir", str(tmp_path / "out"),
        "--image_size", str(IMAGE_SIZE), "--resize_size", str(RESIZE_SIZE), "--workers", "0", "--costs", "1",
    ]
    assert cli.main(argv) == 0
    assert "one-vs-rest" in json.loads((tmp_path / "out" / "metrics.json").read_text())["data_source"]
