"""Frozen ResNet backbones for evaluation: reading, checking and fingerprinting them.

A backbone file is a torchvision ResNet state dict without the classifier
(``fc.*``), so ``torch.load(path, weights_only=True)`` returns the state dict and
``torchvision.models.get_model(arch).load_state_dict(state, strict=False)``
reports only ``fc.weight`` and ``fc.bias`` as missing. The architecture name and
the provenance live in a JSON sidecar named ``<backbone file>.json`` (for
example ``backbone.pt.json``), written by ``cast convert``.

Evaluation also accepts a pretraining checkpoint in place of a backbone file,
and the name ``random`` for a randomly initialised network.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from cast.errors import ConfigError, DataError

CHECKPOINT_FORMAT = "cast-pretrain-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
BACKBONE_FORMAT = "cast-backbone"
BACKBONE_FORMAT_VERSION = 1
RANDOM_BACKBONE = "random"

# torchvision ResNet variants: they share the key layout that the Detectron2
# conversion and the projection-head removal rely on.
RESNET_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")
QUERY_PREFIX = "encoder_q."


@dataclass
class Backbone:
    """A frozen feature extractor: a torchvision ResNet whose ``fc`` is the identity."""

    model: nn.Module
    arch: str
    feature_dim: int
    source: str
    info: dict[str, Any] = field(default_factory=dict)


class BackboneChangedError(RuntimeError):
    """The backbone's parameters or buffers changed while it should have stayed frozen."""


def sidecar_path(backbone_path: str | os.PathLike) -> Path:
    """Return the path of the JSON file that describes a backbone file."""
    return Path(f"{os.fspath(backbone_path)}.json")


def check_arch(arch: str) -> str:
    if arch not in RESNET_ARCHS:
        raise ConfigError(f"unsupported architecture {arch!r}. Use one of: {', '.join(RESNET_ARCHS)}")
    return arch


def build_resnet(arch: str) -> nn.Module:
    """Build an untrained torchvision ResNet with its default initialisation."""
    return torchvision.models.get_model(check_arch(arch), weights=None)


def load_torch_file(path: str | os.PathLike, file_kind: str) -> Any:
    """Load a file written by ``torch.save`` with ``weights_only=True``, raising DataError on failure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{file_kind} not found: {path}. Check the path, or run the stage that writes it.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(
            f"cannot read {file_kind} {path}: the file is truncated or was not written by torch.save "
            f"with tensors and plain Python values only ({type(error).__name__}: {error}). "
            "Rerun the stage that wrote it."
        ) from error


def read_pretrain_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a pretraining checkpoint (format ``cast-pretrain-checkpoint``, version 1)."""
    checkpoint = load_torch_file(path, "pretraining checkpoint")
    return validate_pretrain_checkpoint(checkpoint, path)


def validate_pretrain_checkpoint(checkpoint: Any, path: str | os.PathLike) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise DataError(
            f"{path} is not a pretraining checkpoint: expected a dict with format {CHECKPOINT_FORMAT!r}, "
            f"found {found!r}. Pass the final.pt written by 'cast pretrain'."
        )
    version = checkpoint.get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise DataError(
            f"{path} has checkpoint format_version {version!r}, but this code reads version "
            f"{CHECKPOINT_FORMAT_VERSION}. Convert it with the matching version of cast."
        )
    params = checkpoint.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("arch"), str):
        raise DataError(f"{path}: the checkpoint has no params['arch'], so its architecture is unknown.")
    if params["arch"] not in RESNET_ARCHS:
        raise DataError(
            f"{path}: params['arch'] is {params['arch']!r}, which is not a supported torchvision ResNet "
            f"({', '.join(RESNET_ARCHS)})."
        )
    model = checkpoint.get("model")
    if not isinstance(model, dict) or not any(key.startswith(QUERY_PREFIX) for key in model):
        raise DataError(f"{path}: the checkpoint's 'model' has no {QUERY_PREFIX}* keys (the query encoder).")
    return checkpoint


