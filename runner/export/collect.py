"""Exporting a results folder to the trackers people already look at: MLflow and TensorBoard.

After the fact, from the Parquet rows (the timed training loop is never touched), read with the
project's own reader (runner/report/analysis.py: `load_sweep`, `annotate`, `epochs_table`).

MLflow (`export_mlflow`): one experiment (default: the job's name) holding one parent run per
job and, nested under it, one child run per finished cell (status FINISHED) and per failed cell
(status FAILED). A child carries the cell's parameters, its per-epoch metrics (step = epoch),
its final metrics, tags (`cpusweep.cell_key`, versions, node, learning flag, error class) and
artifacts (the confusion matrix, or the failure record); the parent carries the job file, the
cell counts and the report's page and figures. Runs are matched on `cpusweep.cell_key` under
the parent, so exporting again adds only what is new. Default store: SQLite in DIR/mlflow/.

TensorBoard (`export_tensorboard`): one run folder per finished cell with its scalars per
epoch and its hyperparameters, and at the top an hparams experiment summary across every cell,
so `tensorboard --logdir` compares them (the HPARAMS tab). Written with TensorBoard's own event
writer and hparams plugin protos: no TensorFlow, no torch.

Both need optional extras (`pip install -e '.[mlflow]'`, `'.[tensorboard]'`); without them a
MissingExtra error names the one to install. Nothing here prints: results come back as an
ExportSummary for the CLI to show.

This module: what a results folder holds, ready to export (shared by both trackers).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from runner.errors import CpusweepError
from runner.results.schema import MEASURED_COLUMNS

ROLE_TAG = "cpusweep.role"  # "job" for a parent run, "cell" for a child
JOB_TAG = "cpusweep.job"
KEY_TAG = "cpusweep.cell_key"
SUPERSEDED_TAG = "cpusweep.superseded"  # a FAILED run whose cell has since finished

# Final metrics of a finished cell (row columns), logged once at step = epochs_done. None of
# these names is also a per-epoch metric (the epochs' `train_seconds` is one epoch's time).
FINAL_METRICS = (
    "test_accuracy",
    "test_loss",
    "best_val_accuracy",
    "final_train_loss",
    "seconds_per_epoch",
    "approx_test_accuracy",  # ALSH-APPROX's network through its tables; null (skipped) otherwise
    "chance_accuracy",
    "wall_seconds",
)
# Row columns recorded as tags of a finished cell's run (prefixed `cpusweep.`).
TAG_COLUMNS = (
    "method_version",
    "trainer_version",
    "dataset_version",
    "node",
    "hostname",
    "cpu_model",
    "torch_version",
    "status",
)
# TensorBoard's hparams table: the metrics shown beside each cell's hyperparameters.
TENSORBOARD_TABLE_METRICS = (
    "final/test_accuracy",
    "final/seconds_per_epoch",
    "final/best_val_accuracy",
    "final/approx_test_accuracy",
    "epoch/val_accuracy",
    "epoch/train_loss",
)
_TB_ROOT_SUFFIX = ".cpusweep-hparams"  # names the top-level event file this module rewrites
_MAX_TAG_TEXT = 5000  # MLflow accepts 8000 characters per tag value; messages are cut shorter


class MissingExtra(CpusweepError):
    """An optional dependency of an export is not installed."""


class ExportError(CpusweepError):
    """An export cannot be done as asked (a tracking store that cannot be used, ...)."""


def _import_extra(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"exporting to {extra} needs the optional `{extra}` extra, which is not installed "
            f"({exc}). Install it with: pip install -e '.[{extra}]' (from the repository root; "
            f"elsewhere: pip install 'cpusweep[{extra}]')"
        ) from None


def require_mlflow(tracking_uri: str | None = None) -> ModuleType:
    """The mlflow module, with its usage telemetry off (it would reach the network) and its
    INFO logging quiet unless the environment says otherwise; MissingExtra if it (or, for a
    database store such as SQLite, SQLAlchemy and alembic) is not installed."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    mlflow = _import_extra("mlflow", "mlflow")
    if tracking_uri is None or _is_database_uri(tracking_uri):
        _import_extra("sqlalchemy", "mlflow")
        _import_extra("alembic", "mlflow")
    return mlflow


def require_tensorboard() -> ModuleType:
    return _import_extra("tensorboard", "tensorboard")


