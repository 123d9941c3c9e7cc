"""Code and library versions of a run, written to the log at the start of every run."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import cast


def git_commit(folder: Path | None = None) -> str:
    """Return the checked-out commit (with ``-dirty`` for uncommitted changes), or ``unknown`` outside git."""
    folder = folder or Path(cast.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def describe_environment() -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    return {
        "cast": cast.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda) if torch.cuda.is_available() else "not available",
        "host": platform.node(),
    }
