"""Grad-CAM of the query encoder towards the masked key (Selvaraju et al., 2017).

The map of a layer with activations ``A`` (N×C×h×w) for a scalar score ``s``
weights each channel by the spatial mean of ``ds/dA`` and sums the weighted
channels. CAST takes ``s`` as the positive logit between the query and its
masked key, summed over the batch, and keeps the graph of ``ds/dA``
(``create_graph=True``) so that a loss on the map trains the query encoder.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from cast.errors import ConfigError
from cast.method import distributed

# Floor of max - min in the per-sample normalization, so a constant map becomes zeros instead of NaN.
NORMALIZE_EPS = 1e-7


def resolve_layer(encoder: nn.Module, name: str) -> nn.Module:
    """Return the submodule ``name`` (for example ``layer4`` or ``layer4.1``) of the unwrapped encoder."""
    module = distributed.unwrap(encoder)
    try:
        return module.get_submodule(name)
    except AttributeError:
        top_level = ", ".join(child for child, _ in module.named_children())
        raise ConfigError(
            f"gradcam_layer {name!r} is not a module of the encoder; use a dotted path below one of: {top_level}"
        ) from None


class ActivationRecorder:
    """Forward hook that keeps the output of one module from the most recent forward pass."""

    def __init__(self) -> None:
        self.activations: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ConfigError(f"the Grad-CAM layer must output an N×C×H×W feature map, but it output {shape}; choose a convolutional stage such as layer4")
        self.activations = output


@contextlib.contextmanager
def record_activations(encoder: nn.Module, layer: str) -> Iterator[ActivationRecorder]:
    """Record the activations of ``layer`` during the forward passes run inside the ``with`` block."""
    recorder = ActivationRecorder()
    handle = resolve_layer(encoder, layer).register_forward_hook(recorder)
    try:
        yield recorder
    finally:
        handle.remove()


def cam_from_gradients(activations: torch.Tensor, gradients: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """Return Grad-CAM maps (N×h×w) in [0, 1] from activations and the score's gradients with respect to them.

    The channel weights are the spatial means of the gradients, the map is
    the weighted channel sum, optionally passed through ReLU, and each map is
    min-max normalized on its own. The released CAST code normalizes before
    its ReLU, which therefore has no effect; ``relu=False`` reproduces that.
    """
    weights = gradients.mean(dim=(2, 3), keepdim=True)  # N×C×1×1
    cam = (weights * activations).sum(dim=1)  # N×h×w
    if relu:
        cam = F.relu(cam)
    flat = cam.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    high = flat.max(dim=1, keepdim=True).values
    normalized = (flat - low) / (high - low).clamp_min(NORMALIZE_EPS)
    return normalized.view_as(cam)


def gradcam(activations: torch.Tensor, score: torch.Tensor, relu: bool = False, create_graph: bool = True) -> torch.Tensor:
    """Return Grad-CAM maps (N×h×w) of a scalar ``score`` for ``activations`` recorded in the same graph.

    With ``create_graph=True`` the maps stay differentiable with respect to
    the encoder parameters (a second-order graph); the parameters' ``.grad``
    fields are not touched.
    """
    if score.dim() != 0:
        raise ValueError(f"Grad-CAM needs a scalar score, got shape {tuple(score.shape)}")
    (gradients,) = torch.autograd.grad(score, activations, create_graph=create_graph, retain_graph=True)
    # Float32 keeps the normalization stable when the forward pass ran under autocast.
    return cam_from_gradients(activations.float(), gradients.float(), relu=relu)


def masked_positive_score(query: torch.Tensor, masked_keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the sum over the batch of the positive logits ``q·k_masked / T`` (the score CAST explains)."""
    return (query * masked_keys).sum() / temperature


def query_gradcam_maps(model: nn.Module, query_images: torch.Tensor, masked_key_images: torch.Tensor, layer: str = "layer4", relu: bool = False) -> torch.Tensor:
    """Return detached Grad-CAM maps (N×h×w, in [0, 1]) of the query images towards their masked keys.

    ``model`` is a :class:`~cast.method.moco.MoCo`. Nothing is trained and
    the queue and key encoder are left unchanged, but BatchNorm layers
    update their running statistics when the model is in training mode, so
    call ``model.eval()`` first for figures.
    """
    with torch.enable_grad():
        with record_activations(model.encoder_q, layer) as recorder:
            query = model.encode_query(query_images)
        masked_keys = model.encode_keys(masked_key_images)
        score = masked_positive_score(query, masked_keys, model.temperature)
        maps = gradcam(recorder.activations, score, relu=relu, create_graph=False)
    return maps.detach()


@functools.lru_cache(maxsize=64)
def gradcam_resolution(arch: str, image_size: int, layer: str) -> tuple[int, int]:
    """Return the height and width of ``layer``'s output for a square input of ``image_size`` pixels.

    The size comes from a forward pass on the ``meta`` device, so it is exact
    for any layer of any architecture and costs no memory or compute
    (``layer4`` of a ResNet gives 7×7 for 224 pixels and 3×3 for 96).
    """
    with torch.device("meta"):
        encoder = torchvision.models.get_model(arch, weights=None).eval()  # BatchNorm in training mode rejects 1×1 maps of one image
        recorder = ActivationRecorder()
        handle = resolve_layer(encoder, layer).register_forward_hook(recorder)
        try:
            encoder(torch.empty(1, 3, image_size, image_size))
        finally:
            handle.remove()
    if recorder.activations is None:
        raise ConfigError(f"gradcam_layer {layer!r} is not used in the forward pass of {arch}; choose a stage such as layer4")
    height, width = recorder.activations.shape[-2:]
    return int(height), int(width)
