"""Tests of the linear protocol: schedules, frozen backbone, training on images and cached features, torchrun, options."""

import faulthandler
import json
import logging
import math
import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from cast import cli
from cast.errors import ConfigError, DataError
from cast.evaluate import cli as evaluate_cli
from cast.evaluate.backbone import Backbone, BackboneChangedError, check_unchanged, load_backbone, state_checksum
from cast.evaluate.convert import convert
from cast.evaluate.datasets import manifest_splits, read_manifest
from cast.evaluate.distributed import Context
from cast.evaluate.features import extract_features
from cast.evaluate.knn import KNNConfig
from cast.evaluate.linear import LinearConfig, new_classifier, run_linear
from cast.evaluate.schedules import build_scheduler
from cast.evaluate.voc07 import VOC07Config
from test_evaluate_fixtures import (  # noqa: F401
    IMAGE_SIZE,
    RESIZE_SIZE,
    SAMPLE_IMAGES,
    make_checkpoint,
    one_thread,
    sample_files,
    small_manifest,
    write_manifest,
)

CPU = Context(rank=0, world_size=1, device=torch.device("cpu"))


def small_config(**changes) -> LinearConfig:
    settings = dict(image_size=IMAGE_SIZE, resize_size=RESIZE_SIZE, batch_size=8, epochs=2, milestones=[1], workers=0, device="cpu")
    settings.update(changes)
    return LinearConfig(**settings)


def read_plot(out_dir: Path, name: str) -> list[float]:
    table = pd.read_csv(out_dir / "plots" / "metrics" / f"{name}.tsv", sep="\t")
    assert list(table["step"]) == list(range(len(table)))
    return list(table[name.rsplit("/", 1)[-1]])


def expected_learning_rate(schedule: str, base: float, epoch: int, epochs: int, milestones: list[int]) -> float:
    """Closed forms: step multiplies by 0.1 at each milestone reached, cosine follows half a cosine period."""
    if schedule == "step":
        return base * 0.1 ** sum(1 for milestone in milestones if epoch >= milestone)
    return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


@pytest.fixture
def splits(small_manifest):
    return manifest_splits(read_manifest(small_manifest), small_manifest, SAMPLE_IMAGES, "train", "val")


@pytest.fixture(scope="module")
def random_backbone():
    return load_backbone("random", "resnet18", seed=0)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_scheduler_sets_optimizer_lr(schedule):
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=30.0, momentum=0.9)
    scheduler = build_scheduler(optimizer, schedule, epochs=10, milestones=[6, 8])
    seen = []
    for epoch in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [expected_learning_rate(schedule, 30.0, epoch, 10, [6, 8]) for epoch in range(10)]
    assert seen == pytest.approx(expected, rel=1e-9)
    assert len(set(round(value, 9) for value in seen)) > 2


def test_scheduler_rejects_bad_milestones():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="outside 1..9"):
        build_scheduler(optimizer, "step", epochs=10, milestones=[60, 80])
    with pytest.raises(ConfigError, match="strictly increasing"):
        build_scheduler(optimizer, "step", epochs=10, milestones=[5, 3])


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_training_uses_schedule(tmp_path, splits, random_backbone, schedule):
    class_names, train, val = splits
    config = small_config(cached_features=True, epochs=5, milestones=[2, 4], schedule=schedule, lr=0.5)
    run_linear(random_backbone, class_names, train, val, config, CPU, tmp_path)
    expected = [expected_learning_rate(schedule, 0.5, epoch, 5, [2, 4]) for epoch in range(5)]
    assert read_plot(tmp_path, "lr") == pytest.approx(expected, rel=1e-9)


def test_linear_on_images(tmp_path, splits, random_backbone):
    class_names, train, val = splits
    metrics = run_linear(random_backbone, class_names, train, val, small_config(epochs=2, workers=1), CPU, tmp_path)
    assert metrics["cached_features"] is False
    assert metrics["train_augmentation"] == "random resized crop and horizontal flip"
    assert metrics["num_train"] == 20
    assert metrics["num_val"] == 10
    assert metrics["top5_k"] == 5
    assert metrics["top5"] == 100.0
    assert "100 by construction" in metrics["top5_note"]
    assert 0.0 <= metrics["top1"] <= metrics["top1_best"] <= 100.0
    assert len(read_plot(tmp_path, "val/top1")) == 2
    assert read_plot(tmp_path, "val/top1")[-1] == pytest.approx(metrics["top1"])


