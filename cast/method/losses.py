"""Losses of CAST: the MoCo contrastive loss, the attention loss on Grad-CAM maps, and their weighted sum."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cast.errors import ConfigError

ATTENTION_REDUCTIONS = ("batch", "sample")


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Return the InfoNCE loss of MoCo logits (N×(1+K)), whose positive is always column 0."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def top1_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Return the percentage (0-dim tensor) of rows whose largest logit is the positive (column 0)."""
    return (logits.argmax(dim=1) == 0).float().mean() * 100.0


def attention_loss(maps: torch.Tensor, masks: torch.Tensor, reduction: str = "batch") -> torch.Tensor:
    """Return one minus the cosine similarity between Grad-CAM maps and saliency masks (both N×h×w).

    ``batch`` flattens the whole batch into one vector before the cosine, as
    the released code does; ``sample`` takes the cosine per sample and
    averages. A mask that is all zero gives a cosine of 0 for its sample.
    """
    if reduction not in ATTENTION_REDUCTIONS:
        raise ConfigError(f"attention_reduction must be one of {', '.join(ATTENTION_REDUCTIONS)}, not {reduction!r}")
    masks = masks.to(maps.dtype)
    if masks.shape[0] != maps.shape[0] or masks[0].numel() != maps[0].numel():
        raise ValueError(
            f"query masks of shape {tuple(masks.shape)} do not match Grad-CAM maps of shape {tuple(maps.shape)}; "
            "build the masks with the same arch, image_size and gradcam_layer as the model"
        )
    if reduction == "batch":
        return 1.0 - F.cosine_similarity(maps.reshape(1, -1), masks.reshape(1, -1), dim=1)[0]
    return 1.0 - F.cosine_similarity(maps.reshape(maps.shape[0], -1), masks.reshape(masks.shape[0], -1), dim=1).mean()


def combine_losses(contrastive: torch.Tensor, attention: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """Return ``beta / (alpha + beta) * contrastive + alpha / (alpha + beta) * attention``."""
    total = alpha + beta
    if total <= 0:
        raise ConfigError(f"alpha ({alpha}) + beta ({beta}) must be positive")
    return (beta / total) * contrastive + (alpha / total) * attention
