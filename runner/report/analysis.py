"""Turning a results folder into the paper's tables, as data (pure pandas / numpy / pyarrow).

No torch, no Ray, no matplotlib here: `load_sweep` (runner/report/folder.py) reads a results
folder (finished cells, failures, the job file and what it expands to), `analyse` computes
every table the report shows from the configurations of runner/report/configs.py and the
probe of runner/report/theorem2.py, and `build_report` (runner/report/build.py) writes the
Parquet files, the figures (runner/report/figures.py) and the page (runner/report/page.py).
The CLI prints the same tables with rich.

Written files (the schema is documented in docs/results.md):
  cells.parquet   one row per finished cell: every column of the result row except `history`
                  (so with `confusion_matrix`), plus `label`
  epochs.parquet  one row per cell and epoch: `cell_key`, the history's fields, and one
                  `stat.<name>` column per instrumentation value (method stats and the probe)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from runner.report import active_sets
from runner.report.configs import (
    PHASES,
    _is_missing,
    _ordered_labels,
    _show,
    _stat,
    annotate,
    group_name,
    learning_flags,
    summarise,
    work_share_columns,
)
from runner.report.folder import SweepData, epochs_table
from runner.report.tables import GridTable, Stat
from runner.report.theorem2 import probe_fits, probe_points, probe_tables
from runner.results.code_versions import CodeVersion, table_code_versions

# The paper's Table 3 is at this depth, with CIFAR-10's row from the CNN.
TABLE3_DEPTH = 3


def accuracy_tables(summary: pd.DataFrame) -> list[GridTable]:
    """Table 3 style: test accuracy (%) per dataset x method and batch setting, one table per
    MLP depth. A CNN's classifier depth is not an MLP's: as in the paper, CNN rows join the
    3-hidden-layer table (when there is one), else form tables of their own."""
    tables: list[GridTable] = []
    if summary.empty:
        return tables
    mlp = summary[summary["arch"] == "mlp"]
    cnn = summary[summary["arch"] != "mlp"]
    groups: list[tuple[str, pd.DataFrame, str]] = []
    note = "mean ± sample std over seeds; S = batch 1, M = batch 20"
    for depth, at_depth in mlp.groupby("depth", sort=True):
        title = f"Test accuracy (%), {depth} hidden layer(s) (paper Table 3 style)"
        if depth == TABLE3_DEPTH and not cnn.empty:
            heads = ", ".join(f"{d}" for d in sorted(cnn["depth"].unique()))
            groups.append(
                (
                    title,
                    pd.concat([at_depth, cnn]),
                    note + f"; CNN rows: ResNet-18 + a classifier of {heads} hidden FC layer(s)",
                )
            )
            cnn = cnn.iloc[0:0]
        else:
            groups.append((title, at_depth, note))
    for depth, at_depth in cnn.groupby("depth", sort=True):
        title = (
            f"Test accuracy (%), CNN: ResNet-18 + {depth} hidden FC layer(s) (paper Table 3 style)"
        )
        groups.append((title, at_depth, note))
    for title, frame, table_note in groups:
        rows = list(
            dict.fromkeys(
                group_name(d, a) for d, a in zip(frame["dataset"], frame["arch"], strict=True)
            )
        )
        values = {
            (group_name(r["dataset"], r["arch"]), r["label"]): _stat(r, "test_accuracy", 100.0)
            for _, r in frame.iterrows()
        }
        tables.append(
            GridTable(
                title=title,
                row_header="dataset",
                rows=sorted(rows),
                columns=_ordered_labels(frame),
                values=values,
                fmt=".2f",
                note=table_note,
            )
        )
    return tables


TIMING_COLUMNS = (
    ("total", "seconds_per_epoch"),
    *((phase, f"{phase}_seconds_per_epoch") for phase in PHASES),
    ("eval (not training)", "eval_seconds_per_epoch"),
)
# Beside the times: how much of the work the method really did (shares, not seconds).
SHARE_COLUMNS = (("active share", "active_share"), ("computed share", "computed_share"))


def _seconds_format(seconds: pd.Series) -> str:
    """Fixed decimals giving the largest time three significant digits (at least one)."""
    largest = float(seconds.abs().max())
    if not math.isfinite(largest) or largest <= 0:
        return ".3f"
    return f".{min(max(1, 2 - math.floor(math.log10(largest))), 6)}f"


def timing_tables(summary: pd.DataFrame) -> list[GridTable]:
    """Tables 4 / 5 style: seconds per training epoch and its split into data, forward,
    backward, optimizer step and method upkeep, per method, one table per dataset, depth and
    batch size. `total / STANDARD` is the ratio of means to STANDARD in the same setting."""
    tables: list[GridTable] = []
    if summary.empty:
        return tables
    keys = ["dataset", "arch", "depth", "batch_size"]
    for (dataset, arch, depth, batch), group in summary.groupby(keys, sort=True):
        labels = _ordered_labels(group)
        values: dict[tuple[str, str], Stat] = {}
        standard = group[group["method"] == "standard"]
        baseline = float(standard["seconds_per_epoch"].iloc[0]) if len(standard) == 1 else None
        fmt = _seconds_format(group["seconds_per_epoch"])
        for _, r in group.iterrows():
            for heading, metric in TIMING_COLUMNS:
                values[(r["label"], heading)] = _stat(r, metric)
            if baseline:
                values[(r["label"], "total / STANDARD")] = Stat(r["seconds_per_epoch"] / baseline)
            for heading, metric in SHARE_COLUMNS:
                if metric in r.index and not _is_missing(r[metric]):
                    # Shares print as percentages in the table's own decimals.
                    values[(r["label"], heading)] = Stat(100.0 * float(r[metric]))
        columns = [h for h, _ in TIMING_COLUMNS] + (["total / STANDARD"] if baseline else [])
        columns += [h for h, _ in SHARE_COLUMNS]
        tables.append(
            GridTable(
                title=f"Seconds per epoch, {group_name(dataset, arch)}, {depth} hidden "
                f"layer(s), batch {batch} (paper Tables 4 / 5 style)",
                row_header="method",
                rows=labels,
                columns=columns,
                values=values,
                fmt=fmt,
                note="training time per epoch = data + forward + backward + step + upkeep; "
                "evaluation is timed apart; active share (%): of each hidden layer's units an "
                "example uses (ALSH-APPROX: its own active set; dropout, standout: kept units; "
                "MC-APPROX: pairs kept in its sampled products over hidden units), computed "
                "share (%): units a step computes (ALSH-APPROX and dropout: the batch's "
                "union), mean over hidden layers and epochs",
            )
        )
    return tables


def depth_tables(summary: pd.DataFrame) -> list[GridTable]:
    """Figs. 9 / 10 in numbers: test accuracy and total training time per depth, per method,
    for every dataset with at least two depths."""
    tables: list[GridTable] = []
    if summary.empty:
        return tables
    for (dataset, arch), group in summary.groupby(["dataset", "arch"], sort=True):
        depths = sorted(group["depth"].unique())
        if len(depths) < 2:
            continue
        labels = _ordered_labels(group)
        for metric, title, scale, fmt in (
            ("test_accuracy", "Test accuracy (%) by depth", 100.0, ".2f"),
            ("train_seconds", "Total training time (s) by depth", 1.0, ".4g"),
        ):
            values = {
                (r["label"], str(r["depth"])): _stat(r, metric, scale) for _, r in group.iterrows()
            }
            tables.append(
                GridTable(
                    title=f"{title}, {group_name(dataset, arch)} (paper Fig. "
                    f"{9 if metric == 'test_accuracy' else 10})",
                    row_header="method",
                    rows=labels,
                    columns=[str(d) for d in depths],
                    values=values,
                    fmt=fmt,
                )
            )
    return tables


# --- per-epoch curves ---------------------------------------------------------------------------


def epoch_curves(cells: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds, per configuration and epoch, of the validation accuracy and
    the cumulative training time (Figs. 5-8, 11-14)."""
    columns = ["config", "label", "dataset", "arch", "method", "depth", "batch_size"]
    if cells.empty or epochs.empty:
        return pd.DataFrame(columns=[*columns, "epoch"])
    joined = epochs.merge(cells[["cell_key", *columns]], on="cell_key", how="inner")
    curves = (
        joined.groupby(["config", "epoch"], sort=True)
        .agg(
            val_accuracy=("val_accuracy", "mean"),
            val_accuracy_std=("val_accuracy", "std"),
            cumulative_train_seconds=("cumulative_train_seconds", "mean"),
            cumulative_train_seconds_std=("cumulative_train_seconds", "std"),
            seeds=("cell_key", "nunique"),
        )
        .reset_index()
    )
    info = cells[columns].drop_duplicates("config")
    return curves.merge(info, on="config", how="left")


