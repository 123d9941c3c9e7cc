"""Linear classification on frozen features (the ``linear`` protocol).

A linear layer, initialised from N(0, 0.01) with zero bias, is trained with
SGD and cross-entropy on the frozen backbone's pooled features. The defaults
are those of MoCo's linear evaluation: learning rate 30, momentum 0.9, no
weight decay, batch 256, 100 epochs, learning rate ×0.1 at epochs 60 and 80. Training images are random
resized crops with horizontal flips. With ``cached_features`` the classifier
trains on features of centre crops computed once, which is much faster but
drops the training augmentation.

Validation features come from centre crops and are computed once: the
backbone is frozen and the crop is deterministic, so they are the same in
every epoch.

Under ``torchrun`` (WORLD_SIZE > 1) each process reads its share of the data
and the classifier is wrapped in DistributedDataParallel. ``batch_size`` is the
batch summed over all processes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from cast.errors import ConfigError
from cast.evaluate import options
from cast.evaluate.backbone import Backbone, check_unchanged, state_checksum
from cast.evaluate.datasets import ImageFiles, LabelledSplit
from cast.evaluate.distributed import Context, all_reduce_sum
from cast.evaluate.features import (
    check_sizes,
    extract_features,
    make_loader,
    show_progress,
    train_transform,
)
from cast.evaluate.history import EpochHistory
from cast.evaluate.schedules import SCHEDULES, build_scheduler, check_milestones
from cast.io import torch_save

log = logging.getLogger(__name__)

TOP_K = 5
INIT_STD = 0.01


@dataclass
class LinearConfig:
    """Settings of the ``linear`` protocol (the ``linear`` group of params.yaml)."""

    train_split: str = options.setting("train", "split to train on (knn: the split whose images are the neighbours)")
    val_split: str = options.setting("val", "split to evaluate on")
    lr: float = options.setting(30.0, "base learning rate of SGD")
    momentum: float = options.setting(0.9, "SGD momentum")
    weight_decay: float = options.setting(0.0, "SGD weight decay")
    batch_size: int = options.batch_size_setting()
    epochs: int = options.setting(100, "training epochs")
    schedule: str = options.setting("step", "learning-rate schedule: step (x0.1 at each milestone) or cosine", SCHEDULES)
    milestones: list[int] = options.setting([60, 80], "epochs (from 0) at which the step schedule multiplies the learning rate by 0.1")
    image_size: int = options.image_size_setting()
    resize_size: int = options.resize_size_setting()
    cached_features: bool = options.setting(False, "train on features of centre crops computed once, without augmentation (fast)")
    workers: int = options.workers_setting()
    device: str = options.device_setting()
    eval_seed: int = options.eval_seed_setting()

    def validate(self) -> None:
        check_sizes(self.image_size, self.resize_size)
        if self.schedule == "step":
            check_milestones(self.milestones, self.epochs)
        for name in ("lr", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(f"momentum ({self.momentum}) and weight_decay ({self.weight_decay}) must not be negative.")
        if self.workers < 0:
            raise ConfigError(f"workers must be 0 or more, got {self.workers}.")


@dataclass
class TrainingData:
    """Source of each epoch's training batches: cached features or image files."""

    features: torch.Tensor | None  # N×D when cached
    labels: torch.Tensor  # N, class indices
    loader: DataLoader | None  # when not cached, yields (images, index into labels)
    sampler: DistributedSampler | None


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world_size``-th index from ``rank`` on, without padding, so each image is counted once."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def per_process_batch(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ConfigError(f"batch_size {batch_size} is not divisible by the {world_size} processes. Choose a multiple of {world_size}.")
    return batch_size // world_size


def new_classifier(feature_dim: int, num_classes: int, seed: int) -> nn.Linear:
    """Build a linear layer with weights from N(0, 0.01) and zero bias, identical for a given seed."""
    classifier = nn.Linear(feature_dim, num_classes)
    generator = torch.Generator().manual_seed(seed)
    nn.init.normal_(classifier.weight, mean=0.0, std=INIT_STD, generator=generator)
    nn.init.zeros_(classifier.bias)
    return classifier


