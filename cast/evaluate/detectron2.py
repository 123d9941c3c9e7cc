"""Renaming between torchvision ResNet keys and Detectron2 ResNet keys.

Detectron2 (``detectron2/modeling/backbone/resnet.py``) names the stem
``stem.conv1`` with its BatchNorm at ``stem.conv1.norm``, the four stages
``res2`` to ``res5``, each block's convolutions ``conv1`` to ``conv3`` with
their BatchNorm at ``convN.norm``, and the projection shortcut ``shortcut``
with ``shortcut.norm``. torchvision names the same tensors ``conv1``, ``bn1``,
``layer1`` to ``layer4``, ``bnN`` and ``downsample.0``/``downsample.1``.
"""

from __future__ import annotations

import re

import numpy as np
import torch

STAGES = {f"layer{index}": f"res{index + 1}" for index in range(1, 5)}
AUTHOR = "cast-repro (cast convert)"

BLOCK_KEY = re.compile(r"^(layer[1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(\w+)$")
STEM_KEY = re.compile(r"^(conv1|bn1)\.(\w+)$")


def detectron2_name(key: str) -> str | None:
    """Return the Detectron2 name of a torchvision ResNet key, or None for keys Detectron2 does not store.

    Detectron2 has no ``num_batches_tracked`` and no classifier, so those map to None.
    """
    if key.endswith("num_batches_tracked") or key.startswith("fc."):
        return None
    stem = STEM_KEY.match(key)
    if stem:
        layer, field = stem.groups()
        return f"stem.conv1.{field}" if layer == "conv1" else f"stem.conv1.norm.{field}"
    block = BLOCK_KEY.match(key)
    if not block:
        raise ValueError(f"{key!r} is not a torchvision ResNet key")
    stage, index, layer, field = block.groups()
    prefix = f"{STAGES[stage]}.{index}"
    if layer.startswith("conv"):
        return f"{prefix}.{layer}.{field}"
    if layer.startswith("bn"):
        return f"{prefix}.conv{layer[2:]}.norm.{field}"
    if layer == "downsample.0":
        return f"{prefix}.shortcut.{field}"
    return f"{prefix}.shortcut.norm.{field}"


def torchvision_name(name: str) -> str:
    """Return the torchvision key of a Detectron2 ResNet name (the inverse of ``detectron2_name``)."""
    parts = name.split(".")
    if parts[:2] == ["stem", "conv1"]:
        return f"bn1.{parts[-1]}" if parts[2] == "norm" else f"conv1.{parts[-1]}"
    stage = {value: key for key, value in STAGES.items()}.get(parts[0])
    if stage is None or len(parts) < 4:
        raise ValueError(f"{name!r} is not a Detectron2 ResNet name")
    prefix = f"{stage}.{parts[1]}"
    layer, is_norm, field = parts[2], parts[3] == "norm", parts[-1]
    if layer == "shortcut":
        return f"{prefix}.downsample.{1 if is_norm else 0}.{field}"
    return f"{prefix}.bn{layer[4:]}.{field}" if is_norm else f"{prefix}.{layer}.{field}"


def to_detectron2(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """Build the object that Detectron2's checkpointer loads from a ``.pkl`` file.

    With ``matching_heuristics`` set, Detectron2 matches these names to its model
    by suffix, so the ``backbone.bottom_up.`` prefix of an FPN model is not needed.
    """
    model = {}
    for key, tensor in state.items():
        name = detectron2_name(key)
        if name is not None:
            model[name] = tensor.detach().cpu().numpy().astype(np.float32, copy=True)
    return {"model": model, "__author__": AUTHOR, "matching_heuristics": True}
