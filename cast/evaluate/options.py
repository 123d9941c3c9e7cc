"""Protocol settings as dataclasses whose fields are the keys of a ``params.yaml`` group.

Each protocol module declares its settings with ``setting(default, help)``.
``cast linear-eval`` turns every field into a ``--key`` option, so a field's
name, type and default are the only place where a parameter is defined.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any, help: str, choices: tuple | None = None, default_text: str | None = None) -> Any:
    """Declare a protocol setting with its default, help text and allowed values.

    ``default_text`` describes a default that depends on other options (the field's default is then None).
    """
    metadata = {"help": help, "choices": choices, "default_text": default_text}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# Settings that several protocols share, with one meaning everywhere.
def batch_size_setting(default: int = 256) -> Any:
    return setting(default, "images per batch, summed over all processes")


def image_size_setting() -> Any:
    return setting(224, "side of the square crop fed to the backbone, in pixels")


def resize_size_setting() -> Any:
    return setting(256, "shorter side after resizing, before the centre crop, in pixels")


def workers_setting() -> Any:
    return setting(4, "data-loading worker processes per process (0 loads in the main process)")


def device_setting() -> Any:
    return setting("auto", "device: auto (CUDA if available), cpu, cuda or cuda:N")


def eval_seed_setting() -> Any:
    return setting(0, "seed of the evaluation's own randomness (classifier initialisation, data order, crops, folds)")
