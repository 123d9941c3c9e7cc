"""``cast tables``: result tables in Markdown, CSV and LaTeX, and the report figures.

Every evaluation result of the requested methods and seeds becomes one row
per method and seed, and so does the randomly initialised reference backbone
(method ``random``). Each method also gets a mean ± standard deviation row
over its seeds. Numbers reported elsewhere (``--paper_results``: the CAST
paper's, with their sources) get a column beside ours wherever they measure
the same protocol and metric, and a second table lists all of them.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cast import io
from cast.errors import ConfigError
from cast.options import add_option
from cast.report import collect
from cast.report.collect import REFERENCE_METHOD, EvalResult

log = logging.getLogger(__name__)

# Protocols in the order the tables show them; others follow alphabetically.
PROTOCOL_ORDER = ("linear", "voc07", "knn")
MEAN_LABEL = "mean"


def configure(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs and outputs")
    add_option(inputs, "eval_metrics", type=Path, nargs="+", required=True, help="evaluation metrics.json files, or folders searched for them")
    add_option(inputs, "pretrain_dirs", type=Path, nargs="+", required=True, help="pretraining output folders, or folders searched for final.pt")
    add_option(inputs, "paper_results", type=Path, required=True, help="CSV of the paper's reported numbers (workflow/paper_results.csv)")
    add_option(inputs, "images", type=Path, required=True, help="image folder that the paths in --pairs are relative to")
    add_option(inputs, "masks", type=Path, required=True, help="mask folder that the mask paths in --pairs are relative to")
    add_option(inputs, "pairs", type=Path, required=True, help="pairs.csv of 'cast check-masks'")
    add_option(inputs, "split", default="val", help="split of --pairs whose images the Grad-CAM figure shows (default: val)")
    add_option(inputs, "out_dir", type=Path, required=True, help="folder for results.{md,csv,tex} and figures/")

    selection = parser.add_argument_group("selection and format")
    add_option(selection, "methods", nargs="+", required=True, help="pretraining methods to report, in this order")
    add_option(selection, "seeds", type=int, nargs="+", required=True, help="seeds to report")
    add_option(selection, "metrics", nargs="+", default=["top1", "top5", "map"], help="metrics.json fields shown, in this order (default: top1 top5 map)")
    add_option(selection, "decimals", type=int, default=1, help="decimal places of the numbers (default: 1)")
    add_option(selection, "curves", nargs="+", default=["contrastive_loss", "attention_loss", "accuracy", "lr"], help="per-epoch pretraining metrics in the training-curve figure")
    add_option(selection, "gradcam_images", type=int, default=4, help="validation images in the Grad-CAM figure (default: 4)")
    add_option(selection, "device", default="cpu", help="device for the Grad-CAM figure: auto, cpu, cuda or cuda:N (default: cpu)")


@dataclass(frozen=True)
class Column:
    """One number column of the wide table: a protocol and one of its metrics."""

    protocol: str
    metric: str

    @property
    def label(self) -> str:
        return f"{self.protocol} {self.metric}"


def run(args: argparse.Namespace) -> int:
    if args.decimals < 0:
        raise ConfigError(f"decimals must be 0 or more, not {args.decimals}")
    if args.gradcam_images < 1:
        raise ConfigError(f"gradcam_images must be at least 1, not {args.gradcam_images}")

    results = collect.collect_eval_results(args.eval_metrics, args.methods, args.seeds)
    paper = collect.read_paper_results(args.paper_results)
    runs = collect.collect_pretrain_runs(args.pretrain_dirs, args.methods, args.seeds)
    methods = [*args.methods, REFERENCE_METHOD]

    long_table = build_long_table(results, methods, args.metrics, paper)
    columns = table_columns(long_table)
    wide = build_wide_table(long_table, columns, methods, args.decimals)

    out_dir = Path(args.out_dir)
    io.write_csv(out_dir / "results.csv", long_table)
    io.write_text(out_dir / "results.md", render_markdown(wide, paper, args.seeds))
    io.write_text(out_dir / "results.tex", render_latex(wide))
    log.info("wrote %s, %s and %s", out_dir / "results.md", out_dir / "results.csv", out_dir / "results.tex")

    from cast.report import figures

    figures.plot_training_curves(runs, args.methods, args.curves, out_dir / "figures" / "training_curves.png")
    figures.plot_gradcam(
        runs,
        args.methods,
        pairs=args.pairs,
        images=args.images,
        masks=args.masks,
        split=args.split,
        count=args.gradcam_images,
        device=args.device,
        path=out_dir / "figures" / "gradcam.png",
    )
    log.info("wrote the figures in %s", out_dir / "figures")
    return 0


def protocol_rank(protocol: str) -> tuple[int, str]:
    if protocol in PROTOCOL_ORDER:
        return PROTOCOL_ORDER.index(protocol), protocol
    return len(PROTOCOL_ORDER), protocol


def build_long_table(results: list[EvalResult], methods: list[str], metrics: list[str], paper: pd.DataFrame) -> pd.DataFrame:
    """Return one row per method, seed, protocol and metric, plus a ``mean`` row per method, protocol and metric.

    Columns: method, seed (a number, or ``mean``), protocol, metric, value,
    std (sample standard deviation over seeds, empty for fewer than two),
    runs, paper_value and paper_source (on ``mean`` rows with a reported number).
    """
    rows = []
    for result in results:
        for metric in metrics:
            if metric in result.values:
                rows.append({"method": result.method, "seed": result.seed, "protocol": result.protocol, "metric": metric, "value": result.values[metric]})
    if not rows:
        raise ConfigError(
            f"none of the metrics {metrics} appears in the evaluation results; "
            "set tables.metrics to fields of the metrics.json files (for example top1, top5, map)"
        )
    runs = pd.DataFrame(rows)

    summary_rows = []
    for (method, protocol, metric), group in runs.groupby(["method", "protocol", "metric"], sort=False):
        values = group["value"].to_numpy(dtype=float)
        std = float(pd.Series(values).std(ddof=1)) if len(values) > 1 else math.nan
        paper_value, paper_source = lookup_paper(paper, method, protocol, metric)
        summary_rows.append(
            {
                "method": method,
                "seed": MEAN_LABEL,
                "protocol": protocol,
                "metric": metric,
                "value": float(values.mean()),
                "std": std,
                "runs": len(values),
                "paper_value": paper_value,
                "paper_source": paper_source,
            }
        )
    runs["std"] = math.nan
    runs["runs"] = 1
    runs["paper_value"] = math.nan
    runs["paper_source"] = ""
    table = pd.concat([runs, pd.DataFrame(summary_rows)], ignore_index=True)

    method_order = {method: index for index, method in enumerate(methods)}
    metric_order = {metric: index for index, metric in enumerate(metrics)}
    table["_method"] = table["method"].map(method_order)
    table["_protocol"] = table["protocol"].map(protocol_rank)
    table["_metric"] = table["metric"].map(metric_order)
    table["_seed"] = table["seed"].map(lambda seed: math.inf if seed == MEAN_LABEL else seed)
    table = table.sort_values(["_protocol", "_metric", "_method", "_seed"]).drop(columns=["_method", "_protocol", "_metric", "_seed"])
    return table.reset_index(drop=True)


def lookup_paper(paper: pd.DataFrame, method: str, protocol: str, metric: str) -> tuple[float, str]:
    """Return the reported value and source for a method, protocol and metric, or (nan, "") when there is none."""
    match = paper[(paper["method"] == method) & (paper["protocol"] == protocol) & (paper["metric"] == metric)]
    if match.empty:
        return math.nan, ""
    if len(match) > 1:
        raise ConfigError(f"the paper results file lists {len(match)} values for method {method}, protocol {protocol}, metric {metric}; keep one")
    row = match.iloc[0]
    return float(row["value"]), str(row["source"])


def table_columns(long_table: pd.DataFrame) -> list[Column]:
    """Return the (protocol, metric) pairs of the table, in the long table's order."""
    pairs = long_table[["protocol", "metric"]].drop_duplicates()
    return [Column(protocol, metric) for protocol, metric in pairs.itertuples(index=False)]


