"""Collective operations of MoCo: gathering keys and shuffling a batch across processes.

Every function works on a single process as well. Collective calls run only
when ``torch.distributed`` is initialized with a world size above 1, so the
same code runs under ``torchrun`` (gloo or NCCL) and in a plain CPU test.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Return the number of processes in the default group, 1 when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """Return this process's rank in the default group, 0 when torch.distributed is not initialized."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def unwrap(module: nn.Module) -> nn.Module:
    """Return the module inside DistributedDataParallel, DataParallel and torch.compile wrappers, or the module itself."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dimension 0, in rank order; no gradient flows back.

    Every process must pass a tensor of the same shape.
    """
    processes = world_size()
    if processes == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(processes)]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def shuffle_batch(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the global batch randomly and return this process's share plus the inverse permutation.

    Under torch.distributed the samples of all processes are gathered, rank 0
    draws one permutation of the global batch and broadcasts it, and each
    process keeps its slice. BatchNorm in the key encoder thus normalizes
    over samples of other processes ("shuffle BN"). On one process the batch is permuted in
    place of that. Pass the returned indices to :func:`unshuffle_batch`.
    """
    processes = world_size()
    if processes == 1:
        permutation = torch.randperm(batch.shape[0], device=batch.device)
        return batch[permutation], torch.argsort(permutation)

    gathered = concat_all_gather(batch)
    permutation = torch.randperm(gathered.shape[0], device=batch.device)
    dist.broadcast(permutation, src=0)
    local = permutation.view(processes, -1)[rank()]
    return gathered[local], torch.argsort(permutation)


@torch.no_grad()
def unshuffle_batch(batch: torch.Tensor, unshuffle: torch.Tensor) -> torch.Tensor:
    """Undo :func:`shuffle_batch`: return the rows that belong to this process, in their original order."""
    processes = world_size()
    if processes == 1:
        return batch[unshuffle]
    gathered = concat_all_gather(batch)
    local = unshuffle.view(processes, -1)[rank()]
    return gathered[local]


@torch.no_grad()
def broadcast_module_state(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from process ``src`` to all processes (no-op on one process)."""
    if world_size() == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=src)
