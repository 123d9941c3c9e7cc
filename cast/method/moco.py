"""MoCo: a query encoder, a momentum key encoder and a queue of negative keys.

Both encoders are torchvision ResNets whose ``fc`` is the projection head, so
their state-dict keys are torchvision's (``fc.weight`` for the linear head,
``fc.0.*`` and ``fc.2.*`` for the MLP head). The trainer may wrap
``encoder_q`` in DistributedDataParallel; everything here reaches the plain
module through :func:`~cast.method.distributed.unwrap`.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from cast.errors import ConfigError
from cast.method import distributed
from cast.method.config import resnet_architectures


def build_encoder(arch: str, dim: int, mlp: bool) -> nn.Module:
    """Build a randomly initialised torchvision ResNet whose ``fc`` projects to ``dim`` features."""
    if arch not in resnet_architectures():
        raise ConfigError(f"arch {arch!r} is not a torchvision ResNet; choose one of {', '.join(resnet_architectures())}")
    encoder = torchvision.models.get_model(arch, weights=None, num_classes=dim)
    if mlp:
        hidden = encoder.fc.in_features
        encoder.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
    return encoder


def check_queue_size(queue_size: int, global_batch_size: int) -> None:
    """Raise ConfigError unless the queue size is a multiple of the global batch size.

    Each step overwrites one global batch of queue columns; a remainder would
    make the write run past the end of the queue.
    """
    if global_batch_size < 1:
        raise ConfigError(f"global batch size must be positive, not {global_batch_size}")
    if queue_size % global_batch_size:
        suggestion = global_batch_size * max(1, round(queue_size / global_batch_size))
        raise ConfigError(
            f"moco_k (queue size) {queue_size} is not a multiple of the global batch size {global_batch_size}; "
            f"set moco_k to a multiple such as {suggestion}, or change the batch size"
        )


@torch.no_grad()
def momentum_update(encoder_q: nn.Module, encoder_k: nn.Module, momentum: float) -> None:
    """Move each key encoder parameter towards its query counterpart: ``k = m * k + (1 - m) * q``.

    Buffers (BatchNorm running statistics) are not copied: each encoder keeps
    its own, as in MoCo.
    """
    params_q = [param.detach() for param in distributed.unwrap(encoder_q).parameters()]
    params_k = [param.detach() for param in distributed.unwrap(encoder_k).parameters()]
    if len(params_q) != len(params_k):
        raise ValueError(f"the encoders differ: {len(params_q)} query parameters but {len(params_k)} key parameters")
    torch._foreach_mul_(params_k, momentum)
    torch._foreach_add_(params_k, params_q, alpha=1.0 - momentum)


@torch.no_grad()
def enqueue(queue: torch.Tensor, queue_ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write ``keys`` (N×C) into the queue (C×K) at the pointer, then advance the pointer modulo K."""
    batch_size = keys.shape[0]
    queue_size = queue.shape[1]
    check_queue_size(queue_size, batch_size)
    start = int(queue_ptr[0])
    queue[:, start : start + batch_size] = keys.T.to(queue.dtype)
    queue_ptr[0] = (start + batch_size) % queue_size


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and key queue of MoCo (He et al., 2020)."""

    def __init__(
        self,
        arch: str = "resnet50",
        dim: int = 128,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.07,
        mlp: bool = False,
    ):
        super().__init__()
        if queue_size < 1:
            raise ConfigError(f"queue_size (moco_k) must be positive, not {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"momentum (moco_m) must be in [0, 1], not {momentum}")
        if temperature <= 0:
            raise ConfigError(f"temperature (moco_t) must be positive, not {temperature}")
        self.momentum = momentum
        self.temperature = temperature

        self.encoder_q = build_encoder(arch, dim, mlp)
        self.encoder_k = build_encoder(arch, dim, mlp)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for param in self.encoder_k.parameters():
            param.requires_grad = False  # the key encoder follows by momentum, never by gradient

        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def momentum_update(self) -> None:
        momentum_update(self.encoder_q, self.encoder_k, self.momentum)

    def encode_query(self, images: torch.Tensor) -> torch.Tensor:
        """Return L2-normalized query features (N×C), with gradient."""
        return F.normalize(self.encoder_q(images), dim=1)

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Return L2-normalized key features (N×C) from the key encoder, with the batch shuffled for BatchNorm."""
        shuffled, unshuffle = distributed.shuffle_batch(images)
        keys = F.normalize(self.encoder_k(shuffled), dim=1)
        return distributed.unshuffle_batch(keys, unshuffle)

    def contrastive_logits(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Return the MoCo logits (N×(1+K)): the positive ``q·k`` first, then ``q·queue``, divided by the temperature.

        The positive is always column 0.
        """
        positive = (query * keys).sum(dim=1, keepdim=True)  # N×1
        negative = query @ self.queue.detach().to(query.dtype)  # N×K
        return torch.cat([positive, negative], dim=1) / self.temperature

    def forward(self, query_images: torch.Tensor, key_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one MoCo forward pass: momentum update, key encoding and logits; return ``(logits, keys)``.

        The queue is left unchanged, so the logits can be backpropagated
        before :meth:`enqueue` overwrites columns that they were computed from.
        """
        query = self.encode_query(query_images)
        self.momentum_update()
        keys = self.encode_keys(key_images)
        return self.contrastive_logits(query, keys), keys

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Add the keys of every process to the queue, in rank order, so all processes keep the same queue."""
        enqueue(self.queue, self.queue_ptr, distributed.concat_all_gather(keys))

    def unwrapped_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the state dict with plain ``encoder_q.*`` keys even while ``encoder_q`` is wrapped in DDP."""
        state = {f"encoder_q.{key}": value for key, value in distributed.unwrap(self.encoder_q).state_dict().items()}
        state.update({f"encoder_k.{key}": value for key, value in self.encoder_k.state_dict().items()})
        state["queue"] = self.queue
        state["queue_ptr"] = self.queue_ptr
        return state

    def load_unwrapped_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict written by :meth:`unwrapped_state_dict` (or by an unwrapped model), wrapped or not."""
        expected = set(self.unwrapped_state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"state dict does not match this MoCo model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        distributed.unwrap(self.encoder_q).load_state_dict(_subtree(state, "encoder_q."))
        self.encoder_k.load_state_dict(_subtree(state, "encoder_k."))
        self.queue.copy_(state["queue"])
        self.queue_ptr.copy_(state["queue_ptr"])


def _subtree(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
