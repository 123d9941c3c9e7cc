"""Tests of ``cast pretrain``: two-process CPU runs, exact resumption, and clear failures."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from cast import cli
from cast.train import checkpoint as ckpt
from cast.train.pretrain import set_learning_rate

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "images"

# A tiny but real configuration: 16 photos, 64-pixel crops, ResNet-18.
TINY = [
    "--arch", "resnet18", "--image_size", "64", "--batch_size", "8", "--moco_k", "64",
    "--workers", "0", "--lr", "0.05", "--device", "cpu", "--deterministic",
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    """Run the data stages on 16 sample photos and return the paths pretraining reads."""
    root = tmp_path_factory.mktemp("pretrain-data")
    images = root / "images"
    photos = sorted((SAMPLE / "train").rglob("*.jpg"))[::4][:16]
    assert len(photos) == 16, "the bundled sample must contain at least 64 training photos"
    for photo in photos:
        target = images / photo.relative_to(SAMPLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    out = root / "results"
    assert cli.main(["verify-data", "--images", str(images), "--splits", "train",
                     "--manifest", str(out / "manifest.csv"), "--rejected", str(out / "rejected.csv"),
                     "--summary", str(out / "verify.json")]) == 0
    assert cli.main(["estimate-saliency", "--images", str(images), "--manifest", str(out / "manifest.csv"),
                     "--masks", str(root / "masks"), "--summary", str(out / "saliency.json")]) == 0
    assert cli.main(["check-masks", "--images", str(images), "--manifest", str(out / "manifest.csv"),
                     "--masks", str(root / "masks"), "--pairs", str(out / "pairs.csv"),
                     "--rejected", str(out / "mask_rejected.csv"), "--summary", str(out / "masks.json"),
                     "--min_usable_pairs", "8"]) == 0
    return {"images": images, "masks": root / "masks", "pairs": out / "pairs.csv"}


def pretrain_command(pairs: dict[str, Path], out_dir: Path, method: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cast", "pretrain",
        "--images", str(pairs["images"]), "--masks", str(pairs["masks"]), "--pairs", str(pairs["pairs"]),
        "--out_dir", str(out_dir), "--method", method, "--seed", "3", *TINY, *extra,
    ]


def run_command(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def read_plot(out_dir: Path, name: str) -> list[float]:
    table = pd.read_csv(out_dir / "plots" / "metrics" / f"{name}.tsv", sep="\t")
    return table[name].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco", "cast"])
def test_two_processes_write_outputs(pairs, tmp_path, method):
    out_dir = tmp_path / method
    result = run_command(pretrain_command(pairs, out_dir, method, "--epochs", "2", "--nproc_per_node", "2",
                                          "--keep_checkpoints", "1"))
    assert result.returncode == 0, result.stderr[-3000:]

    final = ckpt.load_checkpoint(out_dir / "final.pt")
    assert final["epoch"] == 2
    assert final["params"]["method"] == method
    assert not [key for key in final["model"] if "module." in key]
    assert final["model"]["queue"].shape == (128, 64)

    run_folders = list((out_dir / "checkpoints").iterdir())
    assert len(run_folders) == 1
    assert [path.name for path in run_folders[0].iterdir()] == ["epoch_0002.pt"]

    assert len(read_plot(out_dir, "contrastive_loss")) == 2
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 2
    assert metrics["images_per_second"] > 0
    if method == "cast":
        assert 0.0 < metrics["attention_loss"] <= 2.0
    else:
        assert "attention_loss" not in metrics
        assert not (out_dir / "plots" / "metrics" / "attention_loss.tsv").exists()
    assert (out_dir / "train.log").read_text().count("epoch 2/2") == 1


@pytest.mark.slow
def test_killed_run_resumes_exactly(pairs, tmp_path):
    extra = ["--epochs", "3", "--nproc_per_node", "2", "--batch_size", "4", "--moco_k", "32"]
    reference = tmp_path / "reference"
    result = run_command(pretrain_command(pairs, reference, "cast", *extra))
    assert result.returncode == 0, result.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    command = pretrain_command(pairs, interrupted, "cast", *extra)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240
    while not list((interrupted / "checkpoints").glob("*/epoch_0001.pt")):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / "final.pt").exists()

    result = run_command(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    for name in ("contrastive_loss", "attention_loss", "accuracy", "lr"):
        assert read_plot(interrupted, name) == read_plot(reference, name), name


@pytest.mark.slow
def test_batch_not_divisible_by_processes(pairs, tmp_path):
    result = run_command(pretrain_command(pairs, tmp_path, "moco", "--nproc_per_node", "2", "--batch_size", "7"))
    assert result.returncode == 1
    assert "batch_size 7 cannot be split evenly over 2 processes" in result.stderr


def test_queue_not_multiple_of_batch(pairs, tmp_path):
    command = pretrain_command(pairs, tmp_path, "moco", "--moco_k", "60")
    assert cli.main(command[3:]) == 1
    assert not (tmp_path / "final.pt").exists()


def test_queue_error_names_values(pairs, tmp_path, caplog):
    command = pretrain_command(pairs, tmp_path, "moco", "--moco_k", "60")
    cli.main(command[3:])
    assert "moco_k 60 (queue size) must be a multiple of the global batch_size 8" in caplog.text


def test_no_usable_pairs(pairs, tmp_path, caplog):
    empty = tmp_path / "pairs.csv"
    header = pd.read_csv(pairs["pairs"]).iloc[:0]
    header.to_csv(empty, index=False)
    command = pretrain_command({**pairs, "pairs": empty}, tmp_path / "out", "cast", "--epochs", "1")
    assert cli.main(command[3:]) == 1
    assert "has no usable pairs in split 'train'" in caplog.text


def test_corrupt_checkpoint_is_reported(pairs, tmp_path, caplog):
    out_dir = tmp_path / "out"
    command = pretrain_command(pairs, out_dir, "moco", "--epochs", "1")
    assert cli.main(command[3:]) == 0
    (latest,) = (out_dir / "checkpoints").glob("*/epoch_0001.pt")
    latest.write_bytes(latest.read_bytes()[:1000])

    again = pretrain_command(pairs, out_dir, "moco", "--epochs", "2")
    # Another epoch count is another run, so point at the damaged file explicitly.
    assert cli.main([*again[3:], "--resume", str(latest)]) == 1
    assert f"checkpoint {latest} cannot be read" in caplog.text


def test_foreign_checkpoint_is_refused(pairs, tmp_path, caplog):
    first = tmp_path / "first"
    assert cli.main(pretrain_command(pairs, first, "moco", "--epochs", "1")[3:]) == 0
    second = pretrain_command(pairs, tmp_path / "second", "moco", "--epochs", "1", "--lr", "0.2")
    assert cli.main([*second[3:], "--resume", str(first / "final.pt")]) == 1
    assert "lr: 0.05 -> 0.2" in caplog.text
    assert not (tmp_path / "second" / "final.pt").exists()


def test_not_a_checkpoint_is_refused(pairs, tmp_path, caplog):
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, foreign)
    command = pretrain_command(pairs, tmp_path / "out", "moco", "--epochs", "1")
    assert cli.main([*command[3:], "--resume", str(foreign)]) == 1
    assert "is not a CAST pretraining checkpoint" in caplog.text


@pytest.mark.slow
def test_port_in_use(pairs, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_command(pretrain_command(pairs, tmp_path, "moco", "--nproc_per_node", "2",
                                              "--rdzv_endpoint", f"127.0.0.1:{port}"))
    assert result.returncode == 1
    assert f"rendezvous port {port} on 127.0.0.1 is already in use" in result.stderr


@pytest.mark.slow
def test_failing_rank_stops_the_run(pairs, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(pairs["images"], images)
    broken = sorted(images.rglob("*.jpg"))[0]
    broken.write_bytes(b"not a jpeg any more")
    command = pretrain_command({**pairs, "images": images}, tmp_path / "out", "moco",
                               "--nproc_per_node", "2", "--epochs", "1", "--dist_timeout_s", "60")
    started = time.monotonic()
    result = run_command(command, timeout=240)
    assert result.returncode == 1
    assert f"image {broken} cannot be decoded" in result.stderr
    assert "exited with code" in result.stderr
    assert time.monotonic() - started < 200


def test_cosine_and_step_schedules_set_learning_rate():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    cosine = argparse.Namespace(lr=0.4, epochs=4, schedule="cosine", milestones=[])
    assert [round(set_learning_rate(optimizer, cosine, epoch), 6) for epoch in range(4)] == [0.4, 0.341421, 0.2, 0.058579]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.058579, abs=1e-6)
    step = argparse.Namespace(lr=1.0, epochs=10, schedule="step", milestones=[3, 6])
    assert [set_learning_rate(optimizer, step, epoch) for epoch in (0, 3, 6, 9)] == pytest.approx([1.0, 0.1, 0.01, 0.01])


def test_wrapper_prefix_is_removed():
    state = {"encoder_q.module.conv1.weight": torch.zeros(1), "queue": torch.ones(1), "encoder_k._orig_mod.fc.bias": torch.zeros(1)}
    assert sorted(ckpt.strip_wrapper_prefix(state)) == ["encoder_k.fc.bias", "encoder_q.conv1.weight", "queue"]


def test_checkpoint_folder_keeps_newest(tmp_path):
    folder = ckpt.CheckpointFolder(tmp_path, keep=2)
    for epoch in range(1, 5):
        folder.save({"epoch": epoch})
    assert [path.name for path in folder.paths()] == ["epoch_0003.pt", "epoch_0004.pt"]
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_state_survives_weights_only_load(tmp_path):
    torch.manual_seed(5)
    state = ckpt.capture_rng_state()
    expected = torch.rand(3)
    torch.save({"rng": state}, tmp_path / "rng.pt")
    torch.manual_seed(99)
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected)


def test_run_id_ignores_output_settings():
    base = {"lr": 0.1, "epochs": 2, "out_dir": "a", "workers": 2}
    assert ckpt.run_id(base) == ckpt.run_id({**base, "out_dir": "b", "workers": 0})
    assert ckpt.run_id(base) != ckpt.run_id({**base, "lr": 0.2})


def test_slurm_endpoint_is_first_node(tmp_path, monkeypatch):
    from cast.train.distributed import slurm_rendezvous_endpoint

    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    assert slurm_rendezvous_endpoint() == "gpu07:29400"
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    assert slurm_rendezvous_endpoint() == ""


def test_new_pairs_start_a_new_run(pairs, tmp_path, caplog):
    out_dir = tmp_path / "out"
    assert cli.main(pretrain_command(pairs, out_dir, "moco", "--epochs", "1")[3:]) == 0
    changed = tmp_path / "pairs.csv"
    table = pd.read_csv(pairs["pairs"])
    table.iloc[:-1].to_csv(changed, index=False)  # as if new masks had rejected one image

    caplog.clear()
    assert cli.main(pretrain_command({**pairs, "pairs": changed}, out_dir, "moco", "--epochs", "1")[3:]) == 0
    assert "resumed from" not in caplog.text
    assert len(list((out_dir / "checkpoints").iterdir())) == 2


def test_step_milestones_past_epochs(pairs, tmp_path, caplog):
    command = pretrain_command(pairs, tmp_path, "moco", "--epochs", "4", "--schedule", "step", "--milestones", "2", "5")
    assert cli.main(command[3:]) == 1
    assert "milestones [2, 5] must lie between 1 and epochs - 1 = 3" in caplog.text
