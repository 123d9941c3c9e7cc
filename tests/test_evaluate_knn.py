"""Tests of the knn protocol against a naive weighted vote, and of its command line."""

import json
import math

import pytest
import torch

from cast import cli
from cast.evaluate.backbone import load_backbone
from cast.evaluate.datasets import manifest_splits, read_manifest
from cast.evaluate.features import extract_features
from cast.evaluate.knn import knn_class_scores
from test_evaluate_fixtures import IMAGE_SIZE, RESIZE_SIZE, SAMPLE_IMAGES, one_thread, small_manifest  # noqa: F401


def naive_knn_scores(train, train_labels, queries, num_classes, k, temperature):
    """One query at a time: cosine similarity to every training vector, k best, exp(sim / T) votes."""
    scores = []
    for query in queries.tolist():
        similarities = []
        for vector, label in zip(train.tolist(), train_labels.tolist()):
            dot = sum(a * b for a, b in zip(query, vector))
            norms = math.sqrt(sum(a * a for a in query)) * math.sqrt(sum(b * b for b in vector))
            similarities.append((dot / norms, label))
        similarities.sort(key=lambda pair: -pair[0])
        votes = [0.0] * num_classes
        for similarity, label in similarities[:k]:
            votes[label] += math.exp(similarity / temperature)
        scores.append(votes)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 4, 50])
def test_knn_matches_naive_vote(k):
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    train_labels = torch.randint(0, 3, (30,), generator=generator)
    queries = torch.randn(7, 6, generator=generator, dtype=torch.float64) * 5
    scores = knn_class_scores(train, train_labels, queries, num_classes=3, k=k, temperature=0.1, chunk=3)
    expected = naive_knn_scores(train, train_labels, queries, 3, min(k, 30), 0.1)
    assert torch.allclose(scores, expected, rtol=1e-10)


def test_knn_command(tmp_path, small_manifest):
    argv = [
        "linear-eval", "--protocol", "knn", "--backbone", "random", "--arch", "resnet18",
        "--images", str(SAMPLE_IMAGES), "--manifest", str(small_manifest), "--out_dir", str(tmp_path / "out"),
        "--image_size", str(IMAGE_SIZE), "--resize_size", str(RESIZE_SIZE), "--workers", "0", "--k", "3", "--temperature", "0.1",
    ]
    assert cli.main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["protocol"], metrics["method"], metrics["seed"]) == ("knn", "random", 0)
    assert metrics["k_used"] == 3
    assert not (tmp_path / "out" / "plots").exists()

    class_names, train, val = manifest_splits(read_manifest(small_manifest), small_manifest, SAMPLE_IMAGES, "train", "val")
    model = load_backbone("random", "resnet18", seed=0).model
    device = torch.device("cpu")
    train_features, train_order = extract_features(model, train.paths, IMAGE_SIZE, RESIZE_SIZE, 8, 0, device)
    val_features, val_order = extract_features(model, val.paths, IMAGE_SIZE, RESIZE_SIZE, 8, 0, device)
    votes = naive_knn_scores(train_features.double(), torch.tensor(train.labels)[train_order], val_features.double(), len(class_names), 3, 0.1)
    correct = (votes.argmax(dim=1) == torch.tensor(val.labels)[val_order]).double().mean().item()
    assert metrics["top1"] == pytest.approx(100 * correct)
