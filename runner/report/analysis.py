"""Turning a results folder into the paper's tables, as data (pure pandas / numpy / pyarrow).

No torch, no Ray, no matplotlib here: `load_sweep` reads a results folder (finished cells,
failures, the job file and what it expands to), `analyse` computes every table the report
shows, and `build_report` writes the Parquet files, the figures (runner/report/figures.py) and the
page (runner/report/page.py). The CLI prints the same tables with rich.

Written files (the schema is documented in the README, "Reports"):
  cells.parquet   one row per finished cell: every column of the result row except `history`
                  (so with `confusion_matrix`), plus `label`
  epochs.parquet  one row per cell and epoch: `cell_key`, the history's fields, and one
                  `stat.<name>` column per instrumentation value (method stats and the probe)

A configuration is a cell without its seed: cells that differ only in `seed` are averaged
(mean, and sample standard deviation when there are several seeds).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runner.errors import CpusweepError, ResultsError
from runner.job.cells import Cell
from runner.report import active_sets
from runner.report.tables import GridTable, Stat
from runner.results.learning import DIVERGED, flag_text, row_verdict
from runner.results.schema import EPOCH_FIELDS
from runner.results.store import ResultsStore, atomic_write_bytes

if TYPE_CHECKING:
    from runner.report.figures import FigureFile
    from runner.report.published import PublishedNumber

PHASES = ("data", "forward", "backward", "step", "upkeep")

# The paper's names; the order is Table 3's columns.
METHOD_NAMES = {
    "alsh_approx": "ALSH-APPROX",
    "mc_approx": "MC-APPROX",
    "dropout": "DROPOUT",
    "adaptive_dropout": "ADAPTIVE-DROPOUT",
    "standard": "STANDARD",
}
METHOD_ORDER = {name: i for i, name in enumerate(METHOD_NAMES)}

# Shared parameters that make a configuration (besides the method's own hyperparameters);
# `seed` is what is averaged over.
CONFIG_COLUMNS = (
    "dataset",
    "arch",
    "method",
    "depth",
    "width",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "epochs",
    "train_limit",
    "split_seed",
)
# Cells of different code versions or thread counts are never averaged together.
VERSION_COLUMNS = (
    "method_version",
    "trainer_version",
    "dataset_version",
    "requested_torch_threads",
)
# What may tell apart two configurations drawn in the same place of a table (same dataset,
# architecture, depth, method and batch size): it is appended to their label.
_VARIANT_COLUMNS = tuple(c for c in CONFIG_COLUMNS if c not in ("dataset", "method", "depth"))

# Per-cell quantities averaged over seeds. `<phase>_seconds_per_epoch` is derived from the
# row's totals; `train_seconds` is the whole training time (paper Fig. 10).
METRICS = (
    "test_accuracy",
    "approx_test_accuracy",  # the network as it trains (ALSH-APPROX), NaN for the others
    "val_accuracy",
    "best_val_accuracy",
    "train_seconds",
    "seconds_per_epoch",
    *(f"{phase}_seconds_per_epoch" for phase in (*PHASES, "eval")),
    # The share of the work the method really did, mean over epochs and hidden layers
    # (runner/report/active_sets.py): what an example uses, and what a step computes.
    "active_share",
    "computed_share",
)

PROBE_PREFIX = "stat.probe_rel_error.layer"


# --- names ------------------------------------------------------------------------------------


def paper_label(method: str, batch_size: int) -> str:
    """The paper's name of a method in a batch setting (footnote 10: S = 1, M = 20)."""
    name = METHOD_NAMES.get(method, method.upper())
    if batch_size == 1:
        return f"{name}_S"
    if batch_size == 20:
        return f"{name}_M"
    return f"{name} (batch {batch_size})"


def group_name(dataset: str, arch: str) -> str:
    return dataset if arch == "mlp" else f"{dataset} ({arch})"


