"""VOC07 linear classification: one linear SVM per class on frozen features (the ``voc07`` protocol).

Features are the backbone's pooled output on centre crops, L2-normalized. For
each class a scikit-learn ``LinearSVC`` is trained on trainval for every cost
in ``costs``. The cost with the best mean average precision in stratified
``cv_folds``-fold cross-validation is refitted on all of trainval, and that
SVM scores the test images. Positives weigh ``positive_weight`` times as much as
negatives. Images marked difficult (0) are negatives in training by default
(``difficult_in_training``) and are ignored on test.

Average precision, reported per class and as the mean over classes (mAP):

- ``map``: area under the interpolated precision-recall curve, where the
  precision at recall r is the maximum precision at any recall >= r, summed
  over every recall step. This is the VOC devkit's definition from VOC2010
  on, and the one the SVM benchmark of Goyal et al. (ICCV 2019) computes in
  VISSL (``vissl/utils/svm_utils/evaluate.py``).
- ``map_11point``: the VOC2007 devkit's definition, the mean of that
  interpolated precision at the 11 recalls 0, 0.1, ..., 1.

Images with equal scores are ranked in file order, which matters only for ties.

A labelled manifest can stand in for the VOC layout: every class becomes one
binary one-vs-rest task (its own images positive, all others negative), the
training split plays trainval and the validation split plays test.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC

from cast.errors import ConfigError, DataError
from cast.evaluate import options
from cast.evaluate.backbone import Backbone, check_unchanged, state_checksum
from cast.evaluate.datasets import VOC_DIFFICULT, VOC_NEGATIVE, VOC_POSITIVE, MultiLabelSplit
from cast.evaluate.distributed import Context
from cast.evaluate.features import check_sizes, extract_features, show_progress
from cast.io import write_csv

log = logging.getLogger(__name__)

ELEVEN_RECALLS = np.linspace(0.0, 1.0, 11)


@dataclass
class VOC07Config:
    """Settings of the ``voc07`` protocol (the ``voc07`` group of params.yaml)."""

    train_split: str | None = options.setting(None, "split the SVMs train on", default_text="trainval with --voc_root, train with --manifest")
    val_split: str | None = options.setting(None, "split the SVMs are tested on", default_text="test with --voc_root, val with --manifest")
    costs: list[float] = options.setting([0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0], "SVM costs C tried by cross-validation")
    cv_folds: int = options.setting(3, "folds of the cross-validation that picks the cost of each class")
    positive_weight: float = options.setting(2.0, "weight of positive examples relative to negatives in the SVM loss")
    difficult_in_training: str = options.setting("negative", "how training treats images marked difficult (0): negative or ignore", ("negative", "ignore"))
    svm_max_iter: int = options.setting(2000, "maximum iterations of each LinearSVC fit")
    batch_size: int = options.batch_size_setting()
    image_size: int = options.image_size_setting()
    resize_size: int = options.resize_size_setting()
    workers: int = options.workers_setting()
    device: str = options.device_setting()
    eval_seed: int = options.eval_seed_setting()

    def validate(self) -> None:
        check_sizes(self.image_size, self.resize_size)
        if not self.costs or any(cost <= 0 for cost in self.costs):
            raise ConfigError(f"costs must be a non-empty list of positive numbers, got {self.costs}.")
        if self.cv_folds < 2:
            raise ConfigError(f"cv_folds must be at least 2, got {self.cv_folds}.")
        if self.positive_weight <= 0 or self.svm_max_iter <= 0 or self.batch_size <= 0:
            raise ConfigError("positive_weight, svm_max_iter and batch_size must be positive.")


def precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every rank of the images sorted by descending score, difficult (0) images removed."""
    keep = labels != VOC_DIFFICULT
    positive = labels[keep] == VOC_POSITIVE
    order = np.argsort(-scores[keep], kind="stable")
    true_positives = np.cumsum(positive[order])
    false_positives = np.cumsum(~positive[order])
    num_positive = int(positive.sum())
    if num_positive == 0:
        raise DataError("average precision is undefined without positive images.")
    return true_positives / (true_positives + false_positives), true_positives / num_positive


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the interpolated precision-recall curve over all recall steps (VOC2010+ devkit)."""
    precision, recall = precision_recall(labels, scores)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))


def average_precision_11_point(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean interpolated precision at recalls 0, 0.1, ..., 1 (VOC2007 devkit)."""
    precision, recall = precision_recall(labels, scores)
    values = [precision[recall >= threshold].max(initial=0.0) for threshold in ELEVEN_RECALLS]
    return float(np.mean(values))


def l2_normalize(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features.double(), dim=1).numpy()