def test_cached_features_fit_training_set(tmp_path, splits, random_backbone):
    class_names, train, val = splits
    config = small_config(cached_features=True, epochs=40, milestones=[30], lr=0.01, batch_size=20)
    metrics = run_linear(random_backbone, class_names, train, val, config, CPU, tmp_path)
    losses = read_plot(tmp_path, "train/loss")
    assert metrics["train_augmentation"].startswith("none")
    assert losses[-1] < 0.5 * losses[0]
    assert read_plot(tmp_path, "train/top1")[-1] == 100.0


def test_unlabelled_manifest_is_rejected(tmp_path, small_manifest):
    frame = pd.read_csv(small_manifest, keep_default_na=False)
    frame.loc[frame["split"] == "val", "label"] = ""
    frame.to_csv(tmp_path / "coco_layout.csv", index=False)
    with pytest.raises(DataError, match="10 images of split 'val' have no label"):
        manifest_splits(read_manifest(tmp_path / "coco_layout.csv"), tmp_path / "coco_layout.csv", SAMPLE_IMAGES, "train", "val")


def test_classifier_initialisation():
    classifier = new_classifier(2048, 1000, seed=0)
    assert torch.count_nonzero(classifier.bias) == 0
    assert classifier.weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.02)


def test_top5_capped_at_class_count(tmp_path):
    files = sample_files({"train": 3, "val": 1}, classes=["animals", "fish", "tools"])
    manifest = write_manifest(tmp_path / "manifest.csv", files)
    class_names, train, val = manifest_splits(read_manifest(manifest), manifest, SAMPLE_IMAGES, "train", "val")
    backbone = load_backbone("random", "resnet18", seed=0)
    metrics = run_linear(backbone, class_names, train, val, small_config(cached_features=True), CPU, tmp_path / "out")
    assert metrics["top5_k"] == 3
    assert metrics["top5"] == 100.0


def test_changed_weight_is_detected():
    model = load_backbone("random", "resnet18", seed=0).model
    checksum = state_checksum(model)
    check_unchanged(model, checksum)
    with torch.no_grad():
        model.layer3[1].conv2.weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(BackboneChangedError, match="frozen backbone changed"):
        check_unchanged(model, checksum)