def slug(text: str) -> str:
    """A file-name-safe form of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _show(value: Any) -> str:
    if _is_missing(value):
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- reading a results folder -------------------------------------------------------------------


@dataclass
class FailedCell:
    key: str
    label: str
    error_class: str
    message: str
    in_job: bool  # False: a cell of an earlier version of the job file


@dataclass
class SweepData:
    """Everything a results folder holds, read once."""

    root: Path
    table: pa.Table | None  # every readable finished cell, with history
    unreadable: list[Path]
    job_text: str | None
    job_problem: str | None  # why the job file could not be expanded, if it could not
    expected: list[Cell] | None  # the job's cells, when job.toml expands here
    missing: list[Cell]  # expected, neither finished nor failed
    failed: list[FailedCell]
    job_files: list[str]  # every distinct job file submitted here (jobs/<sha>.toml)

    @property
    def done_keys(self) -> set[str]:
        return set() if self.table is None else set(self.table.column("cell_key").to_pylist())


def _expected_cells(job_text: str | None, source: str) -> tuple[list[Cell] | None, str | None]:
    """The job's cells, or why they cannot be known (the report goes on without them)."""
    if job_text is None:
        return None, "no job.toml in the results folder: cells still to run are unknown"
    from runner.job.grid import expand
    from runner.job.spec import parse_spec

    try:
        return expand(parse_spec(job_text, source)).cells, None
    except CpusweepError as exc:
        return None, f"the job file does not expand with this version of the code: {exc}"


def load_sweep(results_dir: str | Path) -> SweepData:
    store = ResultsStore(results_dir)
    store.check_readable_folder()
    table, unreadable = store.read_results()
    ledger = store.scan()
    unreadable = sorted(set(unreadable) | set(ledger.corrupt))
    try:
        job_text = store.job_text()
        expected, problem = _expected_cells(job_text, str(store.root / "job.toml"))
    except ResultsError as exc:
        job_text, expected, problem = None, None, str(exc)
    done = set() if table is None else set(table.column("cell_key").to_pylist())
    expected_keys = {c.key for c in expected} if expected is not None else set()
    missing = [c for c in expected or [] if c.key not in done and c.key not in ledger.failed]
    failed = []
    for key, record in sorted(ledger.failed.items()):
        message = str(record.get("message", "")).strip().splitlines()
        failed.append(
            FailedCell(
                key=key,
                label=str(record.get("label", key)),
                error_class=str(record.get("error_class", "unknown")),
                message=f"{record.get('error_type', '')}: {message[0] if message else ''}".strip(
                    ": "
                ),
                in_job=key in expected_keys,
            )
        )
    jobs_dir = store.root / "jobs"
    job_files = sorted(p.name for p in jobs_dir.glob("*.toml")) if jobs_dir.is_dir() else []
    return SweepData(
        root=store.root,
        table=table,
        unreadable=unreadable,
        job_text=job_text,
        job_problem=problem,
        expected=expected,
        missing=missing,
        failed=failed,
        job_files=job_files,
    )


# --- the Parquet files ------------------------------------------------------------------------

_EPOCH_SCALARS = [(name, dtype) for name, dtype in EPOCH_FIELDS if name != "stats"]


