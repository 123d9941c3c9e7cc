"""Weighted k-nearest-neighbour classification on frozen features (the ``knn`` protocol).

A cheap signal during development: no training, one pass over the images.
Features of centre crops are L2-normalized, so the dot product is the cosine
similarity. Each validation image takes its ``k`` most similar training
images, each neighbour votes for its class with weight exp(similarity / T),
and the class with the largest total wins (the weighted k-NN monitor of Wu et
al., CVPR 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination").
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cast.errors import ConfigError
from cast.evaluate import options
from cast.evaluate.backbone import Backbone, check_unchanged, state_checksum
from cast.evaluate.datasets import LabelledSplit
from cast.evaluate.distributed import Context
from cast.evaluate.features import check_sizes, extract_features, show_progress
from cast.evaluate.linear import top_k_note

log = logging.getLogger(__name__)

TOP_K = 5  # top-5 accuracy, capped at the number of classes


@dataclass
class KNNConfig:
    """Settings of the ``knn`` protocol (the ``knn`` group of params.yaml)."""

    train_split: str = options.setting("train", "manifest split whose features are the neighbours")
    val_split: str = options.setting("val", "manifest split that is classified")
    k: int = options.setting(20, "neighbours per query (capped at the number of training images)")
    temperature: float = options.setting(0.07, "temperature T of the neighbour weights exp(similarity / T)")
    batch_size: int = options.batch_size_setting()
    image_size: int = options.image_size_setting()
    resize_size: int = options.resize_size_setting()
    workers: int = options.workers_setting()
    device: str = options.device_setting()

    def validate(self) -> None:
        check_sizes(self.image_size, self.resize_size)
        if self.k < 1 or self.temperature <= 0 or self.batch_size <= 0:
            raise ConfigError(f"k ({self.k}), temperature ({self.temperature}) and batch_size ({self.batch_size}) must be positive.")


@torch.no_grad()
def knn_class_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk: int = 1024,
) -> torch.Tensor:
    """Return the summed neighbour weights per class (queries × classes), with ``k`` capped at the training size."""
    train_features = F.normalize(train_features, dim=1)
    query_features = F.normalize(query_features, dim=1)
    k = min(k, len(train_features))
    scores = torch.zeros(len(query_features), num_classes, dtype=train_features.dtype)
    for start in range(0, len(query_features), chunk):
        similarity = query_features[start:start + chunk] @ train_features.T  # chunk×N
        top_similarity, top_index = similarity.topk(k, dim=1)
        weights = torch.exp(top_similarity / temperature)
        scores[start:start + chunk].scatter_add_(1, train_labels[top_index], weights)
    return scores


def run_knn(backbone: Backbone, class_names: list[str], train: LabelledSplit, val: LabelledSplit, config: KNNConfig, context: Context) -> dict:
    """Classify the validation split by its nearest training images and return the metrics (percentages)."""
    config.validate()
    started = time.perf_counter()
    model = backbone.model.to(context.device)
    checksum_before = state_checksum(model)
    features = []
    for split in (train, val):
        values, indices = extract_features(
            model, split.paths, config.image_size, config.resize_size, config.batch_size, config.workers,
            context.device, description=f"{split.name} features", progress=show_progress(context.is_main),
        )
        features.append(values[torch.argsort(indices)])
    check_unchanged(model, checksum_before)

    train_labels = torch.tensor(train.labels, dtype=torch.long)
    val_labels = torch.tensor(val.labels, dtype=torch.long)
    scores = knn_class_scores(features[0], train_labels, features[1], len(class_names), config.k, config.temperature)
    top_k = min(TOP_K, len(class_names))
    ranked = scores.topk(top_k, dim=1).indices
    top1 = 100.0 * float((ranked[:, 0] == val_labels).double().mean())
    top5 = 100.0 * float((ranked == val_labels[:, None]).any(dim=1).double().mean())
    k_used = min(config.k, len(train.paths))
    log.info("k-NN (k %d, T %g): top-1 %.2f  top-%d %.2f", k_used, config.temperature, top1, top_k, top5)
    return {
        "top1": top1,
        "top5": top5,
        "top5_k": top_k,
        "top5_note": top_k_note(top_k, len(class_names)),
        "k_used": k_used,
        "num_classes": len(class_names),
        "classes": class_names,
        "num_train": len(train.paths),
        "num_val": len(val.paths),
        "backbone_sha256": checksum_before,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "config": asdict(config),
    }