def top_k_note(top_k: int, num_classes: int) -> str:
    note = f"top-5 uses k = min(5, number of classes) = {top_k}"
    return note + (", so it is 100 by construction" if top_k == num_classes else "")


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Count the rows whose label is among the ``k`` highest logits."""
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


def run_linear(
    backbone: Backbone,
    class_names: list[str],
    train: LabelledSplit,
    val: LabelledSplit,
    config: LinearConfig,
    context: Context,
    out_dir: str | Path,
) -> dict:
    """Train and evaluate the linear classifier and return the metrics (percentages).

    Writes the per-epoch values to ``out_dir/plots/`` and the trained layer
    (``weight``, ``bias``) to ``out_dir/classifier.pt``.

    Raises BackboneChangedError if the backbone's weights differ afterwards.
    """
    config.validate()
    started = time.perf_counter()
    # Crops and flips drawn in the main process (workers=0) use the global generator.
    torch.manual_seed(derived_seed(config.eval_seed, context.rank))
    device = context.device
    model = backbone.model.to(device)
    checksum_before = state_checksum(model)
    batch = per_process_batch(config.batch_size, context.world_size)
    progress = show_progress(context.is_main)
    num_classes = len(class_names)
    top_k = min(TOP_K, num_classes)

    val_features, val_labels = shard_features(model, val, ShardSampler(len(val.paths), context.rank, context.world_size), config, batch, device, "val features", progress)
    data = training_data(model, train, config, context, batch, progress)

    classifier = new_classifier(backbone.feature_dim, num_classes, config.eval_seed).to(device)
    trained = classifier
    if context.distributed:
        trained = DistributedDataParallel(classifier, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(trained.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = build_scheduler(optimizer, config.schedule, config.epochs, config.milestones)
    history = EpochHistory(out_dir)
    best = {"top1": -1.0, "top5": -1.0, "epoch": -1}
    evaluation = {}

    for epoch in range(config.epochs):
        learning_rate = optimizer.param_groups[0]["lr"]
        loss, train_top1 = train_one_epoch(model, trained, optimizer, data, epoch, config, context, batch, progress)
        if not math.isfinite(loss):
            raise ConfigError(
                f"the training loss became {loss} in epoch {epoch} at learning rate {learning_rate}, "
                "so the features are too large for this learning rate. Lower lr."
            )
        evaluation = evaluate(classifier, val_features, val_labels, top_k, context)
        scheduler.step()

        if evaluation["top1"] > best["top1"]:
            best.update(top1=evaluation["top1"], epoch=epoch)
        best["top5"] = max(best["top5"], evaluation["top5"])
        if context.is_main:
            history.log(epoch, {"lr": learning_rate, "train/loss": loss, "train/top1": train_top1, "val/top1": evaluation["top1"], "val/top5": evaluation["top5"]})
            history.write()
            log.info(
                "epoch %d/%d  lr %.4g  loss %.4f  train top-1 %.2f  val top-1 %.2f  top-%d %.2f",
                epoch + 1, config.epochs, learning_rate, loss, train_top1, evaluation["top1"], top_k, evaluation["top5"],
            )

    check_unchanged(model, checksum_before)
    if context.is_main:
        torch_save(Path(out_dir) / "classifier.pt", {key: value.cpu() for key, value in classifier.state_dict().items()})
    return {
        "top1": evaluation["top1"],
        "top5": evaluation["top5"],
        "top1_best": best["top1"],
        "top5_best": best["top5"],
        "best_epoch": best["epoch"],
        "top5_k": top_k,
        "top5_note": top_k_note(top_k, num_classes),
        "num_classes": num_classes,
        "classes": class_names,
        "num_train": len(train.paths),
        "num_val": len(val.paths),
        "cached_features": config.cached_features,
        "train_augmentation": "none: centre crops, features computed once" if config.cached_features else "random resized crop and horizontal flip",
        "backbone_sha256": checksum_before,
        "world_size": context.world_size,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "config": asdict(config),
    }


def shard_features(model, split: LabelledSplit, sampler, config: LinearConfig, batch: int, device, description: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    features, indices = extract_features(
        model, split.paths, config.image_size, config.resize_size, batch, config.workers, device,
        sampler=sampler, description=description, progress=progress,
    )
    labels = torch.tensor(split.labels, dtype=torch.long)[indices]
    return features, labels


def training_data(model, train: LabelledSplit, config: LinearConfig, context: Context, batch: int, progress: bool) -> TrainingData:
    labels = torch.tensor(train.labels, dtype=torch.long)
    if config.cached_features:
        # Padded like DistributedSampler, so every process has as many batches as the others.
        sampler = DistributedSampler(range(len(train.paths)), num_replicas=context.world_size, rank=context.rank, shuffle=False)
        features, shard_labels = shard_features(model, train, sampler, config, batch, context.device, "train features", progress)
        return TrainingData(features=features, labels=shard_labels, loader=None, sampler=None)
    dataset = ImageFiles(train.paths, train_transform(config.image_size))
    sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True, seed=config.eval_seed)
    generator = torch.Generator().manual_seed(derived_seed(config.eval_seed, context.rank))
    loader = make_loader(dataset, batch, config.workers, context.device, sampler=sampler, generator=generator, persistent=True)
    return TrainingData(features=None, labels=labels, loader=loader, sampler=sampler)


def derived_seed(*numbers: int) -> int:
    """Return a 63-bit seed that depends on all ``numbers`` (for example seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0] >> 1)