def epochs_table(cells: pa.Table) -> pa.Table:
    """Long form of every cell's history: one row per (cell, epoch), fixed columns first
    (`cell_key`, then the history's fields in schema order), then `stat.<name>` columns
    sorted by name (float64, null where a cell does not report that value)."""
    keys = cells.column("cell_key").to_pylist()
    histories = cells.column("history").to_pylist()
    fixed: dict[str, list[Any]] = {"cell_key": []} | {name: [] for name, _ in _EPOCH_SCALARS}
    stats: dict[str, dict[int, float]] = {}
    n = 0
    for key, history in zip(keys, histories, strict=True):
        for entry in history or []:
            fixed["cell_key"].append(key)
            for name, _ in _EPOCH_SCALARS:
                fixed[name].append(entry.get(name))
            for stat in entry.get("stats") or []:
                stats.setdefault(f"stat.{stat['name']}", {})[n] = stat["value"]
            n += 1
    fields = [pa.field("cell_key", pa.string())] + [pa.field(n_, t) for n_, t in _EPOCH_SCALARS]
    arrays = [pa.array(fixed[f.name], type=f.type) for f in fields]
    for name in sorted(stats):
        values = stats[name]
        fields.append(pa.field(name, pa.float64()))
        arrays.append(pa.array([values.get(i) for i in range(n)], type=pa.float64()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_parquet(table: pa.Table, path: Path) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


# --- configurations -----------------------------------------------------------------------------


def _own_hyper_columns(frame: pd.DataFrame, method: str) -> list[str]:
    return sorted(c for c in frame.columns if c.startswith(method + "."))


def _hyper_columns(frame: pd.DataFrame) -> list[str]:
    """Method hyperparameter columns (`<method>.<param>`) of the methods present."""
    methods = set(frame["method"])
    return sorted(c for c in frame.columns if "." in c and c.split(".", 1)[0] in methods)


def annotate(cells: pd.DataFrame) -> pd.DataFrame:
    """Add `config` (identity of a configuration: the cell without its seed), `label` (the
    paper's name, plus whatever tells apart configurations shown in the same place) and the
    per-epoch phase times."""
    cells = cells.copy()
    if cells.empty:
        for column in ("config", "label", *METRICS):
            cells[column] = pd.Series(dtype=object)
        return cells
    present = [c for c in (*CONFIG_COLUMNS, *VERSION_COLUMNS) if c in cells.columns]
    configs = []
    for _, row in cells.iterrows():
        values = {c: row[c] for c in present}
        values |= {c: row[c] for c in _own_hyper_columns(cells, str(row["method"]))}
        configs.append(
            json.dumps({k: None if _is_missing(v) else v for k, v in values.items()}, default=str)
        )
    cells["config"] = configs
    epochs = cells["epochs_done"].where(cells["epochs_done"] > 0)
    for phase in (*PHASES, "eval"):
        cells[f"{phase}_seconds_per_epoch"] = cells[f"{phase}_seconds"] / epochs

    # Labels: the paper's name, then `name=value` for every parameter that tells apart two
    # configurations drawn in the same place (same dataset and depth) for this architecture,
    # method and batch size; applied to all of them, so a label means the same everywhere.
    # (A parameter that differs only between datasets, like dataset_version, is left out.)
    labels = pd.Series("", index=cells.index, dtype=object)
    for (_arch, method, batch), group in cells.groupby(
        ["arch", "method", "batch_size"], dropna=False, sort=False
    ):
        candidates = [
            c
            for c in (*_VARIANT_COLUMNS, *VERSION_COLUMNS, *_own_hyper_columns(cells, str(method)))
            if c in group.columns and c != "arch"
        ]
        places = group.groupby(["dataset", "depth"], dropna=False)
        varying = [c for c in candidates if (places[c].nunique(dropna=False) > 1).any()]
        base = paper_label(str(method), int(batch))
        for index, row in group.iterrows():
            extras = [_variant_text(c, row) for c in varying]
            labels[index] = " ".join([base, *extras])
    cells["label"] = labels
    return cells


def work_share_columns(
    cells: pd.DataFrame, epochs: pd.DataFrame
) -> tuple[list[float], list[float]]:
    """Each cell's active and computed shares (runner/report/active_sets.py), from its epochs'
    instrumentation averaged over the epochs."""
    stat_columns = [c for c in epochs.columns if c.startswith("stat.")]
    means = (
        epochs.groupby("cell_key")[stat_columns].mean()
        if stat_columns and not epochs.empty
        else pd.DataFrame()
    )
    active, computed = [], []
    for _, row in cells.iterrows():
        key = row["cell_key"]
        stats = {}
        if key in means.index:
            found = means.loc[key].dropna()
            stats = {name[len("stat.") :]: float(v) for name, v in found.items()}
        shares = active_sets.work_shares(stats, int(row["width"]), int(row["depth"]))
        active.append(shares[0])
        computed.append(shares[1])
    return active, computed


def learning_flags(cells: pd.DataFrame, matrices: dict[str, np.ndarray]) -> list[str]:
    """Each cell's learning flag: the one its row records, or (older rows) the one its
    confusion matrix and divergence give."""
    flags = []
    for _, row in cells.iterrows():
        recorded = row.get("learning_flag")
        if isinstance(recorded, str):
            flags.append(recorded)
            continue
        matrix = matrices.get(str(row["cell_key"]))
        confusion = matrix.tolist() if matrix is not None else []
        flags.append(row_verdict({"confusion_matrix": confusion, "diverged": row["diverged"]}).flag)
    return flags


def _variant_text(column: str, row: pd.Series) -> str:
    """How a parameter that tells configurations apart reads in their label: `name=value`,
    except MC-APPROX's budget, which reads as what it keeps ("ratio=0.1", or "k=10" when the
    ratio is 0 and k pairs are kept instead)."""
    value = row[column]
    if column == "mc_approx.sample_ratio" and not _is_missing(value):
        return f"ratio={_show(value)}" if float(value) > 0 else f"k={_show(row['mc_approx.k'])}"
    return f"{column.split('.', 1)[-1]}={_show(value)}"


def _sort_key(frame: pd.DataFrame) -> pd.DataFrame:
    order = frame["method"].map(lambda m: METHOD_ORDER.get(m, len(METHOD_ORDER)))
    return frame.assign(_order=order).sort_values(
        ["dataset", "arch", "_order", "batch_size", "label", "depth"], kind="stable"
    )


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: its parameters, `seeds` (distinct seeds), `cells`, and for
    each metric its mean (column named after the metric) and sample standard deviation over
    seeds (`<metric>_std`, NaN with one seed); `threads`: the torch thread counts observed;
    `train_size`: training examples per epoch; `cpu_models`: the CPU models, ", "-joined."""
    if cells.empty:
        return pd.DataFrame()
    if "config" not in cells.columns:
        cells = annotate(cells)
    keep = [c for c in (*CONFIG_COLUMNS, *VERSION_COLUMNS, "label") if c in cells.columns]
    keep += _hyper_columns(cells)
    rows = []
    for config, group in cells.groupby("config", sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {"config": config}
        row.update({c: first[c] for c in keep})
        row["seeds"] = int(group["seed"].nunique())
        row["cells"] = len(group)
        for metric in METRICS:
            if metric not in group.columns:  # rows written before the metric existed
                row[metric] = row[f"{metric}_std"] = math.nan
                continue
            values = group[metric].astype(float)
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        # Seeds that did not learn (runner/results/learning.py): the worst flag, and how many.
        flags = [
            f
            for f in group.get("learning_flag", pd.Series(dtype=object))
            if isinstance(f, str) and f
        ]
        row["learning_flag"] = DIVERGED if DIVERGED in flags else (flags[0] if flags else "")
        row["not_learned"] = len(flags)
        row["threads"] = ",".join(str(t) for t in sorted(set(group["torch_threads"])))
        # What a comparison with the paper needs: examples per epoch (the same for every seed
        # of a configuration: dataset, train_limit and split make it; NaN if they disagree)
        # and the CPUs the seeds ran on.
        sizes = set(group["train_size"].dropna()) if "train_size" in group.columns else set()
        row["train_size"] = int(sizes.pop()) if len(sizes) == 1 else math.nan
        cpus = (
            set(group["cpu_model"].dropna().astype(str)) if "cpu_model" in group.columns else set()
        )
        row["cpu_models"] = ", ".join(sorted(cpus - {""}))
        rows.append(row)
    summary = pd.DataFrame(rows)
    return _sort_key(summary).drop(columns="_order").reset_index(drop=True)


# --- tables ----------------------------------------------------------------------------------


def summary_flag(row: pd.Series) -> str:
    """The mark of a configuration some of whose seeds did not learn ('' if all learned)."""
    if not row.get("not_learned", 0):
        return ""
    return flag_text(str(row["learning_flag"]), int(row["not_learned"]), int(row["cells"]))


def not_learned_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The finished cells that did not learn, with what the report lists about them."""
    if cells.empty or "learning_flag" not in cells.columns:
        return pd.DataFrame()
    flagged = cells[cells["learning_flag"].fillna("") != ""]
    columns = [
        "dataset",
        "arch",
        "label",
        "depth",
        "seed",
        "cell_key",
        "learning_flag",
        "test_accuracy",
        "chance_accuracy",
        "final_train_loss",
    ]
    return flagged[[c for c in columns if c in flagged.columns]]


def _stat(row: pd.Series, metric: str, scale: float = 1.0) -> Stat:
    """A configuration's mean and std over seeds; an accuracy is flagged when some of its
    seeds did not learn."""
    flag = summary_flag(row) if metric.endswith("accuracy") else ""
    return Stat(
        float(row[metric]) * scale, float(row[f"{metric}_std"]) * scale, int(row["seeds"]), flag
    )


def _ordered_labels(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(_sort_key(frame)["label"]))


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


# --- the approximation-error probe and Theorem 2 --------------------------------------------------


@dataclass(frozen=True)
class Theorem2Fit:
    """Least-squares fit of Theorem 2's model to measured relative errors.

    Under the theorem's assumption (active inputs carry c times the weighted sum of the
    inactive ones, linear activations), the estimate after k layers is the exact activation
    times (c/(c+1))^k, so the error relative to the estimate is ((c+1)/c)^k - 1 (the
    theorem's form) and the error relative to the exact activation, which the probe measures
    as ||a_approx - a|| / ||a||, is 1 - (c/(c+1))^k. `c` minimises the sum of squared
    differences between the measured errors and 1 - (c/(c+1))^k.
    """

    c: float
    rms: float  # root mean square residual of the fit, in the probe's units
    points: int

    def probe_curve(self, k: np.ndarray) -> np.ndarray:
        q = self.c / (self.c + 1.0)
        return 1.0 - q ** np.asarray(k, dtype=float)

    def theorem_curve(self, k: np.ndarray) -> np.ndarray:
        return ((self.c + 1.0) / self.c) ** np.asarray(k, dtype=float) - 1.0


def fit_theorem2(k: np.ndarray, error: np.ndarray) -> Theorem2Fit | None:
    """Fit c to points (k, measured relative error); None without points, or when the points
    do not have the theorem's shape: the best c at the edge of its range (0.00025 .. 4000),
    e.g. errors at or above 1 (c -> 0) or all zero (c -> infinity)."""
    k = np.asarray(k, dtype=float)
    error = np.asarray(error, dtype=float)
    good = np.isfinite(k) & np.isfinite(error)
    k, error = k[good], error[good]
    if len(k) == 0:
        return None

    def loss(q: float) -> float:
        return float(np.sum((error - (1.0 - q**k)) ** 2))

    # A coarse scan of q = c/(c+1) in (0, 1), then golden-section refinement around the best.
    steps = 4000
    grid = np.arange(1, steps) / steps
    losses = [loss(q) for q in grid]
    best = int(np.argmin(losses))
    if best in (0, len(grid) - 1):
        return None
    lo, hi = grid[best - 1], grid[best + 1]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    while b - a > 1e-13:
        x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
        if loss(x1) <= loss(x2):
            b = x2
        else:
            a = x1
    q = (a + b) / 2.0
    return Theorem2Fit(c=q / (1.0 - q), rms=math.sqrt(loss(q) / len(k)), points=len(k))


def probe_points(cells: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """The probe at each cell's final epoch, one row per (cell, hidden layer): `layer`, and
    `error` = ||a_approx - a|| / ||a|| of that layer on the fixed validation batch;
    `last` marks the cell's last hidden layer (layer == depth)."""
    columns = [
        "cell_key",
        "config",
        "label",
        "dataset",
        "arch",
        "method",
        "depth",
        "batch_size",
        "seed",
    ]
    probe_columns = [c for c in epochs.columns if c.startswith(PROBE_PREFIX)]
    empty = pd.DataFrame(columns=[*columns, "layer", "error", "last"])
    if cells.empty or not probe_columns:
        return empty
    final = epochs.sort_values("epoch").groupby("cell_key").tail(1)
    long = final.melt(
        id_vars=["cell_key"], value_vars=probe_columns, var_name="stat", value_name="error"
    )
    long = long.dropna(subset=["error"])
    if long.empty:
        return empty
    long["layer"] = long["stat"].str.slice(len(PROBE_PREFIX)).astype(int)
    points = long.drop(columns="stat").merge(cells[columns], on="cell_key", how="inner")
    points["last"] = points["layer"] == points["depth"]
    return points.sort_values(["dataset", "arch", "label", "depth", "seed", "layer"]).reset_index(
        drop=True
    )


# Theorem 2 models an approximate forward pass that drops the inactive units' share of each
# weighted sum (no rescaling), so its estimate falls short by a fixed ratio per layer: that is
# ALSH-APPROX. Dropout, standout and MC's forward mode rescale or sample instead; their probe
# error is a noise level (often above 1), not a shortfall, and gets no fitted c.
THEOREM2_METHODS = ("alsh_approx",)


def probe_fits(points: pd.DataFrame) -> pd.DataFrame:
    """Theorem 2's c per dataset, architecture and method label (for the methods the theorem
    models, `THEOREM2_METHODS`), fitted to the final-epoch error of every cell's last hidden
    layer (k = depth; each seed one point)."""
    rows = []
    last = points[points["last"]] if not points.empty else points
    if not last.empty:
        last = last[last["method"].isin(THEOREM2_METHODS)]
    for (dataset, arch, label), group in last.groupby(["dataset", "arch", "label"], sort=True):
        fit = fit_theorem2(group["depth"].to_numpy(), group["error"].to_numpy())
        if fit is None:
            continue
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "label": label,
                "c": fit.c,
                "rms": fit.rms,
                "points": fit.points,
                "depths": ",".join(str(d) for d in sorted(group["depth"].unique())),
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "arch", "label", "c", "rms", "points", "depths"])


def probe_tables(points: pd.DataFrame, fits: pd.DataFrame) -> list[GridTable]:
    """Measured error of the last hidden layer per depth, and the fitted c, per method."""
    tables: list[GridTable] = []
    if points.empty:
        return tables
    last = points[points["last"]]
    for (dataset, arch), group in last.groupby(["dataset", "arch"], sort=True):
        depths = sorted(group["depth"].unique())
        values: dict[tuple[str, str], Stat] = {}
        for (label, depth), cell_group in group.groupby(["label", "depth"]):
            errors = cell_group["error"].astype(float)
            values[(label, str(depth))] = Stat(
                float(errors.mean()),
                float(errors.std(ddof=1)) if len(errors) > 1 else math.nan,
                len(errors),
            )
        here = fits[(fits["dataset"] == dataset) & (fits["arch"] == arch)]
        for _, fit in here.iterrows():
            values[(fit["label"], "fitted c")] = Stat(float(fit["c"]))
            values[(fit["label"], "fit rms")] = Stat(float(fit["rms"]))
        tables.append(
            GridTable(
                title=f"Approximation error of the last hidden layer by depth, "
                f"{group_name(dataset, arch)} (Theorem 2)",
                row_header="method",
                rows=_ordered_labels(group.drop_duplicates("label")),
                columns=[str(d) for d in depths] + ["fitted c", "fit rms"],
                values=values,
                fmt=".3g",
                note="||a_approx - a|| / ||a|| on the fixed validation probe batch, final "
                "epoch; c fitted by least squares of 1 - (c/(c+1))^k with k = depth, for "
                "ALSH-APPROX only (the theorem's model: units dropped without rescaling)",
            )
        )
    return tables


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
    # ALSH-APPROX's active sets (runner/report/active_sets.py): tables, and per layer for the
    # figure.
    active_set_tables: list[GridTable] = field(default_factory=list)
    active_sets: pd.DataFrame = field(default_factory=pd.DataFrame)


def analyse(data: SweepData) -> Analysis:
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
    summary = summarise(cells)
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
        active_set_tables=active_sets.active_set_tables(final),
        active_sets=active_sets.overlap_by_layer(final),
    )


