"""``cast convert``: export the query encoder of a pretraining checkpoint.

Writes up to three files, each atomically:

- ``--backbone OUT.pt``: the query encoder as a torchvision ResNet state dict
  without the projection head. ``torch.load(OUT.pt, weights_only=True)``
  returns the state dict, which loads into ``torchvision.models.<arch>()``
  with only ``fc.weight`` and ``fc.bias`` missing.
- ``OUT.pt.json`` beside it: the architecture, the pretraining method, seed and
  epoch, and SHA-256 checksums of the source checkpoint and of the weights
  (``weights_sha256``, the ``backbone_sha256`` that ``cast linear-eval``
  reports). ``cast linear-eval`` reads the architecture from it.
- ``--detectron2 OUT.pkl``: the same weights under Detectron2's ResNet names,
  as a pickle of ``{"model": {name: numpy array}, "__author__": ...,
  "matching_heuristics": True}``.

The weights expect RGB input normalized with the ImageNet mean and standard
deviation, so a Detectron2 config that loads them needs ``INPUT.FORMAT: RGB``
and ``MODEL.PIXEL_MEAN``/``PIXEL_STD`` of that normalization on the 0-255 scale.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
from pathlib import Path

from cast.errors import ConfigError
from cast.evaluate import backbone as backbones
from cast.evaluate.detectron2 import to_detectron2
from cast.io import atomic_open, torch_save, write_json
from cast.options import add_option

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "checkpoint", required=True, help="pretraining checkpoint (final.pt of 'cast pretrain')")
    add_option(parser, "backbone", default=None, help="output: torchvision state dict of the query backbone (.pt)")
    add_option(parser, "detectron2", default=None, help="output: Detectron2 weights file (.pkl)")


def run(args: argparse.Namespace) -> int:
    if args.backbone is None and args.detectron2 is None:
        raise ConfigError("nothing to write: pass --backbone OUT.pt, --detectron2 OUT.pkl, or both.")
    convert(args.checkpoint, args.backbone, args.detectron2)
    return 0


def convert(checkpoint_path: str | os.PathLike, backbone_path: str | os.PathLike | None, detectron2_path: str | os.PathLike | None) -> dict:
    """Write the backbone and Detectron2 files of one checkpoint and return the sidecar description."""
    checkpoint = backbones.read_pretrain_checkpoint(checkpoint_path)
    state = backbones.query_backbone_state(checkpoint, checkpoint_path)
    params = checkpoint["params"]
    arch = params["arch"]

    description = {
        "format": backbones.BACKBONE_FORMAT,
        "format_version": backbones.BACKBONE_FORMAT_VERSION,
        "arch": arch,
        "method": params.get("method"),
        "seed": params.get("seed"),
        "epoch": checkpoint.get("epoch"),
        "source_checkpoint": os.fspath(checkpoint_path),
        "source_sha256": file_sha256(checkpoint_path),
        "weights_sha256": backbones.state_checksum(state),
    }

    if backbone_path is not None:
        torch_save(backbone_path, state)
        write_json(backbones.sidecar_path(backbone_path), description)
        log.info("wrote %s (%s, %d tensors) and %s", backbone_path, arch, len(state), backbones.sidecar_path(backbone_path))
    if detectron2_path is not None:
        weights = to_detectron2(state)
        with atomic_open(detectron2_path, "wb") as stream:
            pickle.dump(weights, stream, protocol=pickle.HIGHEST_PROTOCOL)
        log.info("wrote %s (%d arrays in Detectron2 naming)", detectron2_path, len(weights["model"]))
    return description


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
