"""Shared fixtures of the evaluation tests: small manifests of the bundled photos and pretraining checkpoints.

The other ``test_evaluate_*`` modules import these helpers. This module
contains only the checks of the fixtures themselves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "data" / "sample" / "images"
IMAGE_SIZE = 64
RESIZE_SIZE = 72


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch on one thread: the test machine is shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sample_files(per_class: dict[str, int], classes: list[str] | None = None) -> list[Path]:
    """Pick the first photos (sorted by name) of each class and split of the bundled sample."""
    if not SAMPLE_IMAGES.is_dir():
        pytest.fail(f"the bundled sample {SAMPLE_IMAGES} is missing. Rebuild it with scripts/build_sample.py")
    chosen = []
    for split, count in per_class.items():
        folders = sorted(path for path in (SAMPLE_IMAGES / split).iterdir() if path.is_dir())
        for folder in folders:
            if classes is not None and folder.name not in classes:
                continue
            chosen += sorted(folder.glob("*.jpg"))[:count]
    return chosen


def write_manifest(path: Path, files: list[Path], images: Path = SAMPLE_IMAGES) -> Path:
    """Write a manifest with the columns of 'cast verify-data' for files below ``images``."""
    rows = []
    for file in files:
        relative = file.relative_to(images).as_posix()
        split, label = relative.split("/")[:2]
        with Image.open(file) as image:
            width, height, mode = image.width, image.height, image.mode
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        rows.append({"path": relative, "split": split, "label": label, "width": width, "height": height, "mode": mode, "sha256": digest, "notes": ""})
    pd.DataFrame(rows).sort_values("path").to_csv(path, index=False)
    return path


@pytest.fixture
def small_manifest(tmp_path) -> Path:
    """Four training and two validation photos of each of the five sample classes."""
    return write_manifest(tmp_path / "manifest.csv", sample_files({"train": 4, "val": 2}))


def make_checkpoint(path: Path, arch: str = "resnet18", mlp: bool = False, method: str = "moco", seed: int = 3, recorded_arch: str | None = None) -> dict:
    """Write a pretraining checkpoint in the format of 'cast pretrain' with random weights and return it."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    query = torchvision.models.get_model(arch, num_classes=128)
    if mlp:
        width = query.fc.in_features
        query.fc = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 128))
    # Non-trivial BatchNorm statistics, so a key mix-up cannot go unnoticed.
    for name, buffer in query.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            buffer.copy_(torch.rand_like(buffer) + 0.5)
    torch.random.set_rng_state(generator_state)

    model = {f"encoder_q.{key}": value.clone() for key, value in query.state_dict().items()}
    model.update({f"encoder_k.{key}": value.clone() + 1 for key, value in query.state_dict().items()})
    model["queue"] = torch.randn(128, 32)
    model["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    checkpoint = {
        "format": "cast-pretrain-checkpoint",
        "format_version": 1,
        "epoch": 2,
        "params": {"method": method, "seed": seed, "arch": recorded_arch or arch, "moco_dim": 128, "mlp": mlp},
        "model": model,
        "optimizer": {},
        "scaler": {},
        "rng": {},
    }
    torch.save(checkpoint, path)
    return checkpoint


def test_small_manifest_lists_real_photos(small_manifest):
    frame = pd.read_csv(small_manifest)
    assert set(frame["split"]) == {"train", "val"}
    assert frame.groupby("split")["label"].nunique().to_dict() == {"train": 5, "val": 5}
    assert all((SAMPLE_IMAGES / path).is_file() for path in frame["path"])


def test_checkpoint_fixture_loads_weights_only(tmp_path):
    make_checkpoint(tmp_path / "final.pt", mlp=True)
    loaded = torch.load(tmp_path / "final.pt", weights_only=True)
    assert "encoder_q.fc.0.weight" in loaded["model"]
    assert not torch.equal(loaded["model"]["encoder_q.conv1.weight"], loaded["model"]["encoder_k.conv1.weight"])