# --- confusion matrices and predicted labels ----------------------------------------------------


def confusion_by_config(
    cells: pd.DataFrame, confusion: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Test-set confusion matrix [true][predicted] per configuration, summed over seeds."""
    sums: dict[str, np.ndarray] = {}
    for key, config in zip(cells["cell_key"], cells["config"], strict=True):
        matrix = confusion.get(key)
        if matrix is None or matrix.size == 0:
            continue
        if config in sums and sums[config].shape == matrix.shape:
            sums[config] = sums[config] + matrix
        elif config not in sums:
            sums[config] = matrix.copy()
    return sums


def prediction_shares(matrix: np.ndarray) -> np.ndarray:
    """Share of test examples predicted as each label (paper Fig. 15): column sums / total."""
    total = matrix.sum()
    return matrix.sum(axis=0) / total if total else np.zeros(matrix.shape[1])


# --- provenance ------------------------------------------------------------------------------


def _counts(series: pd.Series) -> list[tuple[str, int]]:
    counter = Counter(_show(v) for v in series)
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))


def provenance(cells: pd.DataFrame) -> dict[str, list[tuple[str, int]]]:
    """Where and with what the finished cells ran: each value with its number of cells."""
    if cells.empty:
        return {}
    out: dict[str, list[tuple[str, int]]] = {}
    if "method_version" in cells.columns:
        out["method versions"] = _counts(
            cells["method"] + " v" + cells["method_version"].astype(str)
        )
    if "dataset_version" in cells.columns:
        out["dataset versions"] = _counts(
            cells["dataset"] + " v" + cells["dataset_version"].astype(str)
        )
    for column, title in (
        ("trainer_version", "trainer version"),
        ("torch_version", "torch"),
        ("python_version", "python"),
        ("cpusweep_version", "cpusweep"),
        *((f"{p}_version", p) for p in ("numpy", "ray", "torchvision", "pyarrow", "pandas")),
        ("platform", "platform"),
        ("cpu_model", "CPU model"),
        ("requested_torch_threads", "torch threads requested"),
        ("torch_threads", "torch threads observed"),
        ("torch_interop_threads", "torch inter-op threads observed"),
        ("os_threads", "OS threads observed"),
        ("node", "nodes"),
    ):
        if column in cells.columns:
            out[title] = _counts(cells[column])
    if "started_at" in cells.columns and "finished_at" in cells.columns:
        out["ran between"] = [
            (f"{cells['started_at'].min()} and {cells['finished_at'].max()}", len(cells))
        ]
    return out


# --- everything ------------------------------------------------------------------------------


@dataclass
class Analysis:
    cells: pd.DataFrame  # annotated, one row per finished cell (no history, no matrices)
    epochs: pd.DataFrame
    summary: pd.DataFrame
    confusion: dict[str, np.ndarray]  # per configuration, summed over seeds
    curves: pd.DataFrame
    probe: pd.DataFrame
    fits: pd.DataFrame
    accuracy: list[GridTable] = field(default_factory=list)
    timing: list[GridTable] = field(default_factory=list)
    depth: list[GridTable] = field(default_factory=list)
    probe_tables: list[GridTable] = field(default_factory=list)
    provenance: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # The rows' code versions (runner/results/code_versions.py): more than one, a mix.
    code_versions: list[CodeVersion] = field(default_factory=list)
    # ALSH-APPROX's active sets (runner/report/active_sets.py): tables, and per layer for the
    # figure.
    active_set_tables: list[GridTable] = field(default_factory=list)
    active_sets: pd.DataFrame = field(default_factory=pd.DataFrame)


def analyse(data: SweepData, include_stopped: bool = False) -> Analysis:
    if data.table is None:
        empty = pd.DataFrame()
        points = probe_points(empty, empty)
        return Analysis(
            empty, empty, empty, {}, epoch_curves(empty, empty), points, probe_fits(points)
        )
    flat = data.table.drop_columns(["history", "confusion_matrix"]).to_pandas()
    cells = annotate(flat)
    epochs = epochs_table(data.table).to_pandas()
    matrices = {
        key: np.asarray(m, dtype=np.int64)
        for key, m in zip(
            data.table.column("cell_key").to_pylist(),
            data.table.column("confusion_matrix").to_pylist(),
            strict=True,
        )
        if m
    }
    cells["learning_flag"] = learning_flags(cells, matrices)
    cells["active_share"], cells["computed_share"] = work_share_columns(cells, epochs)
    summary = summarise(cells, include_stopped)
    points = probe_points(cells, epochs)
    fits = probe_fits(points)
    final = active_sets.final_stats(cells, epochs)
    return Analysis(
        cells=cells,
        epochs=epochs,
        summary=summary,
        confusion=confusion_by_config(cells, matrices),
        curves=epoch_curves(cells, epochs),
        probe=points,
        fits=fits,
        accuracy=accuracy_tables(summary),
        timing=timing_tables(summary),
        depth=depth_tables(summary),
        probe_tables=probe_tables(points, fits),
        provenance=provenance(cells),
        code_versions=table_code_versions(data.table),
        active_set_tables=active_sets.active_set_tables(final),
        active_sets=active_sets.overlap_by_layer(final),
    )