def format_number(value: float, decimals: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def format_mean(value: float, std: float, decimals: int) -> str:
    if math.isnan(value):
        return ""
    if math.isnan(std):
        return format_number(value, decimals)
    return f"{value:.{decimals}f} ± {std:.{decimals}f}"


def build_wide_table(long_table: pd.DataFrame, columns: list[Column], methods: list[str], decimals: int) -> pd.DataFrame:
    """Return the table as shown: a row per method and seed and a mean row per method, formatted numbers as text.

    A ``paper`` column follows every column that has a reported number for some method.
    """
    with_paper = {
        column
        for column in columns
        if long_table[(long_table["protocol"] == column.protocol) & (long_table["metric"] == column.metric)]["paper_value"].notna().any()
    }
    header = ["method", "seed"]
    for column in columns:
        header.append(column.label)
        if column in with_paper:
            header.append(f"{column.label} (paper)")

    rows = []
    for method in methods:
        method_rows = long_table[long_table["method"] == method]
        if method_rows.empty:
            continue
        seeds = sorted(seed for seed in method_rows["seed"].unique() if seed != MEAN_LABEL)
        for seed in [*seeds, MEAN_LABEL]:
            selected = method_rows[method_rows["seed"] == seed]
            runs = int(selected["runs"].max()) if not selected.empty else 0
            seeds_text = "1 seed" if runs == 1 else f"{runs} seeds"
            row = {"method": method, "seed": f"mean ± std ({seeds_text})" if seed == MEAN_LABEL else str(seed)}
            for column in columns:
                cell = selected[(selected["protocol"] == column.protocol) & (selected["metric"] == column.metric)]
                if cell.empty:
                    row[column.label] = ""
                elif seed == MEAN_LABEL:
                    row[column.label] = format_mean(float(cell["value"].iloc[0]), float(cell["std"].iloc[0]), decimals)
                else:
                    row[column.label] = format_number(float(cell["value"].iloc[0]), decimals)
                if column in with_paper:
                    paper_value = float(cell["paper_value"].iloc[0]) if not cell.empty else math.nan
                    row[f"{column.label} (paper)"] = format_number(paper_value, decimals) if seed == MEAN_LABEL else ""
            rows.append(row)
    return pd.DataFrame(rows, columns=header)


def format_reported(value: float, std: float) -> str:
    """Format a reported number in its shortest form (``%g``), without padding zeros."""
    return f"{value:g}" if math.isnan(std) else f"{value:g} ± {std:g}"


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


def render_markdown(wide: pd.DataFrame, paper: pd.DataFrame, seeds: list[int]) -> str:
    reported = paper.copy()
    reported["value"] = [format_reported(value, std) for value, std in zip(reported["value"], reported["std"])]
    reported = reported[["evaluation", "method", "value", "pretraining", "source"]]
    seed_list = ", ".join(str(seed) for seed in seeds)
    seed_word = "seed" if len(seeds) == 1 else "seeds"
    return (
        "# Results\n\n"
        f"Evaluation of the frozen backbones, in percent, for {seed_word} {seed_list}. "
        f"`{REFERENCE_METHOD}` is a randomly initialised backbone of the same architecture. "
        "Mean rows give the sample standard deviation over seeds. "
        "A `(paper)` column holds the number reported for the same protocol and metric, "
        "obtained with the paper's data and setting, listed with its source below.\n\n"
        + markdown_table(wide)
        + "\n## Reported numbers\n\n"
        + markdown_table(reported)
    )


def escape_latex(text: str) -> str:
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "$": r"\$"}
    escaped = "".join(replacements.get(character, character) for character in text)
    return escaped.replace("±", r"$\pm$")


def render_latex(wide: pd.DataFrame) -> str:
    """Return the wide table as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    alignment = "ll" + "r" * (len(wide.columns) - 2)
    lines = [
        "% Generated by 'cast tables'; needs \\usepackage{booktabs}.",
        f"\\begin{{tabular}}{{{alignment}}}",
        "\\toprule",
        " & ".join(escape_latex(column) for column in wide.columns) + " \\\\",
        "\\midrule",
    ]
    previous_method = None
    for row in wide.itertuples(index=False):
        if previous_method is not None and row[0] != previous_method:
            lines.append("\\midrule")
        lines.append(" & ".join(escape_latex(str(cell)) for cell in row) + " \\\\")
        previous_method = row[0]
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)
