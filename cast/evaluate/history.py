"""Per-epoch values written in DVCLive's layout, so ``dvc plots`` reads them.

Each metric ``name`` goes to ``<out_dir>/plots/metrics/<name>.tsv`` with the
columns ``timestamp`` (milliseconds), ``step`` (the epoch, from 0) and the
metric's last path component, as DVCLive 3 writes them. Every file is
rewritten whole and atomically after each epoch, so an interrupted run leaves
complete files.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cast.io import atomic_open


class EpochHistory:
    """Collects one row of metric values per epoch and writes the TSV files."""

    def __init__(self, out_dir: str | os.PathLike):
        self.folder = Path(out_dir) / "plots" / "metrics"
        self.rows: dict[str, list[tuple[int, int, float]]] = {}

    def log(self, epoch: int, values: dict[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        for name, value in values.items():
            self.rows.setdefault(name, []).append((timestamp, epoch, float(value)))

    def write(self) -> None:
        for name, rows in self.rows.items():
            column = name.rsplit("/", 1)[-1]
            with atomic_open(self.folder / f"{name}.tsv", "w", encoding="utf-8", newline="") as stream:
                stream.write(f"timestamp\tstep\t{column}\n")
                for timestamp, epoch, value in rows:
                    stream.write(f"{timestamp}\t{epoch}\t{value!r}\n")
