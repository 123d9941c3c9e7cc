"""Reading the metrics that the pipeline stages wrote, for the result tables and figures.

Evaluation results are ``metrics.json`` files that carry ``method``, ``seed``
and ``protocol`` fields beside the numbers. A pretraining run is a folder that
contains ``final.pt`` (whose ``params`` name the method and seed), ``metrics.json``
and per-epoch values in DVCLive's layout, ``plots/metrics/<name>.tsv``.
Paths given on the command line may be these files and folders themselves or
folders above them, which are searched recursively.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cast.errors import DataError

log = logging.getLogger(__name__)

# Method name under which evaluation stages report a randomly initialised backbone.
REFERENCE_METHOD = "random"

PAPER_COLUMNS = ("evaluation", "protocol", "metric", "method", "value", "std", "pretraining", "source")


@dataclass(frozen=True)
class EvalResult:
    """The numbers of one evaluation run (one method, seed and protocol)."""

    method: str
    seed: int
    protocol: str
    values: dict[str, float]
    path: Path


@dataclass
class PretrainRun:
    """One pretraining output folder: its method, seed, final checkpoint and per-epoch curves."""

    method: str
    seed: int
    folder: Path
    curves: dict[str, pd.Series] = field(default_factory=dict)

    @property
    def checkpoint(self) -> Path:
        return self.folder / "final.pt"


def find_files(paths: list[Path], name: str) -> list[Path]:
    """Return every file called ``name`` among ``paths`` and below the folders in ``paths``, sorted."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            found.update(candidate for candidate in path.rglob(name) if candidate.is_file())
        else:
            raise DataError(f"{path} not found; pass metrics files or the folders that contain them")
    return sorted(found)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); rerun the stage that wrote it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def numeric_fields(data: dict[str, Any]) -> dict[str, float]:
    """Return the fields of a metrics object that are finite numbers (booleans excluded)."""
    values = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            values[key] = float(value)
    return values


def read_eval_result(path: Path) -> EvalResult:
    data = read_json(path)
    missing = [key for key in ("method", "seed", "protocol") if key not in data]
    if missing:
        raise DataError(
            f"{path} lacks the field(s) {', '.join(missing)}; "
            "it was not written by 'cast linear-eval', or by an older version: rerun that evaluation"
        )
    try:
        seed = int(data["seed"])
    except (TypeError, ValueError):
        raise DataError(f"{path}: seed must be an integer, not {data['seed']!r}") from None
    values = {key: value for key, value in numeric_fields(data).items() if key != "seed"}
    return EvalResult(str(data["method"]), seed, str(data["protocol"]), values, path)


def collect_eval_results(paths: list[Path], methods: list[str], seeds: list[int]) -> list[EvalResult]:
    """Read every evaluation result below ``paths`` and keep those of the requested methods and seeds.

    The reference method ``random`` is kept for the requested seeds as well.
    Two files for the same method, seed and protocol raise DataError, because
    the table could show only one of them.
    """
    reported_methods = set(methods) | {REFERENCE_METHOD}
    results: dict[tuple[str, int, str], EvalResult] = {}
    skipped = 0
    for path in find_files(paths, "metrics.json"):
        result = read_eval_result(path)
        if result.method not in reported_methods or result.seed not in seeds:
            skipped += 1
            continue
        key = (result.method, result.seed, result.protocol)
        if key in results:
            raise DataError(
                f"two results for method {key[0]}, seed {key[1]}, protocol {key[2]}: "
                f"{results[key].path} and {path}; remove the stale one"
            )
        results[key] = result
    if skipped:
        log.info("ignored %d evaluation result(s) of methods or seeds outside %s / %s", skipped, methods, seeds)
    if not results:
        raise DataError(
            f"no evaluation results of methods {methods} and seeds {seeds} below {', '.join(map(str, paths))}; "
            "run the evaluation stages first"
        )
    protocols = sorted({key[2] for key in results})
    for method in [*methods, REFERENCE_METHOD]:
        for seed in seeds:
            for protocol in protocols:
                if (method, seed, protocol) not in results:
                    log.warning("no %s result for method %s, seed %d: the table leaves it empty", protocol, method, seed)
    return sorted(results.values(), key=lambda result: (result.protocol, result.method, result.seed))


def read_curve(path: Path) -> pd.Series:
    """Read one DVCLive metric file (tab-separated, columns ``step`` and the metric) as a Series indexed by step."""
    try:
        table = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path} is not a tab-separated metrics file ({error})") from None
    value_columns = [column for column in table.columns if column not in {"step", "timestamp"}]
    if "step" not in table.columns or len(value_columns) != 1:
        raise DataError(f"{path} must have a 'step' column and one value column, not {list(table.columns)}")
    return pd.Series(table[value_columns[0]].to_numpy(dtype=float), index=table["step"].to_numpy(), name=path.stem)


def read_pretrain_run(folder: Path) -> PretrainRun:
    from cast.train.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(folder / "final.pt")
    params = checkpoint.get("params", {})
    if "method" not in params or "seed" not in params:
        raise DataError(f"{folder / 'final.pt'} has no method or seed in its params; rerun 'cast pretrain'")
    run = PretrainRun(str(params["method"]), int(params["seed"]), folder)
    for path in sorted((folder / "plots" / "metrics").glob("*.tsv")):
        run.curves[path.stem] = read_curve(path)
    if not run.curves:
        log.warning("%s has no per-epoch metrics in plots/metrics/", folder)
    return run


def collect_pretrain_runs(paths: list[Path], methods: list[str], seeds: list[int]) -> list[PretrainRun]:
    """Find the pretraining runs (folders with ``final.pt``) of the requested methods and seeds."""
    runs: dict[tuple[str, int], PretrainRun] = {}
    for checkpoint in find_files(paths, "final.pt"):
        run = read_pretrain_run(checkpoint.parent)
        if run.method not in methods or run.seed not in seeds:
            continue
        key = (run.method, run.seed)
        if key in runs:
            raise DataError(f"two pretraining runs of method {run.method}, seed {run.seed}: {runs[key].folder} and {run.folder}")
        runs[key] = run
    for method in methods:
        for seed in seeds:
            if (method, seed) not in runs:
                log.warning("no pretraining run of method %s, seed %d below %s", method, seed, ", ".join(map(str, paths)))
    return sorted(runs.values(), key=lambda run: (methods.index(run.method), run.seed))


def read_paper_results(path: Path) -> pd.DataFrame:
    """Read the reported numbers to compare against: one row per evaluation, method and value, with its source."""
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            rows = list(csv.DictReader(stream))
    except FileNotFoundError:
        raise DataError(f"paper results file {path} not found; pass --paper_results workflow/paper_results.csv") from None
    if not rows:
        raise DataError(f"{path} has no rows")
    header = list(rows[0].keys())
    missing = [column for column in PAPER_COLUMNS if column not in header]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; expected {', '.join(PAPER_COLUMNS)}")
    frame = pd.DataFrame(rows, columns=list(PAPER_COLUMNS))
    for column in ("value", "std"):
        converted = pd.to_numeric(frame[column].replace("", float("nan")), errors="coerce")
        bad = frame[column][converted.isna() & (frame[column] != "")]
        if not bad.empty:
            raise DataError(f"{path}: column {column} must hold numbers, not {bad.iloc[0]!r} (row {bad.index[0] + 2})")
        frame[column] = converted
    return frame
