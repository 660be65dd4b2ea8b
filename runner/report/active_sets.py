"""ALSH-APPROX's active sets in the report (pure pandas): how the network was trained and
evaluated, how input-dependent its active sets are, and how many units it ever uses, by depth.

Beside Fig. 15 (predicted-label shares) and the Theorem 2 probe, these tell apart the paper's
explanations of ALSH-APPROX's failure with depth: a network that did not learn, or one that
learnt through its tables and is evaluated densely (exact against through-the-tables
accuracy); active sets that no longer depend on the input (their overlap across the probe
batch against random sets of the same size); a few units doing all the work (the share of
units ever active in the last epoch). All at each cell's final epoch; means over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from runner.report.tables import GridTable, Stat
from runner.results.learning import ALPHA, CHANCE, binomial_upper_tail, flag_text

ALSH = "alsh_approx"
OVERLAP = "stat.active_overlap.layer"
EVER = "stat.ever_active.layer"
SHARE = "stat.active_share.layer"
UNITS = "stat.active_units.layer"
PROBE = "stat.probe_rel_error.layer"
RANDOM_OVERLAP = "stat.active_overlap_random"

_CELL_COLUMNS = ["cell_key", "config", "label", "dataset", "arch", "depth", "width", "seed"]


def _layers(row: pd.Series, prefix: str) -> list[float]:
    values = []
    for layer in range(1, int(row["depth"]) + 1):
        value = row.get(f"{prefix}{layer}")
        values.append(math.nan if value is None or pd.isna(value) else float(value))
    return values


def _last(values: list[float]) -> float:
    return values[-1] if values else math.nan


def _nan_reduce(values: list[float], reduce: Callable[[np.ndarray], float]) -> float:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    return float(reduce(finite)) if len(finite) else math.nan


# One row of the by-depth table: (heading, per-cell value from the final epoch's stats row).
Measure = tuple[str, Callable[[pd.Series], float]]

EXACT_ACCURACY = "test accuracy, exact network (%)"
TABLES_ACCURACY = "test accuracy through the tables (%)"

MEASURES: tuple[Measure, ...] = (
    (EXACT_ACCURACY, lambda r: 100.0 * float(r["test_accuracy"])),
    (
        TABLES_ACCURACY,
        lambda r: (
            100.0 * float(r["approx_test_accuracy"])
            if not pd.isna(r.get("approx_test_accuracy"))
            else math.nan
        ),
    ),
    (
        "active units per example (% of width, mean over layers)",
        lambda r: 100.0 * _nan_reduce(_layers(r, SHARE), np.mean),
    ),
    (
        "units computed per step (% of width, mean over layers)",
        lambda r: 100.0 * _nan_reduce(_layers(r, UNITS), np.mean) / float(r["width"]),
    ),
    ("active-set overlap, last hidden layer", lambda r: _last(_layers(r, OVERLAP))),
    (
        "active-set overlap, largest of any layer",
        lambda r: _nan_reduce(_layers(r, OVERLAP), np.max),
    ),
    (
        "units ever active in the last epoch (%), last hidden layer",
        lambda r: 100.0 * _last(_layers(r, EVER)),
    ),
    (
        "units ever active in the last epoch (%), fewest of any layer",
        lambda r: 100.0 * _nan_reduce(_layers(r, EVER), np.min),
    ),
    ("probe error, last hidden layer (Theorem 2)", lambda r: _last(_layers(r, PROBE))),
)


def final_stats(cells: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """ALSH-APPROX cells with their final epoch's instrumentation (`stat.*` columns)."""
    if cells.empty or epochs.empty or "method" not in cells.columns:
        return pd.DataFrame()
    mine = cells[cells["method"] == ALSH]
    if mine.empty:
        return pd.DataFrame()
    final = epochs.sort_values("epoch").groupby("cell_key").tail(1)
    stats = [c for c in final.columns if c.startswith("stat.")]
    measured = [c for c in stats if c.startswith((OVERLAP, EVER, SHARE))]
    if not measured and "approx_test_accuracy" not in mine.columns:
        return pd.DataFrame()  # rows from before these were measured: nothing to show
    extra = [
        c
        for c in (
            "test_accuracy",
            "approx_test_accuracy",
            "learning_flag",
            "test_size",
            "chance_accuracy",
        )
        if c in mine.columns
    ]
    return mine[[*_CELL_COLUMNS, *extra]].merge(
        final[["cell_key", *stats]], on="cell_key", how="inner"
    )


def _accuracy_flags(heading: str, cells: pd.DataFrame) -> list[str]:
    """The learning flags of these cells for an accuracy row (runner/results/learning.py): the
    recorded ones for the exact network; for the network through its tables, the same
    binomial test against the cells' chance level, applied to that accuracy."""
    if heading == EXACT_ACCURACY:
        return [f for f in cells.get("learning_flag", []) if isinstance(f, str) and f]
    if heading != TABLES_ACCURACY:
        return []
    flags = []
    for _, cell in cells.iterrows():
        accuracy, n = cell.get("approx_test_accuracy"), cell.get("test_size")
        chance = cell.get("chance_accuracy")
        if any(v is None or pd.isna(v) for v in (accuracy, n, chance)):
            continue
        correct = round(float(accuracy) * int(n))
        if binomial_upper_tail(correct, int(n), float(chance)) > ALPHA:
            flags.append(CHANCE)
    return flags


def _stat_of(values: pd.Series) -> Stat:
    finite = values[np.isfinite(values.astype(float))].astype(float)
    if finite.empty:
        return Stat(math.nan)
    std = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
    return Stat(float(finite.mean()), std, len(finite))


