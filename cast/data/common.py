"""Helpers shared by the data stages: worker pools, manifest reading and path checks."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TypeVar

import pandas as pd

from cast.errors import ConfigError, DataError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

MANIFEST_COLUMNS = ["path", "split", "label", "width", "height", "mode", "sha256", "notes"]


def available_cpus() -> int:
    """Return the number of CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """Turn the ``workers`` option into a process count: 0 means one per available CPU."""
    if workers < 0:
        raise ConfigError(f"workers must be 0 (one per available CPU) or a positive number of processes, got {workers}.")
    return workers or available_cpus()


def parallel_map(function: Callable[[T], R], items: Sequence[T], workers: int, what: str) -> Iterator[R]:
    """Apply ``function`` to ``items`` in ``workers`` processes, yielding results in input order.

    Progress is logged every 10% for inputs of 1000 items or more.

    With one worker the items are processed in this process, which avoids the
    cost of starting a pool for small inputs and tests.
    """
    total = len(items)
    step = max(1, total // 10)
    if workers <= 1 or total <= 1:
        results: Iterable[R] = map(function, items)
        executor = None
    else:
        executor = ProcessPoolExecutor(max_workers=min(workers, total))
        chunksize = max(1, min(64, total // (workers * 8)))
        results = executor.map(function, items, chunksize=chunksize)
    try:
        for index, result in enumerate(results, start=1):
            if total >= 1000 and (index % step == 0 or index == total):
                log.info("%s: %d/%d", what, index, total)
            yield result
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)


def check_split_name(split: str) -> None:
    """Reject split names that are not a single folder name."""
    if not split or split in {".", ".."} or "/" in split or "\\" in split:
        raise ConfigError(f"Invalid split name {split!r}: give the name of one folder below the image root, such as 'train'.")


def check_relative_path(path: str, where: str) -> PurePosixPath:
    """Check that ``path`` is a relative POSIX path without ``..`` parts and return it."""
    posix = PurePosixPath(path)
    if not path or posix.is_absolute() or ".." in posix.parts or "\\" in path:
        raise DataError(f"{where}: path {path!r} is not a relative POSIX path without '..'. Regenerate the file with cast verify-data.")
    return posix


def is_inside(path: Path, root: Path) -> bool:
    """Return True when the resolved ``path`` lies inside the resolved ``root``."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def read_manifest(path: str | os.PathLike, splits: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a manifest written by ``cast verify-data``, check its columns and paths, and keep the rows of ``splits``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Manifest {path} not found. Run cast verify-data first or correct --manifest.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"Manifest {path} is not a readable UTF-8 CSV file ({error}). Regenerate it with cast verify-data.") from error

    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"Manifest {path} lacks the columns {missing}. Regenerate it with cast verify-data.")

    for column in ("width", "height"):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.loc[numbers.isna() | (numbers <= 0), "path"].tolist()
        if bad:
            raise DataError(f"Manifest {path}: invalid {column} for {bad[:3]}. Regenerate it with cast verify-data.")
        frame[column] = numbers.astype(int)

    for row in frame.itertuples():
        posix = check_relative_path(row.path, str(path))
        if posix.parts[0] != row.split:
            raise DataError(f"Manifest {path}: path {row.path!r} does not start with its split folder {row.split!r}.")
    duplicated = frame.loc[frame["path"].duplicated(), "path"].tolist()
    if duplicated:
        raise DataError(f"Manifest {path} lists {duplicated[:3]} more than once. Regenerate it with cast verify-data.")

    if splits:
        present = sorted(frame["split"].unique())
        unknown = [split for split in splits if split not in present]
        if unknown:
            raise ConfigError(f"Splits {unknown} are not in manifest {path}, which has {present}. Correct --splits.")
        frame = frame[frame["split"].isin(list(splits))]
    return frame.sort_values("path").reset_index(drop=True)


def join_notes(notes: Iterable[str]) -> str:
    """Join notes with ';', dropping repeats and keeping their order."""
    return ";".join(dict.fromkeys(note for note in notes if note))


def count_values(values: Iterable[str]) -> dict[str, int]:
    """Count values and return them sorted by name."""
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def describe_files(paths: Sequence[str], limit: int = 5) -> str:
    """Name the first ``limit`` paths and the count of the rest, for error messages."""
    shown = ", ".join(paths[:limit])
    rest = len(paths) - limit
    return f"{shown} and {rest} more" if rest > 0 else shown
