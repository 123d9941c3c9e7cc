"""Tests of 'cast convert': torchvision and Detectron2 exports, and the errors for bad checkpoints."""

import json
import logging
import pickle
import re

import numpy as np
import pytest
import torch
import torchvision

from cast import cli
from cast.errors import ConfigError, DataError
from cast.evaluate.backbone import load_backbone, sidecar_path, state_checksum
from cast.evaluate.convert import convert
from cast.evaluate.detectron2 import detectron2_name, to_detectron2, torchvision_name
from test_evaluate_fixtures import make_checkpoint, one_thread  # noqa: F401

DETECTRON2_NAME = re.compile(
    r"^(stem\.conv1(\.norm)?|res[2-5]\.\d+\.(conv[1-3]|shortcut)(\.norm)?)\.(weight|bias|running_mean|running_var)$"
)


@pytest.mark.parametrize("mlp", [False, True], ids=["linear_head", "mlp_head"])
def test_convert_round_trip(tmp_path, mlp):
    checkpoint = make_checkpoint(tmp_path / "final.pt", mlp=mlp, method="cast" if mlp else "moco")
    query = {key[len("encoder_q."):]: value for key, value in checkpoint["model"].items() if key.startswith("encoder_q.")}
    expected = {key: value for key, value in query.items() if not key.startswith("fc.")}

    convert(tmp_path / "final.pt", tmp_path / "backbone.pt", tmp_path / "backbone.pkl")

    state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    incompatible = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(incompatible.missing_keys) == ["fc.bias", "fc.weight"]
    assert incompatible.unexpected_keys == []

    with open(tmp_path / "backbone.pkl", "rb") as stream:
        weights = pickle.load(stream)
    assert weights["matching_heuristics"] is True
    assert weights["__author__"]
    renamed = {torchvision_name(name): array for name, array in weights["model"].items()}
    compared = {key: value for key, value in expected.items() if not key.endswith("num_batches_tracked")}
    assert sorted(renamed) == sorted(compared)
    for key, value in compared.items():
        assert isinstance(renamed[key], np.ndarray)
        assert np.array_equal(renamed[key], value.numpy()), key


def test_convert_writes_sidecar(tmp_path):
    make_checkpoint(tmp_path / "final.pt", method="cast", seed=7)
    convert(tmp_path / "final.pt", tmp_path / "backbone.pt", None)
    description = json.loads(sidecar_path(tmp_path / "backbone.pt").read_text())
    assert description["arch"] == "resnet18"
    assert description["method"] == "cast"
    assert description["seed"] == 7
    assert not (tmp_path / "backbone.pkl").exists()
    backbone = load_backbone(str(tmp_path / "backbone.pt"), None, seed=0)
    assert backbone.arch == "resnet18"
    assert backbone.info["method"] == "cast"
    assert state_checksum(backbone.model) == description["weights_sha256"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_detectron2_names_follow_resnet_naming(arch):
    state = torchvision.models.get_model(arch).state_dict()
    names = list(to_detectron2(state)["model"])
    for name in names:
        assert DETECTRON2_NAME.match(name), name
    stages = {name.split(".")[0] for name in names}
    assert stages == {"stem", "res2", "res3", "res4", "res5"}
    assert "res3.0.shortcut.weight" in names
    assert "res5.0.shortcut.norm.running_var" in names
    assert all("num_batches_tracked" not in name for name in names)


def test_detectron2_name_examples():
    assert detectron2_name("conv1.weight") == "stem.conv1.weight"
    assert detectron2_name("bn1.running_mean") == "stem.conv1.norm.running_mean"
    assert detectron2_name("layer1.0.conv2.weight") == "res2.0.conv2.weight"
    assert detectron2_name("layer4.2.bn3.running_var") == "res5.2.conv3.norm.running_var"
    assert detectron2_name("layer3.0.downsample.0.weight") == "res4.0.shortcut.weight"
    assert detectron2_name("layer3.0.downsample.1.bias") == "res4.0.shortcut.norm.bias"
    assert detectron2_name("layer2.1.bn1.num_batches_tracked") is None
    assert detectron2_name("fc.weight") is None


def test_truncated_checkpoint_is_rejected(tmp_path, caplog):
    make_checkpoint(tmp_path / "final.pt")
    data = (tmp_path / "final.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])

    with pytest.raises(DataError, match=r"truncated\.pt.*truncated or was not written by torch\.save"):
        convert(tmp_path / "truncated.pt", tmp_path / "backbone.pt", tmp_path / "backbone.pkl")
    assert not (tmp_path / "backbone.pt").exists()

    with caplog.at_level(logging.ERROR):
        status = cli.main(["convert", "--checkpoint", str(tmp_path / "truncated.pt"), "--backbone", str(tmp_path / "b.pt")])
    assert status == 1
    assert "cannot read pretraining checkpoint" in caplog.text


def test_wrong_architecture_is_rejected(tmp_path):
    make_checkpoint(tmp_path / "final.pt", arch="resnet18", recorded_arch="resnet34")
    with pytest.raises(DataError, match=r"do not match architecture 'resnet34'.*missing keys"):
        convert(tmp_path / "final.pt", tmp_path / "backbone.pt", None)


def test_evaluation_arch_must_match_backbone(tmp_path):
    make_checkpoint(tmp_path / "final.pt")
    convert(tmp_path / "final.pt", tmp_path / "backbone.pt", None)
    with pytest.raises(ConfigError, match="--arch resnet50 does not match"):
        load_backbone(str(tmp_path / "backbone.pt"), "resnet50", seed=0)

    sidecar_path(tmp_path / "backbone.pt").unlink()
    with pytest.raises(DataError, match=r"do not match architecture 'resnet50'.*wrong shape"):
        load_backbone(str(tmp_path / "backbone.pt"), "resnet50", seed=0)
    with pytest.raises(ConfigError, match="Pass --arch"):
        load_backbone(str(tmp_path / "backbone.pt"), None, seed=0)
    with pytest.raises(ConfigError, match="--backbone random needs --arch"):
        load_backbone("random", None, seed=0)


def test_other_files_are_not_checkpoints(tmp_path):
    torch.save({"state_dict": torchvision.models.resnet18().state_dict()}, tmp_path / "model.pt")
    with pytest.raises(DataError, match="is not a pretraining checkpoint"):
        convert(tmp_path / "model.pt", tmp_path / "backbone.pt", None)

    checkpoint = make_checkpoint(tmp_path / "final.pt")
    checkpoint["format_version"] = 2
    torch.save(checkpoint, tmp_path / "future.pt")
    with pytest.raises(DataError, match="format_version 2"):
        convert(tmp_path / "future.pt", tmp_path / "backbone.pt", None)

    with pytest.raises(DataError, match="not found"):
        convert(tmp_path / "missing.pt", tmp_path / "backbone.pt", None)


def test_convert_needs_an_output(tmp_path, caplog):
    make_checkpoint(tmp_path / "final.pt")
    with caplog.at_level(logging.ERROR):
        assert cli.main(["convert", "--checkpoint", str(tmp_path / "final.pt")]) == 1
    assert "nothing to write" in caplog.text