def _is_database_uri(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    return scheme.split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql")


# --- what a results folder holds, ready to export ----------------------------------------------


@dataclass
class CellExport:
    """A finished cell, as every exporter sees it."""

    key: str
    run_name: str
    label: str  # the configuration's name in the report (e.g. "STANDARD_S lr=0.1")
    group: str  # dataset, and the architecture when not an MLP (report.group_name)
    params: dict[str, Any]  # the cell's parameters by job-file name; None where unset
    tags: dict[str, str]
    final: dict[str, float]  # FINAL_METRICS present in the row
    epochs: list[tuple[int, dict[str, float]]]  # (epoch, {metric: value}) in order
    epochs_done: int
    confusion: list[list[int]] | None
    learning_flag: str  # "" learned; "chance" or "diverged"
    started_ms: int | None
    finished_ms: int | None


@dataclass
class FailedExport:
    key: str
    run_name: str
    params: dict[str, Any]  # the cell's parameters, from its failure record
    tags: dict[str, str]  # error class, type and message, node, label, versions
    record: dict[str, Any]  # failed/<key>.json as stored (with the traceback)
    started_ms: int | None
    finished_ms: int | None


@dataclass
class SweepExport:
    root: Path
    name: str  # the job's name (else the folder's)
    description: str
    job_path: Path | None
    cells: list[CellExport]
    failed: list[FailedExport]
    missing: int | None  # cells of the job file neither finished nor failed; None: unknown
    unreadable: list[Path]


def _ms(timestamp: object) -> int | None:
    if not isinstance(timestamp, str) or not timestamp:
        return None
    try:
        return int(datetime.fromisoformat(timestamp).timestamp() * 1000)
    except ValueError:
        return None


def _cell_params(row: dict[str, Any]) -> dict[str, Any]:
    """The cell's parameters: from `cell_json` (the cell exactly as it ran), else from the
    row's parameter columns (those that are not measured, and a method's own hyperparameters
    only)."""
    text = row.get("cell_json")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            values = json.loads(text).get("values")
            if isinstance(values, dict):
                return dict(sorted(values.items()))
    method = str(row.get("method"))
    measured = set(MEASURED_COLUMNS)
    params = {}
    for name, value in row.items():
        if name in measured or (value is None and "." in name):
            continue
        if "." in name and name.split(".", 1)[0] != method:
            continue
        params[name] = value
    return dict(sorted(params.items()))


def _run_name(group: str, label: str, depth: object, seed: object) -> str:
    return f"{group} {label} depth {depth} seed {seed}"


def _metric_value(value: object) -> float | None:
    """A metric value: a float (NaN and infinities kept: a diverged loss is a result), or
    None for a missing value."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def collect(results_dir: str | os.PathLike[str]) -> SweepExport:
    """Everything to export from a results folder, read with the report's reader: finished
    cells (with their epochs), failed cells (with their records) and how many are missing."""
    import numpy as np

    from runner.job.spec import parse_spec
    from runner.report.configs import annotate, group_name, learning_flags, paper_label
    from runner.report.folder import epochs_table, load_sweep
    from runner.results.store import ResultsStore

    data = load_sweep(Path(results_dir))
    root = data.root
    job_name, description = root.resolve().name, ""
    if data.job_text is not None:
        with contextlib.suppress(CpusweepError):
            spec = parse_spec(data.job_text, str(root / "job.toml"))
            job_name, description = spec.name, spec.description or ""
    cells: list[CellExport] = []
    if data.table is not None:
        rows = data.table.drop_columns(["history"]).to_pylist()
        flat = data.table.drop_columns(["history", "confusion_matrix"]).to_pandas()
        annotated = annotate(flat)
        matrices = {
            str(r["cell_key"]): np.asarray(r["confusion_matrix"], dtype=np.int64)
            for r in rows
            if r.get("confusion_matrix")
        }
        flags = learning_flags(annotated, matrices)
        per_cell: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for entry in epochs_table(data.table).to_pylist():
            values = {
                k: v
                for k, raw in entry.items()
                if k not in ("cell_key", "epoch") and (v := _metric_value(raw)) is not None
            }
            per_cell.setdefault(entry["cell_key"], []).append((int(entry["epoch"]), values))
        for row, label, flag in zip(rows, annotated["label"], flags, strict=True):
            key = str(row["cell_key"])
            group = group_name(str(row["dataset"]), str(row.get("arch") or "mlp"))
            tags = {f"cpusweep.{c}": str(row[c]) for c in TAG_COLUMNS if row.get(c) is not None}
            tags["cpusweep.label"] = str(label)
            tags["cpusweep.paper_label"] = paper_label(str(row["method"]), int(row["batch_size"]))
            if flag:
                tags["cpusweep.learning_flag"] = flag
            final = {m: v for m in FINAL_METRICS if (v := _metric_value(row.get(m))) is not None}
            cells.append(
                CellExport(
                    key=key,
                    run_name=_run_name(group, str(label), row.get("depth"), row.get("seed")),
                    label=str(label),
                    group=group,
                    params=_cell_params(row),
                    tags=tags,
                    final=final,
                    epochs=sorted(per_cell.get(key, []), key=lambda e: e[0]),
                    epochs_done=int(row.get("epochs_done") or 0),
                    confusion=row.get("confusion_matrix"),
                    learning_flag=flag,
                    started_ms=_ms(row.get("started_at")),
                    finished_ms=_ms(row.get("finished_at")),
                )
            )
    records = ResultsStore(root).scan().failed
    failed = []
    expected = {c.key: c for c in data.expected or []}
    for item in data.failed:
        record = records.get(item.key, {})
        cell_values = record.get("values")
        params = dict(sorted(cell_values.items())) if isinstance(cell_values, dict) else {}
        path = root / "failed" / f"{item.key}.json"
        finished = _ms(record.get("finished_at"))
        if finished is None:
            with contextlib.suppress(OSError):
                finished = int(path.stat().st_mtime * 1000)
        tags = {
            "cpusweep.error_class": item.error_class,
            "cpusweep.error_type": str(record.get("error_type", "")),
            "cpusweep.error_message": str(record.get("message", "")),
            "cpusweep.failure_record": str(path),
            "cpusweep.label": item.label,
        }
        if record.get("node") is not None:
            tags["cpusweep.node"] = str(record["node"])
        run_name = f"{item.label} (failed)"
        if "method" in params and "batch_size" in params:
            group = group_name(str(params.get("dataset")), str(params.get("arch") or "mlp"))
            label = paper_label(str(params["method"]), int(params["batch_size"]))
            tags["cpusweep.paper_label"] = label
            run_name = _run_name(group, label, params.get("depth"), params.get("seed"))
            run_name += " (failed)"
        cell = expected.get(item.key)
        if cell is not None:  # a cell of the job as this code expands it: its versions are known
            identity = cell.identity()
            for version in ("method_version", "trainer_version", "dataset_version"):
                tags[f"cpusweep.{version}"] = str(identity[version])
        seconds = record.get("seconds")
        started = finished
        if finished is not None and isinstance(seconds, int | float) and seconds >= 0:
            started = finished - int(seconds * 1000)
        failed.append(FailedExport(item.key, run_name, params, tags, record, started, finished))
    return SweepExport(
        root=root,
        name=job_name,
        description=description,
        job_path=root / "job.toml" if data.job_text is not None else None,
        cells=cells,
        failed=failed,
        missing=None if data.expected is None else len(data.missing),
        unreadable=list(data.unreadable),
    )


# --- the report, for the parent run --------------------------------------------------------------


def _newest_mtime(folder: Path, pattern: str) -> float:
    times = [p.stat().st_mtime for p in folder.glob(pattern)] if folder.is_dir() else []
    return max(times, default=0.0)


def ensure_report(root: Path) -> tuple[Path | None, str | None]:
    """DIR/report, built (as `runner report DIR` would) unless it is newer than every result
    and failure; (None, why) when it cannot be built."""
    out = root / "report"
    page = out / "report.md"
    newest = max(_newest_mtime(root / "cells", "*.parquet"), _newest_mtime(root / "failed", "*"))
    if page.is_file() and page.stat().st_mtime >= newest:
        return out, None
    from runner.report.build import build_report

    try:
        build_report(root)
    except CpusweepError as exc:
        return None, f"the report could not be built, so it is not attached: {exc}"
    return out, None


@dataclass
class ExportSummary:
    target: str  # "mlflow" or "tensorboard"
    location: str  # the tracking URI, or the TensorBoard log folder
    experiment: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    created: int = 0  # finished cells exported now
    skipped: int = 0  # finished cells already there
    failed_created: int = 0  # failed cells exported now (MLflow)
    failed_skipped: int = 0
    failed_updated: int = 0  # exported before, and failed again since: tags brought up to date
    failed_not_exported: int = 0  # failed cells a target has no place for (TensorBoard)
    redone: int = 0  # runs left incomplete by an interrupted export, replaced
    superseded: int = 0  # FAILED runs of cells that have since finished, tagged as such
    report: Path | None = None  # the report attached to the parent
    notes: list[str] = field(default_factory=list)
    view: str = ""  # the command that shows the export
