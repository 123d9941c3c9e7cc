"""``cast linear-eval``: evaluate a frozen backbone with one of three protocols.

- ``linear``: a linear classifier trained with SGD on single-label images (top-1, top-5).
- ``voc07``: one linear SVM per class, mean average precision (VOC2007 or a labelled manifest).
- ``knn``: weighted k-nearest-neighbour top-1, a cheap monitor.

Every protocol has its own settings, the fields of ``LinearConfig``,
``VOC07Config`` and ``KNNConfig``, which are the keys of the ``linear``,
``voc07`` and ``knn`` groups of params.yaml. An option that belongs only to
another protocol is rejected, so a group passed to the wrong protocol fails
instead of being ignored. ``out_dir/metrics.json`` receives the numbers with
the ``protocol``, ``method`` and ``seed`` fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from cast.errors import ConfigError
from cast.evaluate import distributed
from cast.evaluate.backbone import RANDOM_BACKBONE, RESNET_ARCHS, Backbone, load_backbone
from cast.evaluate.datasets import (
    manifest_as_multilabel,
    manifest_splits,
    read_manifest,
    read_voc_split,
    voc_class_names,
)
from cast.evaluate.knn import KNNConfig, run_knn
from cast.evaluate.linear import LinearConfig, run_linear
from cast.evaluate.voc07 import VOC07Config, run_voc07
from cast.io import write_json
from cast.options import add_option

log = logging.getLogger(__name__)

PROTOCOLS: dict[str, type] = {"linear": LinearConfig, "voc07": VOC07Config, "knn": KNNConfig}
RANDOM_METHOD = "random"

# Types of dataclass fields, as written under ``from __future__ import annotations``.
FIELD_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": str},
    "str | None": {"type": str},
    "int": {"type": int},
    "float": {"type": float},
    "list[int]": {"type": int, "nargs": "+"},
    "list[float]": {"type": float, "nargs": "+"},
}


def protocol_settings() -> dict[str, dict[str, dataclasses.Field]]:
    """Map each setting name to the protocols that have it, with that protocol's field."""
    settings: dict[str, dict[str, dataclasses.Field]] = {}
    for protocol, config_class in PROTOCOLS.items():
        for field in dataclasses.fields(config_class):
            settings.setdefault(field.name, {})[protocol] = field
    return settings


