"""Image transforms for evaluation and feature extraction with a frozen backbone."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torchvision import transforms
from tqdm import tqdm

from cast.errors import ConfigError
from cast.evaluate.datasets import ImageFiles

# Mean and standard deviation of ImageNet RGB values on the 0-1 scale. torchvision
# ResNets and MoCo pretraining normalize with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_sizes(image_size: int, resize_size: int) -> None:
    if image_size < 32:
        raise ConfigError(f"image_size {image_size} is too small for a ResNet (its output stride is 32). Use 32 or more.")
    if resize_size < image_size:
        raise ConfigError(f"resize_size {resize_size} is smaller than image_size {image_size}, but the centre crop needs resize_size >= image_size.")


def train_transform(image_size: int) -> transforms.Compose:
    """Random resized crop and horizontal flip, as in supervised ImageNet training."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int, resize_size: int) -> transforms.Compose:
    """Resize the shorter side to ``resize_size``, then take the centre ``image_size`` square."""
    return transforms.Compose(
        [
            transforms.Resize(resize_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def show_progress(is_main: bool) -> bool:
    """Progress bars only on the main process and only when stderr is a terminal."""
    return is_main and sys.stderr.isatty()


def make_loader(
    dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    persistent: bool = False,
) -> DataLoader:
    """Build a loader in sampler order. ``persistent`` keeps the worker processes between epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        generator=generator,
    )


@torch.no_grad()
def extract_features(
    model: nn.Module,
    paths: list[Path],
    image_size: int,
    resize_size: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    sampler: Sampler | None = None,
    description: str = "features",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model on centre crops of ``paths``.

    Returns the features (N×D, float32, on CPU) and the index of each row in
    ``paths``. With a sampler, only the images it yields are processed, in its order.
    """
    dataset = ImageFiles(paths, eval_transform(image_size, resize_size))
    loader = make_loader(dataset, batch_size, workers, device, sampler=sampler)
    features, indices = [], []
    for images, batch_indices in tqdm(loader, desc=description, disable=not progress, leave=False):
        features.append(model(images.to(device, non_blocking=True)).float().cpu())
        indices.append(batch_indices)
    if not features:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(indices)
