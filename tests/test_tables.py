"""Tests of `cast tables`: tables from metrics files written here, and the two figures."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cast import cli
from cast.errors import DataError
from cast.report import collect, tables

REPO = Path(__file__).resolve().parent.parent
PAPER_RESULTS = REPO / "workflow" / "paper_results.csv"

# Top-1 and mAP of each (method, seed, protocol), chosen so that means and
# sample standard deviations are easy to check by hand.
EVAL_VALUES = {
    ("moco", 0, "linear"): {"top1": 40.0, "top5": 90.0},
    ("moco", 1, "linear"): {"top1": 44.0, "top5": 94.0},
    ("cast", 0, "linear"): {"top1": 50.0, "top5": 95.0},
    ("cast", 1, "linear"): {"top1": 54.0, "top5": 97.0},
    ("random", 0, "linear"): {"top1": 20.0, "top5": 70.0},
    ("random", 1, "linear"): {"top1": 22.0, "top5": 72.0},
    ("moco", 0, "voc07"): {"map": 30.0},
    ("moco", 1, "voc07"): {"map": 34.0},
    ("cast", 0, "voc07"): {"map": 36.0},
    ("cast", 1, "voc07"): {"map": 38.0},
    ("random", 0, "voc07"): {"map": 10.0},
    ("random", 1, "voc07"): {"map": 12.0},
}


def write_eval_metrics(root: Path, values=EVAL_VALUES) -> None:
    for (method, seed, protocol), numbers in values.items():
        folder = root / method / f"seed{seed}" / protocol
        folder.mkdir(parents=True)
        record = {"protocol": protocol, "method": method, "seed": seed, "arch": "resnet18", "top5_note": "text is ignored", **numbers}
        (folder / "metrics.json").write_text(json.dumps(record))


def make_sample(root: Path) -> tuple[Path, Path, Path]:
    """Write real image files with a bright square object, its masks and a pairs.csv; return (images, masks, pairs)."""
    images = root / "images"
    masks = root / "masks"
    rows = []
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        for index in range(3):
            relative = f"val/{label}/{label}{index}.jpg"
            pixels = rng.integers(0, 80, size=(60, 80, 3), dtype=np.uint8)
            mask = np.zeros((60, 80), dtype=np.uint8)
            mask[15:45, 20 + 10 * index : 50 + 10 * index] = 255
            pixels[mask > 0] = (230, 200, 40)
            (images / relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(images / relative)
            mask_relative = relative.replace(".jpg", ".png")
            (masks / mask_relative).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(masks / mask_relative)
            rows.append({"image": relative, "mask": mask_relative, "split": "val", "label": label, "width": 80, "height": 60})
    pairs = root / "pairs.csv"
    pd.DataFrame(rows).to_csv(pairs, index=False)
    return images, masks, pairs


def write_pretrain_run(folder: Path, method: str, seed: int, losses: list[float]) -> None:
    """Write a real (untrained) MoCo checkpoint and DVCLive-style per-epoch files, as `cast pretrain` does."""
    from cast.method.moco import MoCo
    from cast.train.checkpoint import build_checkpoint

    torch.manual_seed(seed + (100 if method == "cast" else 0))
    model = MoCo(arch="resnet18", dim=16, queue_size=32, momentum=0.99, temperature=0.2, mlp=False)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1)
    params = {
        "method": method, "seed": seed, "arch": "resnet18", "moco_dim": 16, "moco_k": 32, "moco_m": 0.99,
        "moco_t": 0.2, "mlp": False, "image_size": 96, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "gradcam_layer": "layer4", "gradcam_relu": False, "mask_threshold": 128,
    }
    folder.mkdir(parents=True)
    torch.save(build_checkpoint(model, optimizer, len(losses), params, []), folder / "final.pt")
    plots = folder / "plots" / "metrics"
    plots.mkdir(parents=True)
    for name, values in (("contrastive_loss", losses), ("lr", [0.1 * (len(losses) - step) for step in range(len(losses))])):
        lines = [f"step\t{name}"] + [f"{step + 1}\t{value}" for step, value in enumerate(values)]
        (plots / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    (folder / "metrics.json").write_text(json.dumps({"epoch": len(losses), "contrastive_loss": losses[-1]}))


def test_mean_and_std_over_seeds():
    results = [collect.EvalResult(m, s, p, v, Path("x")) for (m, s, p), v in EVAL_VALUES.items()]
    paper = collect.read_paper_results(PAPER_RESULTS)
    table = tables.build_long_table(results, ["moco", "cast", "random"], ["top1", "map"], paper)

    mean = table[(table["method"] == "cast") & (table["seed"] == "mean") & (table["metric"] == "top1")].iloc[0]
    assert mean["value"] == pytest.approx(52.0)
    assert mean["std"] == pytest.approx(math.sqrt(8.0))  # sample std of 50 and 54
    assert mean["runs"] == 2

    voc = table[(table["method"] == "cast") & (table["seed"] == "mean") & (table["metric"] == "map")].iloc[0]
    assert voc["paper_value"] == pytest.approx(73.1)
    assert "Table 1" in voc["paper_source"]

    per_seed = table[(table["method"] == "moco") & (table["seed"] == 1) & (table["metric"] == "top1")]
    assert per_seed["value"].tolist() == [44.0]
    assert math.isnan(per_seed["paper_value"].iloc[0])


def test_single_seed_has_no_std():
    results = [collect.EvalResult("moco", 0, "knn", {"top1": 33.3}, Path("x"))]
    paper = collect.read_paper_results(PAPER_RESULTS)
    table = tables.build_long_table(results, ["moco", "random"], ["top1"], paper)
    mean = table[table["seed"] == "mean"].iloc[0]
    assert math.isnan(mean["std"])
    wide = tables.build_wide_table(table, tables.table_columns(table), ["moco", "random"], 1)
    assert wide.loc[wide["seed"].str.startswith("mean"), "knn top1"].tolist() == ["33.3"]


def test_unknown_metrics_raise():
    results = [collect.EvalResult("moco", 0, "knn", {"top1": 33.3}, Path("x"))]
    paper = collect.read_paper_results(PAPER_RESULTS)
    with pytest.raises(ValueError, match="tables.metrics"):
        tables.build_long_table(results, ["moco"], ["accuracy"], paper)


def test_duplicate_results_raise(tmp_path):
    write_eval_metrics(tmp_path / "a", {("moco", 0, "knn"): {"top1": 1.0}})
    write_eval_metrics(tmp_path / "b", {("moco", 0, "knn"): {"top1": 2.0}})
    with pytest.raises(DataError, match="two results for method moco, seed 0, protocol knn"):
        collect.collect_eval_results([tmp_path], ["moco"], [0])


def test_metrics_without_method_raise(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"protocol": "knn", "top1": 3.0}))
    with pytest.raises(DataError, match="lacks the field"):
        collect.collect_eval_results([tmp_path], ["moco"], [0])


def test_other_seeds_are_left_out(tmp_path):
    write_eval_metrics(tmp_path, EVAL_VALUES)
    selected = collect.collect_eval_results([tmp_path], ["cast"], [1])
    assert sorted((result.method, result.seed, result.protocol) for result in selected) == [
        ("cast", 1, "linear"), ("cast", 1, "voc07"), ("random", 1, "linear"), ("random", 1, "voc07"),
    ]


def test_paper_results_file_is_complete():
    paper = collect.read_paper_results(PAPER_RESULTS)
    assert paper["source"].str.len().min() > 0
    voc = paper[(paper["protocol"] == "voc07") & (paper["metric"] == "map")].set_index("method")["value"]
    assert voc.to_dict() == {"moco": 66.9, "cast": 73.1}
    assert len(paper) == 13


def test_tables_command_writes_every_output(tmp_path):
    write_eval_metrics(tmp_path / "eval")
    images, masks, pairs = make_sample(tmp_path)
    for method, losses in (("moco", [6.0, 5.0, 4.5]), ("cast", [6.2, 5.5, 4.0])):
        for seed in (0, 1):
            write_pretrain_run(tmp_path / "pretrain" / method / f"seed{seed}", method, seed, losses)
    out_dir = tmp_path / "tables"

    status = cli.main([
        "tables", "--eval_metrics", str(tmp_path / "eval"), "--pretrain_dirs", str(tmp_path / "pretrain"),
        "--paper_results", str(PAPER_RESULTS), "--images", str(images), "--masks", str(masks),
        "--pairs", str(pairs), "--split", "val", "--out_dir", str(out_dir),
        "--methods", "moco", "cast", "--seeds", "0", "1", "--metrics", "top1", "top5", "map",
        "--decimals", "1", "--curves", "contrastive_loss", "lr", "attention_loss", "--gradcam_images", "3", "--device", "cpu",
    ])
    assert status == 0

    markdown = (out_dir / "results.md").read_text()
    assert "| cast | mean ± std (2 seeds) | 52.0 ± 2.8 |" in markdown
    assert "| voc07 map (paper) |" in markdown
    assert "| VOC07 detection, AP | cast | 54.2 | COCO train2017 |" in markdown
    assert "| moco_v2 | 67.5 ± 0.1 |" in markdown

    with open(out_dir / "results.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    moco_mean = [row for row in rows if row["method"] == "moco" and row["seed"] == "mean" and row["metric"] == "map"]
    assert len(moco_mean) == 1
    assert float(moco_mean[0]["value"]) == pytest.approx(32.0)
    assert float(moco_mean[0]["paper_value"]) == pytest.approx(66.9)
    assert len([row for row in rows if row["seed"] != "mean"]) == 2 * 2 * 3 + 2 * 3  # linear top1/top5, voc07 map

    latex = (out_dir / "results.tex").read_text()
    assert "\\begin{tabular}" in latex
    assert "\\bottomrule" in latex
    assert "52.0 $\\pm$ 2.8" in latex
    assert "voc07 map (paper)" in latex

    for name in ("training_curves.png", "gradcam.png"):
        with Image.open(out_dir / "figures" / name) as figure:
            assert figure.format == "PNG"
            assert figure.width > 300
            assert figure.height > 200
    with Image.open(out_dir / "figures" / "gradcam.png") as figure:
        # 3 image rows and 4 columns (image, mask, moco, cast): wider than tall.
        assert figure.width > figure.height


def test_gradcam_needs_pairs_of_split(tmp_path):
    from cast.report import figures

    _, _, pairs = make_sample(tmp_path)
    with pytest.raises(DataError, match="no pairs of split 'test'"):
        figures.choose_images(pairs, "test", 2)


def test_gradcam_images_alternate_classes(tmp_path):
    from cast.report import figures

    _, _, pairs = make_sample(tmp_path)
    chosen = figures.choose_images(pairs, "val", 3)
    assert chosen["label"].tolist() == ["cats", "dogs", "cats"]
    assert chosen["image"].tolist() == ["val/cats/cats0.jpg", "val/dogs/dogs0.jpg", "val/cats/cats1.jpg"]
