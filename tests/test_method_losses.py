"""Tests of the contrastive and attention losses against naive formulas."""

import math

import pytest
import torch

from cast.errors import ConfigError
from cast.method.losses import attention_loss, combine_losses, contrastive_loss, top1_accuracy


def naive_cosine(a, b):
    a, b = a.flatten().tolist(), b.flatten().tolist()
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / max(norm, 1e-8)


def test_contrastive_loss_is_cross_entropy_with_label_zero():
    torch.manual_seed(0)
    logits = torch.randn(5, 9)
    expected = sum(-math.log(math.exp(row[0]) / sum(math.exp(v) for v in row)) for row in logits.tolist()) / 5
    assert contrastive_loss(logits).item() == pytest.approx(expected, rel=1e-5)


def test_top1_accuracy_counts_positive_first():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [2.0, 1.0, 0.0], [1.0, 1.5, 0.0]])
    assert top1_accuracy(logits).item() == pytest.approx(50.0)


def test_attention_loss_batch_flattens_everything():
    torch.manual_seed(1)
    maps, masks = torch.rand(3, 2, 2), (torch.rand(3, 2, 2) > 0.5).float()
    assert attention_loss(maps, masks, "batch").item() == pytest.approx(1 - naive_cosine(maps, masks), abs=1e-6)


def test_attention_loss_sample_averages():
    torch.manual_seed(2)
    maps, masks = torch.rand(4, 3, 3), (torch.rand(4, 3, 3) > 0.5).float()
    masks[0] = 0.0  # an empty mask has cosine 0 with anything
    expected = sum(1 - naive_cosine(maps[i], masks[i]) for i in range(4)) / 4
    assert attention_loss(maps, masks, "sample").item() == pytest.approx(expected, abs=1e-6)


def test_attention_loss_zero_when_aligned():
    masks = (torch.rand(2, 3, 3) > 0.5).float()
    masks[:, 0, 0] = 1.0
    assert attention_loss(masks * 0.5, masks, "sample").item() == pytest.approx(0.0, abs=1e-6)


def test_attention_loss_rejects_mismatched_resolution():
    with pytest.raises(ValueError, match="same arch, image_size and gradcam_layer"):
        attention_loss(torch.rand(2, 7, 7), torch.rand(2, 3, 3))
    with pytest.raises(ConfigError, match="attention_reduction"):
        attention_loss(torch.rand(2, 3, 3), torch.rand(2, 3, 3), "mean")


def test_combine_losses_weights():
    total = combine_losses(torch.tensor(2.0), torch.tensor(4.0), alpha=3.0, beta=1.0)
    assert total.item() == pytest.approx(0.25 * 2.0 + 0.75 * 4.0)
    assert combine_losses(torch.tensor(2.0), torch.tensor(4.0), alpha=0.0, beta=1.0).item() == pytest.approx(2.0)