@dataclass
class Report:
    out_dir: Path
    cells_path: Path | None
    epochs_path: Path | None
    page_path: Path | None
    data: SweepData
    analysis: Analysis
    figures: list[FigureFile] = field(default_factory=list)
    comparison: pd.DataFrame | None = None  # with --compare-paper
    unmatched: list[PublishedNumber] = field(default_factory=list)

    # The skeleton's names, kept for callers of the first version.
    @property
    def cells(self) -> pd.DataFrame:
        return self.analysis.cells

    @property
    def summary(self) -> pd.DataFrame:
        return self.analysis.summary

    @property
    def unreadable(self) -> list[Path]:
        return self.data.unreadable


def build_report(
    results_dir: str | Path,
    out_dir: str | Path | None = None,
    compare_paper: bool = False,
) -> Report:
    """Read a results folder and write the Parquet files, the figures and the page."""
    from runner.report import figures
    from runner.report import page as report_page
    from runner.report.published import compare, load_published

    data = load_sweep(results_dir)
    out = Path(out_dir) if out_dir else data.root / "report"
    try:  # before anything is computed: a folder that cannot take the report says so now
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".cpusweep-write-test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(
            f"cannot write the report to {out} ({exc.strerror or exc}); write it elsewhere "
            "with --out DIR"
        ) from None
    analysis = analyse(data)
    report = Report(out, None, None, None, data, analysis)
    if data.table is not None:
        flat = data.table.drop_columns(["history"])
        flat = flat.append_column("label", pa.array(list(analysis.cells["label"]), pa.string()))
        report.cells_path, report.epochs_path = out / "cells.parquet", out / "epochs.parquet"
        write_parquet(flat, report.cells_path)
        write_parquet(epochs_table(data.table), report.epochs_path)
        report.figures = figures.render_all(analysis, out / "figures")
    if compare_paper:
        report.comparison, report.unmatched = compare(load_published(), analysis.summary)
    report.page_path = report_page.write_page(report, out / "report.md")
    return report