def active_set_tables(final: pd.DataFrame) -> list[GridTable]:
    """Per dataset, architecture and ALSH-APPROX label: the measures by depth, then the
    overlap and the share ever active of every hidden layer by depth."""
    tables: list[GridTable] = []
    if final.empty:
        return tables
    for (dataset, arch, label), group in final.groupby(["dataset", "arch", "label"], sort=True):
        where = dataset if arch == "mlp" else f"{dataset} ({arch})"
        depths = sorted(int(d) for d in group["depth"].unique())
        columns = [str(d) for d in depths]
        values: dict[tuple[str, str], Stat] = {}
        for heading, measure in MEASURES:
            for depth, at_depth in group.groupby("depth"):
                stat = _stat_of(at_depth.apply(measure, axis=1))
                flags = _accuracy_flags(heading, at_depth)
                if flags:
                    stat = replace(stat, flag=flag_text(flags[0], len(flags), len(at_depth)))
                values[(heading, str(depth))] = stat
        random = group.get(RANDOM_OVERLAP, pd.Series(dtype=float)).dropna()
        reference = f"{float(random.mean()):.3f}" if len(random) else "unknown"
        tables.append(
            GridTable(
                title=f"{label}: active sets and accuracy by depth, {where}",
                row_header="measure (final epoch)",
                rows=[heading for heading, _ in MEASURES],
                columns=columns,
                values=values,
                fmt=".3g",
                note="columns: hidden layers; overlap: mean pairwise Jaccard of the active sets "
                f"of the probe batch's examples (random sets of the same size: {reference}; 1: "
                "every input picks the same units); exact network: what the paper reports",
            )
        )
        for prefix, what in ((OVERLAP, "active-set overlap"), (EVER, "units ever active (%)")):
            per_layer: dict[tuple[str, str], Stat] = {}
            scale = 100.0 if prefix == EVER else 1.0
            for depth, at_depth in group.groupby("depth"):
                for layer in range(1, int(depth) + 1):
                    column = f"{prefix}{layer}"
                    if column in at_depth.columns:
                        per_layer[(f"layer {layer}", str(depth))] = _stat_of(
                            at_depth[column].astype(float) * scale
                        )
            tables.append(
                GridTable(
                    title=f"{label}: {what} per hidden layer, {where}",
                    row_header="hidden layer",
                    rows=[f"layer {layer}" for layer in range(1, max(depths) + 1)],
                    columns=columns,
                    values=per_layer,
                    fmt=".3g",
                    note="columns: the network's depth; final epoch"
                    + (f"; random sets: {reference}" if prefix == OVERLAP else ""),
                )
            )
    return tables


def overlap_by_layer(final: pd.DataFrame) -> pd.DataFrame:
    """Long form for the figure: label, dataset, arch, depth, layer, overlap and ever-active
    share (means over seeds), and the random-set overlap."""
    rows = []
    if final.empty:
        return pd.DataFrame(
            columns=["dataset", "arch", "label", "depth", "layer", "overlap", "ever", "random"]
        )
    for (dataset, arch, label, depth), group in final.groupby(
        ["dataset", "arch", "label", "depth"], sort=True
    ):
        random = group.get(RANDOM_OVERLAP, pd.Series(dtype=float)).astype(float).mean()
        for layer in range(1, int(depth) + 1):
            overlap = group.get(f"{OVERLAP}{layer}", pd.Series(dtype=float)).astype(float)
            ever = group.get(f"{EVER}{layer}", pd.Series(dtype=float)).astype(float)
            rows.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "label": label,
                    "depth": int(depth),
                    "layer": layer,
                    "overlap": float(overlap.mean()) if len(overlap) else math.nan,
                    "ever": float(ever.mean()) if len(ever) else math.nan,
                    "random": float(random),
                }
            )
    return pd.DataFrame(rows)


# --- the share of the work a method actually does (time tables, bench) -------------------------


def work_shares(stats: dict[str, float], width: int, depth: int) -> tuple[float, float]:
    """From one epoch's instrumentation, mean over hidden layers: the share of each layer an
    example actually uses (ALSH's own active units; dropout's and standout's kept units;
    MC-APPROX's kept pairs of the sampled products over a hidden layer's units), and the
    share the method computes per step (ALSH and batch-mask dropout gather the batch's union;
    the others compute every unit). (1, 1) for STANDARD, which reports nothing."""

    def mean_of(prefix: str, layers: range, scale: float = 1.0) -> float:
        values = [stats[f"{prefix}{i}"] / scale for i in layers if f"{prefix}{i}" in stats]
        return sum(values) / len(values) if values else math.nan

    hidden = range(1, depth + 1)
    computed = mean_of("active_units.layer", hidden, width)
    for prefix, layers, scale in (
        ("active_share.layer", hidden, 1.0),  # ALSH: an example's own units
        ("keep_rate.layer", hidden, 1.0),  # dropout, standout
        # MC-APPROX: the input gradient of layer i is a product over its output units, which
        # are hidden units for i = 2..depth+1 (the last one is the output layer's input
        # gradient, over the classes: not a hidden layer); forward mode samples layer i's
        # input features, hidden units for i = 2..depth+1.
        ("sampled_pairs.grad_input.layer", range(2, depth + 1), width),
        ("sampled_pairs.forward.layer", range(2, depth + 2), width),
    ):
        share = mean_of(prefix, layers, scale)
        if math.isfinite(share):
            return share, computed if math.isfinite(computed) else 1.0
    return 1.0, computed if math.isfinite(computed) else 1.0