class DriftingBackbone(nn.Module):
    """A feature extractor that updates a buffer on every call, as a BatchNorm layer in training mode does."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, images):
        self.calls += 1
        return self.features(images)


def test_training_detects_changed_backbone(tmp_path, splits, random_backbone):
    class_names, train, val = splits
    drifting = Backbone(model=DriftingBackbone(), arch="test", feature_dim=8, source="test")
    with pytest.raises(BackboneChangedError):
        run_linear(drifting, class_names, train, val, small_config(epochs=1, milestones=[]), CPU, tmp_path)
    assert not (tmp_path / "classifier.pt").exists()


def test_linear_eval_command(tmp_path, small_manifest):
    make_checkpoint(tmp_path / "final.pt", method="cast", seed=5)
    convert(tmp_path / "final.pt", tmp_path / "backbone.pt", None)
    argv = [
        "linear-eval", "--protocol", "linear", "--backbone", str(tmp_path / "backbone.pt"),
        "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest), "--out_dir", str(tmp_path / "out"),
        "--image_size", str(IMAGE_SIZE), "--resize-size", str(RESIZE_SIZE), "--epochs", "2", "--milestones", "1",
        "--batch_size", "16", "--workers", "0", "--cached_features", "--schedule", "cosine",
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["protocol"], metrics["method"], metrics["seed"], metrics["arch"]) == ("linear", "cast", 5, "resnet18")
    assert metrics["config"]["schedule"] == "cosine"
    assert metrics["cached_features"] is True
    assert set(torch.load(tmp_path / "out" / "classifier.pt", weights_only=True)) == {"weight", "bias"}


def test_linear_eval_rejects_contradicting_labels(tmp_path, small_manifest, caplog):
    make_checkpoint(tmp_path / "final.pt", method="cast", seed=5)
    convert(tmp_path / "final.pt", tmp_path / "backbone.pt", None)
    argv = [
        "linear-eval", "--protocol", "knn", "--backbone", str(tmp_path / "backbone.pt"), "--method", "moco",
        "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest), "--out_dir", str(tmp_path / "out"),
    ]
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 1
    assert "--method moco contradicts" in caplog.text


def group_as_options(config_class) -> list[str]:
    """Spell a params.yaml group as DVC does: --key value, lists spread, booleans as --key/--no-key."""
    argv = []
    for key, value in config_class().__dict__.items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


@pytest.mark.parametrize("protocol, config_class", [("linear", LinearConfig), ("voc07", VOC07Config), ("knn", KNNConfig)])
def test_each_group_parses_for_its_protocol(protocol, config_class):
    parser = cli.build_parser("linear-eval")
    args = parser.parse_args(["--protocol", protocol, "--backbone", "random", "--out_dir", "out", *group_as_options(config_class)])
    assert evaluate_cli.build_config(args) == config_class()


def test_options_of_other_protocols_are_rejected():
    parser = cli.build_parser("linear-eval")
    args = parser.parse_args(["--protocol", "knn", "--backbone", "random", "--out_dir", "out", "--lr", "3"])
    with pytest.raises(ConfigError, match="--lr is a setting of protocol linear, not of knn"):
        evaluate_cli.build_config(args)
    args = parser.parse_args(["--protocol", "linear", "--backbone", "random", "--out_dir", "out", "--costs", "1", "10"])
    with pytest.raises(ConfigError, match="--costs is a setting of protocol voc07, not of linear"):
        evaluate_cli.build_config(args)


def free_ports(count: int) -> list[int]:
    """Return distinct loopback ports that were free a moment ago."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def distributed_worker(rank: int, world_size: int, runs: list[tuple[int, list[str]]]) -> None:
    """Run each command as one rank of a process group, with a fresh rendezvous port per command."""
    # A rank stuck in a collective would hang the test run: print every stack and exit instead.
    faulthandler.dump_traceback_later(120, exit=True)
    torch.set_num_threads(1)
    for port, argv in runs:
        os.environ.update(WORLD_SIZE=str(world_size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        if cli.main(argv) != 0:
            raise RuntimeError(f"rank {rank}: cast {' '.join(argv)} failed")


def test_linear_under_torchrun_with_gloo(tmp_path, small_manifest):
    """Run two CPU processes with the environment that torchrun sets. Rank 0 must report accuracy over all validation images."""
    common = [
        "linear-eval", "--protocol", "linear", "--backbone", "random", "--arch", "resnet18",
        "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest),
        "--image_size", str(IMAGE_SIZE), "--resize_size", str(RESIZE_SIZE), "--epochs", "2", "--milestones", "1",
        "--batch_size", "8", "--workers", "0", "--lr", "0.5", "--device", "cpu",
    ]
    ports = free_ports(2)
    runs = [
        (ports[0], common + ["--out_dir", str(tmp_path / "images")]),
        (ports[1], common + ["--out_dir", str(tmp_path / "cached"), "--cached_features"]),
    ]
    torch.multiprocessing.spawn(distributed_worker, args=(2, runs), nprocs=2, join=True)

    class_names, train, val = manifest_splits(read_manifest(small_manifest), small_manifest, SAMPLE_IMAGES, "train", "val")
    model = load_backbone("random", "resnet18", seed=0).model
    features, indices = extract_features(model, val.paths, IMAGE_SIZE, RESIZE_SIZE, 8, 0, torch.device("cpu"))
    labels = torch.tensor(val.labels)[indices]
    for run in ("images", "cached"):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["world_size"] == 2
        assert metrics["num_val"] == len(val.paths)
        classifier = nn.Linear(features.shape[1], len(class_names))
        classifier.load_state_dict(torch.load(tmp_path / run / "classifier.pt", weights_only=True))
        with torch.no_grad():
            predicted = classifier(features).argmax(dim=1)
        assert metrics["top1"] == pytest.approx(100.0 * (predicted == labels).double().mean().item())