def training_batches(data: TrainingData, epoch: int, config: LinearConfig, context: Context, batch: int):
    """Yield (features or images, labels) for one epoch, shuffled anew each epoch."""
    if data.features is not None:
        generator = torch.Generator().manual_seed(derived_seed(config.eval_seed, epoch, context.rank))
        order = torch.randperm(len(data.features), generator=generator)
        for start in range(0, len(order), batch):
            chosen = order[start:start + batch]
            yield data.features[chosen], data.labels[chosen]
        return
    data.sampler.set_epoch(epoch)
    for images, indices in data.loader:
        yield images, data.labels[indices]


def train_one_epoch(model, trained, optimizer, data: TrainingData, epoch: int, config: LinearConfig, context: Context, batch: int, progress: bool) -> tuple[float, float]:
    """Train the classifier for one epoch and return the mean loss and top-1 on the training batches (percent)."""
    device = context.device
    trained.train()
    loss_sum, correct, count = 0.0, 0, 0
    batches = training_batches(data, epoch, config, context, batch)
    for inputs, labels in tqdm(batches, desc=f"epoch {epoch + 1}", disable=not progress, leave=False):
        inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if data.features is None:
            with torch.no_grad():
                inputs = model(inputs)
        logits = trained(inputs)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(labels)
        correct += top_k_correct(logits.detach(), labels, 1)
        count += len(labels)
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], context)
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


@torch.no_grad()
def evaluate(classifier: nn.Linear, features: torch.Tensor, labels: torch.Tensor, top_k: int, context: Context, chunk: int = 4096) -> dict[str, float]:
    """Compute top-1 and top-k accuracy (percent) over the validation shards of all processes."""
    classifier.eval()
    correct1, correct5 = 0, 0
    for start in range(0, len(features), chunk):
        logits = classifier(features[start:start + chunk].to(context.device))
        target = labels[start:start + chunk].to(context.device)
        correct1 += top_k_correct(logits, target, 1)
        correct5 += top_k_correct(logits, target, top_k)
    correct1, correct5, count = all_reduce_sum([correct1, correct5, len(labels)], context)
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count}
