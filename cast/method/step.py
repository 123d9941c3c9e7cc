"""One optimization step of MoCo or CAST on one batch.

A CAST step runs the query encoder once and keeps the Grad-CAM layer's
activations. It then runs the key encoder twice. The keys give the
contrastive logits and are enqueued. The masked keys give the positive
logits that Grad-CAM explains. The released code runs the
query encoder a second time for Grad-CAM. That changes nothing but the
BatchNorm running statistics and floating-point rounding, and its steps took about 1.6 times as long in
``cast bench step`` (ResNet-18, 96 pixels, batch 32, one CPU thread).
``separate_gradcam_pass=True`` reproduces it for timing.
"""

from __future__ import annotations

import contextlib

import torch

from cast.errors import ConfigError, DataError
from cast.method import distributed
from cast.method.config import METHODS, MethodConfig
from cast.method.gradcam import gradcam, masked_positive_score, record_activations
from cast.method.losses import attention_loss, combine_losses, contrastive_loss, top1_accuracy
from cast.method.moco import MoCo, check_queue_size

CAST_BATCH_KEYS = ("query", "key", "masked_key", "query_mask")
MOCO_BATCH_KEYS = ("query", "key")


def training_step(
    model: MoCo,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: MethodConfig,
    method: str,
    autocast_dtype: torch.dtype | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    separate_gradcam_pass: bool = False,
) -> dict[str, float]:
    """Run zero_grad, forward, backward, gradient clipping, optimizer step and enqueue; return the step's metrics.

    The metrics are ``loss``, ``contrastive_loss``, ``attention_loss`` (0.0
    for MoCo) and ``accuracy`` (top-1 of the contrastive task, in percent),
    all of this process's batch. ``autocast_dtype`` runs the forward pass
    under ``torch.autocast`` on the batch's device type; a ``scaler`` (for
    float16) scales the loss and unscales the gradients before clipping.
    ``separate_gradcam_pass`` runs the query encoder a second time for
    Grad-CAM as the released code did, on one process only (DDP does not
    allow two forward passes before one backward pass).
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    required = CAST_BATCH_KEYS if method == "cast" else MOCO_BATCH_KEYS
    missing = [key for key in required if key not in batch]
    if missing:
        raise DataError(f"the {method} batch lacks {missing}; build it with build_pair_transform(config, {method!r})")
    query_images = batch["query"]
    check_queue_size(model.queue.shape[1], query_images.shape[0] * distributed.world_size())

    optimizer.zero_grad(set_to_none=True)
    with _autocast(query_images.device.type, autocast_dtype):
        if method == "moco":
            logits, keys = model(query_images, batch["key"])
            contrastive = contrastive_loss(logits)
            attention = torch.zeros((), device=contrastive.device)
            loss = contrastive
        else:
            logits, keys, attention = cast_forward(model, batch, config, separate_gradcam_pass)
            contrastive = contrastive_loss(logits)
            loss = combine_losses(contrastive, attention, config.alpha, config.beta)

    _backward_and_step(model, loss, optimizer, config.clip_grad_norm, scaler)
    model.enqueue(keys)  # after backward: the logits were computed from the queue's old columns

    # One stacked transfer, so the step waits for the device once.
    values = torch.stack([loss.detach().float(), contrastive.detach().float(), attention.detach().float(), top1_accuracy(logits)])
    loss_value, contrastive_value, attention_value, accuracy_value = values.tolist()
    return {"loss": loss_value, "contrastive_loss": contrastive_value, "attention_loss": attention_value, "accuracy": accuracy_value}


def cast_forward(
    model: MoCo, batch: dict[str, torch.Tensor], config: MethodConfig, separate_gradcam_pass: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the CAST forward pass; return the contrastive logits, the keys to enqueue and the attention loss."""
    query_images = batch["query"]
    with record_activations(model.encoder_q, config.gradcam_layer) as recorder:
        query = model.encode_query(query_images)  # N×C
    activations = recorder.activations  # N×C'×h×w

    model.momentum_update()
    keys = model.encode_keys(batch["key"])
    logits = model.contrastive_logits(query, keys)  # N×(1+K)

    if config.momentum_updates == 2:
        model.momentum_update()
    masked_keys = model.encode_keys(batch["masked_key"])

    if separate_gradcam_pass:
        with record_activations(model.encoder_q, config.gradcam_layer) as recorder:
            query = model.encode_query(query_images)
        activations = recorder.activations

    score = masked_positive_score(query, masked_keys, model.temperature)
    maps = gradcam(activations, score, relu=config.gradcam_relu, create_graph=True)  # N×h×w
    attention = attention_loss(maps, batch["query_mask"], config.attention_reduction)
    return logits, keys, attention


def _backward_and_step(
    model: MoCo, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip_grad_norm: float, scaler: torch.amp.GradScaler | None
) -> None:
    parameters = [param for param in distributed.unwrap(model.encoder_q).parameters() if param.requires_grad]
    if scaler is None:
        loss.backward()
        if clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
        optimizer.step()
        return
    scaler.scale(loss).backward()
    if clip_grad_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)
