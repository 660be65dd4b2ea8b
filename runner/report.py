"""Turning a results folder into analysis tables.

`cells.parquet`: one row per finished cell (every parameter column, every measured column;
the per-epoch history is moved out to `epochs.parquet`, one row per cell and epoch, keyed by
`cell_key`). `summarise` aggregates over seeds; it is pure pandas, testable without a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from runner.store import ResultsStore, atomic_write_bytes

# The columns that identify a configuration when averaging over seeds.
CONFIG_COLUMNS = (
    "dataset",
    "method",
    "arch",
    "depth",
    "width",
    "batch_size",
    "lr",
    "optimizer",
    "epochs",
    "train_limit",
)


@dataclass
class Report:
    cells_path: Path | None
    epochs_path: Path | None
    cells: pd.DataFrame
    summary: pd.DataFrame
    unreadable: list[Path] = field(default_factory=list)


def _write_parquet(table: pa.Table, path: Path) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())


def epochs_table(cells: pa.Table) -> pa.Table:
    """Long form of every cell's history: one row per (cell, epoch)."""
    keys = cells.column("cell_key").to_pylist()
    histories = cells.column("history").to_pylist()
    rows = []
    for key, history in zip(keys, histories, strict=True):
        for entry in history or []:
            row = {"cell_key": key}
            row.update({k: v for k, v in entry.items() if k != "stats"})
            for stat in entry.get("stats") or []:
                row[f"stat.{stat['name']}"] = stat["value"]
            rows.append(row)
    return pa.Table.from_pylist(rows) if rows else pa.table({"cell_key": pa.array([], pa.string())})


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of accuracy and time, per configuration."""
    if cells.empty:
        return pd.DataFrame()
    by = [c for c in CONFIG_COLUMNS if c in cells.columns]
    # Method hyperparameters distinguish configurations too (e.g. two dropout keep rates).
    by += sorted(c for c in cells.columns if "." in c and not c.startswith("stat."))
    grouped = cells.groupby(by, dropna=False, sort=True)
    summary = grouped.agg(
        seeds=("seed", "nunique"),
        test_accuracy=("test_accuracy", "mean"),
        test_accuracy_std=("test_accuracy", "std"),
        val_accuracy=("val_accuracy", "mean"),
        seconds_per_epoch=("seconds_per_epoch", "mean"),
        seconds_per_epoch_std=("seconds_per_epoch", "std"),
        torch_threads=("torch_threads", "max"),
    ).reset_index()
    return summary


def build_report(results_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    store = ResultsStore(results_dir)
    out = Path(out_dir) if out_dir else store.root / "report"
    table, unreadable = store.read_results()
    if table is None:
        return Report(None, None, pd.DataFrame(), pd.DataFrame(), unreadable)
    out.mkdir(parents=True, exist_ok=True)
    flat = table.drop_columns(["history"])
    cells_path, epochs_path = out / "cells.parquet", out / "epochs.parquet"
    _write_parquet(flat, cells_path)
    _write_parquet(epochs_table(table), epochs_path)
    frame = flat.drop_columns(["confusion_matrix"]).to_pandas()
    return Report(cells_path, epochs_path, frame, summarise(frame), unreadable)
