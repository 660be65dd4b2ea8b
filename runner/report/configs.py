"""Configurations: cells named as in the paper, grouped over seeds (mean and sample standard
deviation), with the learning flags and work shares they carry (pure pandas).

A configuration is a cell without its seed: cells that differ only in `seed` are averaged
(mean, and sample standard deviation when there are several seeds)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import pandas as pd

from runner.report import active_sets
from runner.report.tables import Stat
from runner.results.learning import DIVERGED, flag_text, row_verdict
from runner.results.stops import COMPLETED, TIME_BUDGET, stop_reason, stop_text

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


def stop_reasons(cells: pd.DataFrame) -> pd.Series:
    """Each finished cell's stop reason (runner/results/stops.py), older rows included."""
    columns = [c for c in ("stop_reason", "diverged") if c in cells.columns]
    records = cells[columns].to_dict("records")
    return pd.Series([stop_reason(r) for r in records], index=cells.index, dtype=object)


def summarise(cells: pd.DataFrame, include_stopped: bool = False) -> pd.DataFrame:
    """One row per configuration: its parameters, `seeds` (distinct seeds), `cells`, and for
    each metric its mean (column named after the metric) and sample standard deviation over
    seeds (`<metric>_std`, NaN with one seed); `threads`: the torch thread counts observed;
    `train_size`: training examples per epoch; `cpu_models`: the CPU models, ", "-joined.

    Cells that stopped early (diverged, or by a time budget) are left out of the means and
    standard deviations unless `include_stopped`; `stopped` counts them and `stop_reason`
    says why (a time budget before a divergence, which the learning flag shows already)."""
    if cells.empty:
        return pd.DataFrame()
    if "config" not in cells.columns:
        cells = annotate(cells)
    cells = cells.assign(_stop=stop_reasons(cells))
    keep = [c for c in (*CONFIG_COLUMNS, *VERSION_COLUMNS, "label") if c in cells.columns]
    keep += _hyper_columns(cells)
    rows = []
    for config, group in cells.groupby("config", sort=False):
        first = group.iloc[0]
        row: dict[str, Any] = {"config": config}
        row.update({c: first[c] for c in keep})
        row["seeds"] = int(group["seed"].nunique())
        row["cells"] = len(group)
        stopped = group["_stop"] != COMPLETED
        reasons = set(group.loc[stopped, "_stop"])
        row["stopped"] = int(stopped.sum())
        row["stop_reason"] = (
            "" if not reasons else TIME_BUDGET if TIME_BUDGET in reasons else sorted(reasons)[0]
        )
        row["stopped_in_means"] = include_stopped
        counted = group if include_stopped else group[~stopped]
        for metric in METRICS:
            if metric not in group.columns:  # rows written before the metric existed
                row[metric] = row[f"{metric}_std"] = math.nan
                continue
            values = counted[metric].astype(float)
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
    """The mark of a configuration some of whose seeds did not learn or stopped early, the
    latter left out of its means unless asked ('' if all learned and completed)."""
    marks = []
    if row.get("not_learned", 0):
        marks.append(
            flag_text(str(row["learning_flag"]), int(row["not_learned"]), int(row["cells"]))
        )
    stopped = int(row.get("stopped", 0) or 0)
    if stopped:
        left_out = "(in means)" if row.get("stopped_in_means") else "(not in means)"
        if row["stop_reason"] != DIVERGED:  # a divergence shows as a learning flag already
            marks.append(stop_text(str(row["stop_reason"]), stopped, int(row["cells"])))
        marks.append(left_out)
    return " ".join(marks)


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
