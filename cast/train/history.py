"""Per-epoch metrics of a pretraining run, written in DVCLive's file layout.

``plots/metrics/<name>.tsv`` contains one row per epoch (columns ``step`` and the
metric name) and ``metrics.json`` the values of the last epoch, so
``dvc plots`` and ``dvc metrics`` read them. The history itself is stored in
every checkpoint, so a resumed run rewrites these files without gaps or
repeated epochs.
"""

from __future__ import annotations

from pathlib import Path

from cast import io

PLOTTED = (
    "loss",
    "contrastive_loss",
    "attention_loss",
    "accuracy",
    "lr",
    "images_per_second",
    "resampled_crops",
    "empty_query_masks",
    "fallback_crops",
)


def write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    """Rewrite the plot files and ``metrics.json`` from the whole history."""
    plots = Path(out_dir) / "plots" / "metrics"
    for name in PLOTTED:
        if not any(name in record for record in history):
            continue  # MoCo has no attention loss
        rows = [f"step\t{name}"]
        rows += [f"{int(record['epoch'])}\t{record[name]!r}" for record in history if name in record]
        io.write_text(plots / f"{name}.tsv", "\n".join(rows) + "\n")
    if history:
        last = history[-1]
        io.write_json(Path(out_dir) / "metrics.json", {key: last[key] for key in ("epoch", *PLOTTED) if key in last})
