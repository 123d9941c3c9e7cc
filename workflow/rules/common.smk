"""Helpers shared by the rules: option strings, output paths, code dependencies and targets.

The rules and dvc.yaml describe the same stages. Keep the paths, commands and
code dependencies here in step with dvc.yaml, which tests/test_workflow.py
compares with them.
"""

import os
import shlex
from pathlib import Path

METHODS = config["experiment"]["methods"]
SEEDS = config["experiment"]["seeds"]
# Evaluation protocols, each with a params.yaml group of the same name.
PROTOCOLS = ["linear", "voc07", "knn"]
# Method name of the randomly initialised reference backbone.
REFERENCE = "random"
ESTIMATED_MASKS = "results/saliency/masks"
# Wildcard pattern of the pretrained methods; the names are checked against the schema's list.
TRAINED_METHOD_PATTERN = "|".join(METHODS)

# Folders and modules of the cast package that each stage runs, as listed in
# the deps of dvc.yaml. A change to any of them reruns the stage. Left out:
# cast/cli.py, io.py, options.py and errors.py, which dispatch commands, parse
# options, write files and word errors for every stage alike.
STAGE_CODE = {
    "verify": ["cast/data", "cast/imageio.py"],
    "saliency": ["cast/data", "cast/imageio.py"],
    "masks": ["cast/data", "cast/imageio.py"],
    "pretrain": ["cast/train", "cast/method", "cast/imageio.py", "cast/devices.py"],
    "convert": [
        "cast/evaluate/__init__.py",
        "cast/evaluate/backbone.py",
        "cast/evaluate/convert.py",
        "cast/evaluate/detectron2.py",
    ],
    "evaluate": ["cast/evaluate", "cast/imageio.py", "cast/devices.py"],
    "tables": [
        "cast/report",
        "cast/method",
        "cast/train/__init__.py",
        "cast/train/checkpoint.py",
        "cast/imageio.py",
        "cast/devices.py",
    ],
}


def options(group):
    """Return a parameter group as `--key value` options, written as DVC writes `${group}`.

    With `parsing.bool: boolean_optional` and `parsing.list: nargs` in
    .dvc/config, DVC 3 writes true as `--key`, false as `--no-key` and a list
    as `--key a b` (nothing for an empty list), and it shell-quotes strings.
    """
    parts = []
    for key, value in group.items():
        if isinstance(value, bool):
            parts.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, str):
            parts.append(f"--{key} {shlex.quote(value)}")
        elif isinstance(value, list):
            if value:
                items = [
                    shlex.quote(item) if isinstance(item, str) else str(item)
                    for item in value
                ]
                parts.append(" ".join([f"--{key}", *items]))
        else:
            parts.append(f"--{key} {value}")
    return " ".join(parts)


def split_names(group):
    """Return the training and validation split names of a data group, as verify-data's --splits value."""
    return f"{config[group]['train_split']} {config[group]['val_split']}"


def worker_threads(group):
    """Return the cores of a stage whose `workers` option counts its processes (0: one per available core)."""
    workers = config[group]["workers"]
    return workers if workers > 0 else workflow.cores


def code_files(stage):
    """Return the Python files of the cast package that `stage` runs, sorted."""
    files = []
    for entry in STAGE_CODE[stage]:
        path = Path(entry)
        if path.is_dir():
            files.extend(str(module) for module in sorted(path.rglob("*.py")))
        else:
            files.append(entry)
    return sorted(set(files))


def folder_of(name):
    """Return a params function that gives the folder of the output ``name``."""

    def folder(wildcards, output):
        return os.path.dirname(output[name])

    return folder


def backbone_file(wildcards, input):
    return input.backbone


def results_root(name, depth):
    """Return a params function that gives the folder ``depth`` levels above the first file of input ``name``.

    The tables command searches these folders for every run's results.
    """

    def root(wildcards, input):
        return str(Path(input[name][0]).parents[depth - 1])

    return root


def pretrain_dir(method, seed):
    return f"results/pretrain/{method}/seed{seed}"


def eval_dir(method, seed, protocol):
    return f"results/eval/{method}/seed{seed}/{protocol}"


def eval_outputs(protocol):
    """Return the output files of one evaluation, with `{method}` and `{seed}` wildcards.

    Only the linear protocol trains, so only it writes the classifier and
    per-epoch plots/. voc07 adds its per-class average precision and test scores.
    """
    folder = eval_dir("{method}", "{seed}", protocol)
    outputs = {"metrics": f"{folder}/metrics.json"}
    if protocol == "linear":
        outputs["classifier"] = f"{folder}/classifier.pt"
        outputs["plots"] = directory(f"{folder}/plots")
    if protocol == "voc07":
        outputs["per_class_ap"] = f"{folder}/per_class_ap.csv"
        outputs["test_scores"] = f"{folder}/test_scores.csv"
    return outputs


def pretrain_threads():
    """Return the CPU cores of one pretraining run, one per process and per loader worker on this machine."""
    group = config["pretrain"]
    return group["nproc_per_node"] * (1 + group["workers"])


def pretrain_gpus():
    """Return the GPUs of one pretraining run on one machine: one per process unless it runs on the CPU."""
    group = config["pretrain"]
    return 0 if group["device"] == "cpu" else group["nproc_per_node"]


def eval_threads(protocol):
    """Return the cores of one evaluation: the main process plus its data-loading workers."""
    return 1 + config[protocol]["workers"]


def eval_gpus(protocol):
    return 0 if config[protocol]["device"] == "cpu" else 1


def eval_metric_files():
    """Return the evaluation results that the tables collect, of each method and the random reference, seed and protocol."""
    return [
        f"{eval_dir(method, seed, protocol)}/metrics.json"
        for method in [*METHODS, REFERENCE]
        for seed in SEEDS
        for protocol in PROTOCOLS
    ]


def pretrain_files(name):
    return [
        f"{pretrain_dir(method, seed)}/{name}" for method in METHODS for seed in SEEDS
    ]


def table_files():
    folder = "results/tables"
    return [
        f"{folder}/results.md",
        f"{folder}/results.csv",
        f"{folder}/results.tex",
        f"{folder}/figures/training_curves.png",
        f"{folder}/figures/gradcam.png",
    ]


def check_config():
    """Raise a clear error for values the schema cannot check: the mask folder, thresholds and milestones."""
    masks = config["data"]["masks"]
    if Path(masks) != Path(ESTIMATED_MASKS) and not Path(masks).is_dir():
        raise ValueError(
            f"data.masks: mask folder {masks!r} not found. Give the folder of your saliency masks, "
            f"or {ESTIMATED_MASKS} to estimate them with 'cast estimate-saliency'."
        )
    check_threshold = config["masks"]["threshold"]
    train_threshold = config["pretrain"]["mask_threshold"]
    if check_threshold != train_threshold:
        raise ValueError(
            f"masks.threshold ({check_threshold}) and pretrain.mask_threshold ({train_threshold}) differ, "
            "so training would binarize the masks differently from the check; set both to the same value."
        )
    for group in ("pretrain", "linear"):
        values = config[group]
        if values["schedule"] == "step" and not all(
            0 < milestone < values["epochs"] for milestone in values["milestones"]
        ):
            raise ValueError(
                f"{group}.milestones {values['milestones']} must lie between 1 and "
                f"{group}.epochs - 1 = {values['epochs'] - 1}, or the step schedule never lowers "
                "the learning rate; lower the milestones together with the epochs."
            )
