"""The ``device`` option shared by every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import torch

from cast.errors import ConfigError


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    """Turn a ``device`` option into a device; ``auto`` and ``cuda`` pick the GPU of this local rank.

    Raises ConfigError for an unknown name or a CUDA device that PyTorch does not see.
    """
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    if option == "cuda" and torch.cuda.is_available():
        option = f"cuda:{local_rank % torch.cuda.device_count()}"
    try:
        device = torch.device(option)
    except RuntimeError:
        raise ConfigError(f"invalid device {option!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in {"cpu", "cuda"}:
        raise ConfigError(f"invalid device {option!r}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {option!r} requested, but PyTorch sees no CUDA device; use cpu or auto")
    return device