def training_targets(targets: np.ndarray, difficult_in_training: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows to train on and their labels in {1, -1} for one class."""
    if difficult_in_training == "ignore":
        rows = np.flatnonzero(targets != VOC_DIFFICULT)
    else:
        rows = np.arange(len(targets))
    labels = np.where(targets[rows] == VOC_POSITIVE, VOC_POSITIVE, VOC_NEGATIVE)
    return rows, labels


def fit_class_svm(features: np.ndarray, labels: np.ndarray, class_name: str, config: VOC07Config) -> tuple[LinearSVC, float, list[float]]:
    """Pick the cost by cross-validated AP and refit on all rows. Returns the SVM, its cost and the AP of every cost."""
    counts = {"positive": int((labels == VOC_POSITIVE).sum()), "negative": int((labels == VOC_NEGATIVE).sum())}
    for kind, count in counts.items():
        if count < config.cv_folds:
            raise DataError(
                f"class {class_name!r} has {count} {kind} training images, fewer than cv_folds = {config.cv_folds}; "
                "lower cv_folds or add images."
            )
    folds = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.eval_seed)
    cv_ap = []
    for cost in sorted(config.costs):
        svm = new_svm(cost, config)
        cv_ap.append(float(cross_val_score(svm, features, labels, cv=folds, scoring="average_precision").mean()))
    best_cost = sorted(config.costs)[int(np.argmax(cv_ap))]
    svm = new_svm(best_cost, config).fit(features, labels)
    return svm, best_cost, cv_ap


def new_svm(cost: float, config: VOC07Config) -> LinearSVC:
    return LinearSVC(
        C=cost,
        class_weight={VOC_POSITIVE: config.positive_weight, VOC_NEGATIVE: 1.0},
        max_iter=config.svm_max_iter,
        random_state=config.eval_seed,
    )


def split_features(backbone: Backbone, split: MultiLabelSplit, config, context: Context) -> torch.Tensor:
    features, indices = extract_features(
        backbone.model, split.paths, config.image_size, config.resize_size, config.batch_size, config.workers,
        context.device, description=f"{split.name} features", progress=show_progress(context.is_main),
    )
    order = torch.argsort(indices)
    return features[order]


def run_voc07(
    backbone: Backbone,
    class_names: list[str],
    trainval: MultiLabelSplit,
    test: MultiLabelSplit,
    config: VOC07Config,
    context: Context,
    out_dir: str | Path,
    data_source: str,
) -> dict:
    """Train the per-class SVMs, score the test split and write per-class results. Returns the metrics (percentages)."""
    config.validate()
    started = time.perf_counter()
    model = backbone.model.to(context.device)
    checksum_before = state_checksum(model)
    train_features = l2_normalize(split_features(backbone, trainval, config, context))
    test_features = l2_normalize(split_features(backbone, test, config, context))
    check_unchanged(model, checksum_before)

    per_class, score_rows = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for column, name in enumerate(class_names):
            rows, labels = training_targets(trainval.targets[:, column], config.difficult_in_training)
            svm, cost, cv_ap = fit_class_svm(train_features[rows], labels, name, config)
            scores = svm.decision_function(test_features)
            test_labels = test.targets[:, column]
            if not (test_labels == VOC_POSITIVE).any():
                raise DataError(f"class {name!r} has no positive image in split {test.name!r}, so its average precision is undefined.")
            per_class.append(
                {
                    "class": name,
                    "cost": cost,
                    "cv_ap": 100.0 * max(cv_ap),
                    "ap": 100.0 * average_precision(test_labels, scores),
                    "ap_11point": 100.0 * average_precision_11_point(test_labels, scores),
                    "train_positive": int((labels == VOC_POSITIVE).sum()),
                    "test_positive": int((test_labels == VOC_POSITIVE).sum()),
                    "test_difficult": int((test_labels == VOC_DIFFICULT).sum()),
                }
            )
            score_rows += [{"image": image, "class": name, "label": int(label), "score": float(score)} for image, label, score in zip(test.image_ids, test_labels, scores)]
            log.info("class %-20s cost %-8g cv AP %.2f  test AP %.2f", name, cost, per_class[-1]["cv_ap"], per_class[-1]["ap"])
    convergence_warnings = sum(issubclass(warning.category, ConvergenceWarning) for warning in caught)
    if convergence_warnings:
        log.warning("%d LinearSVC fits stopped at svm_max_iter = %d before converging. Raise svm_max_iter if the APs matter.", convergence_warnings, config.svm_max_iter)

    table = pd.DataFrame(per_class)
    write_csv(Path(out_dir) / "per_class_ap.csv", table)
    write_csv(Path(out_dir) / "test_scores.csv", pd.DataFrame(score_rows))
    return {
        "map": float(table["ap"].mean()),
        "map_11point": float(table["ap_11point"].mean()),
        "ap_definition": "map: area under the interpolated precision-recall curve at every recall step (VOC2010+ devkit). map_11point: VOC2007 devkit 11-point interpolation",
        "per_class_ap": dict(zip(table["class"], table["ap"].round(4))),
        "num_classes": len(class_names),
        "num_trainval": len(trainval.paths),
        "num_test": len(test.paths),
        "trainval_split": trainval.name,
        "test_split": test.name,
        "data_source": data_source,
        "svm_convergence_warnings": convergence_warnings,
        "backbone_sha256": checksum_before,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "config": asdict(config),
    }
