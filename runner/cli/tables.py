"""Tables the verbs print (rich), from what the API returns: the post-submit overview, the
report's summary and grid tables, and the comparison with the paper."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from runner.report.configs import group_name, summary_flag
from runner.report.tables import GridTable, format_stat


def mean_std(mean: float, std: float, fmt: str) -> str:
    if mean != mean:  # NaN
        return "-"
    return format(mean, fmt) + ("" if std != std else " ± " + format(std, fmt))


def summary_table(summary: pd.DataFrame, n_cells: int) -> Table:
    table = Table(title=f"{n_cells} finished cell(s), mean ± std over seeds")
    keys = ["dataset", "arch", "label", "depth"]
    for column in [*keys, "seeds", "test acc", "val acc", "s/epoch", "threads"]:
        table.add_column(column, justify="left" if column in ("dataset", "label") else "right")
    for _, row in summary.iterrows():
        table.add_row(
            *(str(row[k]) for k in keys),
            str(row["seeds"]),
            mean_std(row["test_accuracy"], row["test_accuracy_std"], ".4f")
            + (f" [yellow]{flag}[/]" if (flag := summary_flag(row)) else ""),
            mean_std(row["val_accuracy"], row["val_accuracy_std"], ".4f"),
            mean_std(row["seconds_per_epoch"], row["seconds_per_epoch_std"], ".3g"),
            str(row["threads"]),
        )
    return table


def grid_table(grid: GridTable) -> Table:
    table = Table(title=grid.title, caption=grid.note or None)
    table.add_column(grid.row_header)
    for column in grid.columns:
        table.add_column(column, justify="right")
    for row in grid.rows:
        table.add_row(row, *(format_stat(grid.get(row, c), grid.fmt) for c in grid.columns))
    return table


_TIME_METRIC_NAMES = {
    "seconds_per_epoch": "total",
    "forward_seconds_per_epoch": "feedforward",
    "backward_seconds_per_epoch": "backprop",
}


def comparison_table(comparison: pd.DataFrame) -> Table:
    table = Table(title="Published (paper) vs ours: difference = ours - published")
    for column in (
        "source",
        "dataset",
        "depth",
        "paper",
        "our config",
        "published",
        "ours",
        "diff",
    ):
        table.add_column(column, justify="right" if column in ("depth", "diff") else "left")
    table.add_column("ours/paper", justify="right")
    table.add_column("note", overflow="fold")
    for _, r in comparison.iterrows():
        accuracy = r["metric"] == "test_accuracy"
        fmt = ".2f" if accuracy else ".4g"
        unit = "%" if accuracy else " s/ep"
        what = "" if accuracy else " " + _TIME_METRIC_NAMES.get(r["metric"], r["metric"])
        table.add_row(
            r["source"],
            group_name(r["dataset"], r["arch"]),
            str(r["depth"]),
            r["paper_label"] + what,
            r["label"],
            format(r["published"], fmt) + unit,
            mean_std(r["ours"], r["ours_std"], fmt) + unit,
            format(r["difference"], "+" + fmt),
            "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.3g}",
            r["note"],
        )
    return table


def overview_table(overview: pd.DataFrame) -> Table:
    """Method and batch setting (rows) by depth (columns): mean test accuracy and seconds per
    epoch over seeds; a configuration that did not learn is marked."""
    depths = sorted({int(d) for d in overview["depth"]})
    table = Table(title="What the sweep produced: test accuracy · seconds per epoch (seed mean)")
    table.add_column("configuration")
    for depth in depths:
        table.add_column(f"depth {depth}", justify="right")
    for (dataset, arch, label), group in overview.groupby(["dataset", "arch", "label"], sort=False):
        by_depth = {int(r["depth"]): r for _, r in group.iterrows()}
        cells = []
        for depth in depths:
            row = by_depth.get(depth)
            if row is None:
                cells.append("")
                continue
            flag = summary_flag(row)
            accuracy, seconds = row["test_accuracy"], row["seconds_per_epoch"]
            text = (
                "-"  # every seed stopped early: nothing counts in the means (the flag says why)
                if accuracy != accuracy
                else f"{accuracy:.4f} · " + ("-" if seconds != seconds else f"{seconds:.3g} s")
            )
            cells.append(f"{text} [yellow]{flag}[/]" if flag else text)
        table.add_row(f"{group_name(dataset, arch)} {label}", *cells)
    return table
