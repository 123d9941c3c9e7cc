"""Pretraining checkpoints: atomic writes, a bounded number kept, and checked resumption.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` reads:
the model (both encoders, queue and queue pointer) without any wrapper prefix,
the optimizer, the completed epoch, the per-epoch metric history, RNG states and
the resolved parameters. Resume state lives in ``<out_dir>/checkpoints/<run id>/``,
where the run id is a hash of the parameters that change the result, so a rerun
with other parameters starts a fresh run and leaves older checkpoints in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cast import io
from cast.errors import DataError

logger = logging.getLogger(__name__)

FORMAT = "cast-pretrain-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_PATTERN = re.compile(r"^epoch_(\d{4,})\.pt$")

# Parameters that do not change what is trained: where files go, how often
# checkpoints are written, how many processes share the work and how verbose
# the logs are. Every other parameter must match to resume.
NON_RESULT_PARAMETERS = frozenset(
    {
        "out_dir",
        "images",
        "masks",
        "pairs",
        "log_level",
        "workers",
        "checkpoint_every",
        "keep_checkpoints",
        "dist_timeout_s",
        "nproc_per_node",
        "nnodes",
        "rdzv_endpoint",
        "rdzv_id",
        "device",
        "argv",
        "resume",
    }
)


def result_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Return the parameters that decide the training result, in sorted key order."""
    return {key: params[key] for key in sorted(params) if key not in NON_RESULT_PARAMETERS}


def run_id(params: dict[str, Any]) -> str:
    """Return a short hash that names the run folder of these parameters."""
    text = json.dumps(result_parameters(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` segments that DistributedDataParallel or compile wrappers add to keys."""
    cleaned = {}
    for key, value in state.items():
        parts = [part for part in key.split(".") if part not in {"module", "_orig_mod"}]
        cleaned[".".join(parts)] = value
    return cleaned


def capture_rng_state() -> dict[str, Any]:
    """Return the RNG states of Python, NumPy and PyTorch in a form that weights_only loading accepts."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "position": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    params: dict[str, Any],
    history: list[dict[str, float]],
    scaler_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "params": dict(params),
        "model": strip_wrapper_prefix(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler_state,
        "rng": capture_rng_state(),
        "history": list(history),
    }


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load and check a pretraining checkpoint, with an error that names the file and the fix."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"checkpoint {path} not found") from None
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise DataError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}). "
            "It is truncated or not a PyTorch file: delete it to resume from the previous checkpoint."
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise DataError(
            f"{path} is not a CAST pretraining checkpoint (no format field {FORMAT!r}). "
            "Point to a file written by 'cast pretrain' or remove it from the checkpoint folder."
        )
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"checkpoint {path} has format version {checkpoint.get('format_version')}, "
            f"this version of cast reads version {FORMAT_VERSION}"
        )
    return checkpoint


def describe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """List ``key: saved -> current`` for every result parameter that differs."""
    saved_result = result_parameters(saved)
    current_result = result_parameters(current)
    differences = []
    for key in sorted(set(saved_result) | set(current_result)):
        before = saved_result.get(key, "<missing>")
        after = current_result.get(key, "<missing>")
        if before != after:
            differences.append(f"{key}: {before!r} -> {after!r}")
    return differences


def check_compatible(checkpoint: dict[str, Any], params: dict[str, Any], path: Path) -> None:
    differences = describe_differences(checkpoint["params"], params)
    if differences:
        raise DataError(
            f"checkpoint {path} was written with other parameters, so this run cannot resume from it: "
            + "; ".join(differences)
            + ". Restore those values, or move the checkpoint away to start a new run."
        )


class CheckpointFolder:
    """The checkpoints of one run: ``epoch_XXXX.pt`` files, the newest ``keep`` of them kept."""

    def __init__(self, folder: Path, keep: int):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, not {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        found = [path for path in self.folder.iterdir() if CHECKPOINT_PATTERN.match(path.name)]
        return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)))

    def latest(self) -> Path | None:
        paths = self.paths()
        return paths[-1] if paths else None

    def save(self, checkpoint: dict[str, Any]) -> Path:
        path = self.folder / f"epoch_{checkpoint['epoch']:04d}.pt"
        io.torch_save(path, checkpoint)
        for old in self.paths()[: -self.keep]:
            old.unlink()
            logger.debug("removed old checkpoint %s", old)
        return path