def query_backbone_state(checkpoint: dict[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return the query encoder's weights with torchvision keys, without the projection head.

    The projection head is every ``fc.*`` key: ``fc.weight``/``fc.bias`` for a linear
    head, ``fc.0.*``/``fc.2.*`` for the MLP head of MoCo v2.
    """
    state = {
        key[len(QUERY_PREFIX):]: tensor
        for key, tensor in checkpoint["model"].items()
        if key.startswith(QUERY_PREFIX) and not key[len(QUERY_PREFIX):].startswith("fc.")
    }
    validate_backbone_state(state, checkpoint["params"]["arch"], path)
    return state


def validate_backbone_state(state: Any, arch: str, source: str | os.PathLike) -> None:
    """Raise DataError unless ``state`` has exactly the keys and shapes of ``arch`` without ``fc``."""
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise DataError(f"{source}: expected a state dict of tensors, found {type(state).__name__}.")
    expected = {key: value.shape for key, value in build_resnet(arch).state_dict().items() if key not in CLASSIFIER_KEYS}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(shape)}"
        for key, shape in expected.items()
        if key in state and state[key].shape != shape
    ]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} tensors of the wrong shape (first: {'; '.join(wrong_shape[:2])})")
        raise DataError(
            f"{source}: the weights do not match architecture {arch!r}: {', '.join(details)}. "
            "Pass the architecture the model was trained with."
        )


def state_checksum(weights: nn.Module | dict[str, torch.Tensor]) -> str:
    """Return a SHA-256 over the names, dtypes, shapes and values of every parameter and buffer.

    Takes a module or a state dict. Names are sorted, so the checksum does not depend on key order.
    """
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_unchanged(module: nn.Module, expected_checksum: str) -> None:
    """Raise BackboneChangedError if the module's weights no longer match ``expected_checksum``."""
    actual = state_checksum(module)
    if actual != expected_checksum:
        raise BackboneChangedError(
            f"the frozen backbone changed during evaluation (checksum {expected_checksum[:16]}... before, "
            f"{actual[:16]}... after), so the result does not measure the pretrained weights. "
            "This is a bug: a parameter received updates or a BatchNorm layer ran in training mode."
        )


def freeze(model: nn.Module) -> None:
    """Put the model in eval mode and stop gradients to every parameter."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def load_backbone(spec: str, arch: str | None, seed: int) -> Backbone:
    """Build the frozen feature extractor named by ``spec``.

    ``spec`` is ``random`` (``arch`` required, initialised from ``seed``), a backbone
    file written by ``cast convert``, or a pretraining checkpoint. An ``arch`` that
    disagrees with the file's recorded or actual architecture raises an error.
    """
    if spec == RANDOM_BACKBONE:
        if arch is None:
            raise ConfigError("--backbone random needs --arch (for example --arch resnet18).")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_resnet(arch)
        info = {"format": "random", "init_seed": seed}
        return finish_backbone(model, arch, RANDOM_BACKBONE, info)

    if arch is not None:
        check_arch(arch)
    loaded = load_torch_file(spec, "backbone")
    if isinstance(loaded, dict) and loaded.get("format") == CHECKPOINT_FORMAT:
        checkpoint = validate_pretrain_checkpoint(loaded, spec)
        recorded_arch = checkpoint["params"]["arch"]
        check_arch_agrees(arch, recorded_arch, spec)
        state = query_backbone_state(checkpoint, spec)
        params = checkpoint["params"]
        info = {"format": CHECKPOINT_FORMAT, "method": params.get("method"), "seed": params.get("seed"), "epoch": checkpoint.get("epoch")}
    else:
        info = read_sidecar(spec)
        recorded_arch = info.get("arch")
        check_arch_agrees(arch, recorded_arch, spec)
        recorded_arch = recorded_arch or arch
        if recorded_arch is None:
            raise ConfigError(
                f"the architecture of {spec} is unknown: {sidecar_path(spec)} does not exist. "
                "Pass --arch, or convert the checkpoint again with 'cast convert'."
            )
        state = loaded
        validate_backbone_state(state, recorded_arch, spec)

    model = build_resnet(recorded_arch)
    incompatible = model.load_state_dict(state, strict=False)
    if sorted(incompatible.missing_keys) != sorted(CLASSIFIER_KEYS) or incompatible.unexpected_keys:
        raise DataError(f"{spec}: loading into {recorded_arch} reported {incompatible}.")
    return finish_backbone(model, recorded_arch, os.fspath(spec), info)


def check_arch_agrees(requested: str | None, recorded: str | None, source: str | os.PathLike) -> None:
    if requested is not None and recorded is not None and requested != recorded:
        raise ConfigError(
            f"--arch {requested} does not match {source}, which contains a {recorded}. "
            f"Pass --arch {recorded} or leave --arch out."
        )


def read_sidecar(backbone_path: str | os.PathLike) -> dict[str, Any]:
    """Read ``<backbone>.json``, or return an empty dict when there is none."""
    path = sidecar_path(backbone_path)
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}. Delete it and run 'cast convert' again.") from error
    if not isinstance(info, dict) or info.get("format") != BACKBONE_FORMAT:
        raise DataError(f"{path} is not a backbone description (format {BACKBONE_FORMAT!r}). Run 'cast convert' again.")
    return info


def finish_backbone(model: nn.Module, arch: str, source: str, info: dict[str, Any]) -> Backbone:
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    freeze(model)
    return Backbone(model=model, arch=arch, feature_dim=feature_dim, source=source, info=info)
