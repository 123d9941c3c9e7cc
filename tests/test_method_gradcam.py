"""Tests of Grad-CAM: the fast path against a reference built from forward and backward hooks."""

import pytest
import torch
from torch.nn import functional as F

from cast.errors import ConfigError
from cast.method.gradcam import (
    cam_from_gradients,
    gradcam,
    gradcam_resolution,
    masked_positive_score,
    query_gradcam_maps,
    record_activations,
    resolve_layer,
)
from cast.method.moco import MoCo

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoCo(arch="resnet18", dim=16, queue_size=16, temperature=0.2)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)


def hooked_gradcam(model, query_images, masked_keys, layer, relu):
    """Grad-CAM written from its definition, with hooks and loops over samples and channels."""
    stored = {}
    module = model.encoder_q.get_submodule(layer)
    forward = module.register_forward_hook(lambda m, i, output: stored.__setitem__("activations", output.detach()))
    backward = module.register_full_backward_hook(lambda m, gi, grad_output: stored.__setitem__("gradients", grad_output[0].detach()))
    try:
        model.encoder_q.zero_grad()
        query = F.normalize(model.encoder_q(query_images), dim=1)
        score = sum((query[i] * masked_keys[i]).sum() for i in range(query.shape[0])) / model.temperature
        score.backward()
    finally:
        forward.remove()
        backward.remove()
    activations, gradients = stored["activations"], stored["gradients"]
    maps = []
    for n in range(activations.shape[0]):
        cam = torch.zeros(activations.shape[2:])
        for c in range(activations.shape[1]):
            cam += gradients[n, c].mean() * activations[n, c]
        if relu:
            cam = torch.clamp(cam, min=0)
        cam = (cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-7)
        maps.append(cam)
    return torch.stack(maps)


@pytest.mark.parametrize(("layer", "relu"), [("layer4", False), ("layer4", True), ("layer3", False), ("layer3.1", True)])
def test_fast_path_matches_hooks(model, images, layer, relu):
    query_images, masked_key_images = images
    masked_keys = model.encode_keys(masked_key_images)
    expected = hooked_gradcam(model, query_images, masked_keys, layer, relu)

    with record_activations(model.encoder_q, layer) as recorder:
        query = model.encode_query(query_images)
    maps = gradcam(recorder.activations, masked_positive_score(query, masked_keys, model.temperature), relu=relu)
    assert maps.shape == expected.shape
    assert torch.allclose(maps, expected, atol=1e-4)


def test_maps_are_normalized_per_sample(model, images):
    maps = query_gradcam_maps(model, *images, layer="layer3")
    assert maps.shape == (4, 4, 4)
    assert not maps.requires_grad
    flat = maps.flatten(1)
    assert torch.allclose(flat.min(dim=1).values, torch.zeros(4))
    assert torch.allclose(flat.max(dim=1).values, torch.ones(4))


def test_relu_zeroes_negative_evidence():
    activations = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]])
    gradients = torch.ones_like(activations)
    without = cam_from_gradients(activations, gradients, relu=False)
    with_relu = cam_from_gradients(activations, gradients, relu=True)
    assert torch.allclose(without, torch.tensor([[[5 / 7, 2 / 7], [1.0, 0.0]]]))
    assert torch.allclose(with_relu, torch.tensor([[[1 / 3, 0.0], [1.0, 0.0]]]))


def test_constant_map_becomes_zero():
    maps = cam_from_gradients(torch.ones(1, 2, 3, 3), torch.ones(1, 2, 3, 3))
    assert torch.equal(maps, torch.zeros(1, 3, 3))


def test_maps_carry_second_order_gradient(model, images):
    query_images, masked_key_images = images
    masked_keys = model.encode_keys(masked_key_images)
    model.encoder_q.zero_grad()
    with record_activations(model.encoder_q, "layer4") as recorder:
        query = model.encode_query(query_images)
    maps = gradcam(recorder.activations, masked_positive_score(query, masked_keys, model.temperature))
    target = torch.zeros_like(maps)
    target[:, 0, 0] = 1.0
    (maps * target).sum().backward()
    assert model.encoder_q.fc.weight.grad is not None and model.encoder_q.fc.weight.grad.abs().sum() > 0
    assert model.encoder_q.conv1.weight.grad.abs().sum() > 0
    assert all(param.grad is None for param in model.encoder_k.parameters())
    model.encoder_q.zero_grad()


def test_layer_resolved_through_wrapper(model):
    wrapped = torch.nn.DataParallel(model.encoder_q)
    assert resolve_layer(wrapped, "layer4") is model.encoder_q.layer4
    with pytest.raises(ConfigError, match="gradcam_layer 'layer7' is not a module"):
        resolve_layer(wrapped, "layer7")


def test_resolution_from_meta_forward():
    assert gradcam_resolution("resnet50", 224, "layer4") == (7, 7)
    assert gradcam_resolution("resnet18", 96, "layer4") == (3, 3)
    assert gradcam_resolution("resnet18", 100, "layer3") == (7, 7)
    assert gradcam_resolution("resnet18", 224, "layer2") == (28, 28)
    assert gradcam_resolution("resnet18", 32, "layer4") == (1, 1)


def test_score_must_be_scalar(model, images):
    with record_activations(model.encoder_q, "layer4") as recorder:
        query = model.encode_query(images[0])
    with pytest.raises(ValueError, match="scalar score"):
        gradcam(recorder.activations, query.sum(dim=1))