def configure(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "protocol", required=True, choices=sorted(PROTOCOLS), help="evaluation protocol")
    add_option(parser, "backbone", required=True, help="backbone file of 'cast convert', a pretraining checkpoint, or 'random'")
    add_option(parser, "arch", default=None, choices=RESNET_ARCHS, help="torchvision architecture (default: read from the backbone's .json file, required with --backbone random)")
    add_option(parser, "images", default=None, help="image folder that manifest paths are relative to (linear, knn, voc07 without --voc_root)")
    add_option(parser, "manifest", default=None, help="manifest.csv of 'cast verify-data' with labelled images")
    add_option(parser, "voc_root", default=None, help="voc07: VOC2007 folder with JPEGImages and ImageSets/Main")
    add_option(parser, "out_dir", required=True, help="output folder for metrics.json and plots/")
    add_option(parser, "method", default=None, help="pretraining method recorded in metrics.json (default: from the backbone, 'random' for --backbone random)")
    add_option(parser, "seed", type=int, default=None, help="pretraining seed recorded in metrics.json, which also initialises --backbone random (default: from the backbone, 0 for random)")

    group = parser.add_argument_group("protocol settings (params.yaml groups linear, voc07, knn)")
    for name, fields in protocol_settings().items():
        first = next(iter(fields.values()))
        defaults = "; ".join(f"{protocol}: {format_default(field)}" for protocol, field in fields.items())
        help_text = f"{first.metadata['help']} (default {defaults})"
        if first.type == "bool":
            add_option(group, name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            add_option(group, name, default=None, choices=first.metadata["choices"], help=help_text, **FIELD_TYPES[first.type])


def format_default(field: dataclasses.Field) -> str:
    value = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return field.metadata["default_text"] if value is None else str(value)


def build_config(args: argparse.Namespace) -> Any:
    """Build the protocol's settings from the options given, rejecting options of other protocols."""
    protocol = args.protocol
    given_settings = {}
    for name, fields in protocol_settings().items():
        value = getattr(args, name)
        if value is None:
            continue
        if protocol not in fields:
            owners = ", ".join(sorted(fields))
            raise ConfigError(
                f"--{name} is a setting of protocol {owners}, not of {protocol}. Remove it "
                f"(pass only the {protocol} group of params.yaml to --protocol {protocol})."
            )
        given_settings[name] = value
    return PROTOCOLS[protocol](**given_settings)


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    config.validate()
    context = distributed.setup(config.device)
    try:
        if context.distributed and args.protocol != "linear":
            raise ConfigError(f"protocol {args.protocol} runs in one process. Start it without torchrun (only linear is distributed).")
        backbone = load_backbone(args.backbone, args.arch, args.seed if args.seed is not None else 0)
        method, seed = run_labels(args, backbone)
        log.info("protocol %s on %s (%s, method %s, seed %s), device %s", args.protocol, args.backbone, backbone.arch, method, seed, context.device)
        results = evaluate(args, config, backbone, context)
        if context.is_main:
            metrics = {"protocol": args.protocol, "method": method, "seed": seed, "arch": backbone.arch, "backbone": backbone.source, **results}
            write_json(Path(args.out_dir) / "metrics.json", metrics)
            log.info("wrote %s", Path(args.out_dir) / "metrics.json")
    finally:
        distributed.teardown(context)
    return 0


def run_labels(args: argparse.Namespace, backbone: Backbone) -> tuple[str, int]:
    """Return the method and seed for metrics.json, raising ConfigError where an option contradicts the backbone's record."""
    if args.backbone == RANDOM_BACKBONE:
        recorded_method, recorded_seed = RANDOM_METHOD, backbone.info["init_seed"]
    else:
        recorded_method, recorded_seed = backbone.info.get("method"), backbone.info.get("seed")
    for option, given, recorded in (("method", args.method, recorded_method), ("seed", args.seed, recorded_seed)):
        if given is not None and recorded is not None and given != recorded:
            raise ConfigError(f"--{option} {given} contradicts {args.backbone}, which records {option} {recorded}. Fix the option or the path.")
    method = args.method if args.method is not None else recorded_method
    seed = args.seed if args.seed is not None else recorded_seed
    if method is None or seed is None:
        raise ConfigError(f"{args.backbone} does not record its pretraining method and seed. Pass --method and --seed.")
    return method, int(seed)


def evaluate(args: argparse.Namespace, config: Any, backbone: Backbone, context: distributed.Context) -> dict:
    if args.protocol == "voc07":
        return evaluate_voc07(args, config, backbone, context)
    class_names, train, val = labelled_data(args, config.train_split, config.val_split)
    if args.protocol == "linear":
        return run_linear(backbone, class_names, train, val, config, context, args.out_dir)
    return run_knn(backbone, class_names, train, val, config, context)


def labelled_data(args: argparse.Namespace, train_split: str, val_split: str):
    if args.manifest is None or args.images is None:
        raise ConfigError(f"protocol {args.protocol} needs --images and --manifest (labelled images in class folders).")
    return manifest_splits(read_manifest(args.manifest), args.manifest, args.images, train_split, val_split)


def evaluate_voc07(args: argparse.Namespace, config: VOC07Config, backbone: Backbone, context: distributed.Context) -> dict:
    if args.voc_root == "":
        args.voc_root = None  # params.yaml writes an empty string for "no VOC folder"
    if args.voc_root is not None and args.manifest is not None:
        # The workflow always passes the evaluation manifest; a VOC folder, when given, is the real benchmark.
        log.info("voc07: using the VOC layout at %s; --manifest %s is not used", args.voc_root, args.manifest)
    if args.voc_root is not None:
        config.train_split = config.train_split or "trainval"
        config.val_split = config.val_split or "test"
        class_names = voc_class_names(args.voc_root, config.train_split)
        trainval = read_voc_split(args.voc_root, config.train_split, class_names)
        test = read_voc_split(args.voc_root, config.val_split, class_names)
        source = f"VOC layout at {os.fspath(args.voc_root)}"
    else:
        config.train_split = config.train_split or "train"
        config.val_split = config.val_split or "val"
        class_names, train, val = labelled_data(args, config.train_split, config.val_split)
        trainval = manifest_as_multilabel(train, len(class_names))
        test = manifest_as_multilabel(val, len(class_names))
        source = (
            f"manifest {os.fspath(args.manifest)}, one-vs-rest: each class is one binary task, "
            f"split {config.train_split} used as trainval and split {config.val_split} as test, no difficult images"
        )
    return run_voc07(backbone, class_names, trainval, test, config, context, args.out_dir, source)
