"""Export a results folder to the trackers people already look at: MLflow and TensorBoard.

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
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from runner.errors import CpusweepError, ResultsError
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
    from runner.report.analysis import (
        annotate,
        epochs_table,
        group_name,
        learning_flags,
        load_sweep,
        paper_label,
    )
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
    from runner.report.analysis import build_report

    try:
        build_report(root)
    except CpusweepError as exc:
        return None, f"the report could not be built, so it is not attached: {exc}"
    return out, None


# --- MLflow --------------------------------------------------------------------------------------


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


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"


def _artifact_location(tracking_uri: str, root: Path, is_default: bool) -> str | None:
    """Where a new experiment keeps its artifacts: DIR/mlflow/artifacts for the default store,
    beside the database for another SQLite file (MLflow's own default would be ./mlruns of the
    current folder), else the server's choice."""
    if is_default:
        return str((root / "mlflow" / "artifacts").resolve())
    if tracking_uri.lower().startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            return str(path.resolve().parent / "artifacts")
    return None


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _text(value: object) -> str:
    return str(value)[:_MAX_TAG_TEXT]


class _MlflowWriter:
    """The MLflow client calls of one export (all through MlflowClient: the fluent API would
    add git and environment tags, and keep a global active run)."""

    def __init__(self, tracking_uri: str) -> None:
        self.entities = importlib.import_module("mlflow.entities")
        self.client = importlib.import_module("mlflow.tracking").MlflowClient(
            tracking_uri=tracking_uri
        )

    def log(
        self,
        run_id: str,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        metrics: list[tuple[str, float, int, int]] | None = None,
    ) -> None:
        e = self.entities
        param_list = [e.Param(k, _text(v)) for k, v in (params or {}).items()]
        tag_list = [e.RunTag(k, _text(v)) for k, v in (tags or {}).items()]
        for chunk in _chunks(param_list, 100):
            self.client.log_batch(run_id, params=list(chunk))
        for chunk in _chunks(tag_list, 100):
            self.client.log_batch(run_id, tags=list(chunk))
        metric_list = [e.Metric(k, v, ts, step) for k, v, ts, step in metrics or []]
        for chunk in _chunks(metric_list, 1000):
            self.client.log_batch(run_id, metrics=list(chunk))

    def search(self, experiment_id: str, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs


def _experiment(writer: _MlflowWriter, name: str, artifact_location: str | None, uri: str) -> str:
    experiment = writer.client.get_experiment_by_name(name)
    if experiment is None:
        return str(writer.client.create_experiment(name, artifact_location=artifact_location))
    if experiment.lifecycle_stage != "active":
        raise ExportError(
            f"the MLflow experiment {name!r} in {uri} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`), delete "
            "it for good, or export to another one with --experiment NAME"
        )
    return str(experiment.experiment_id)


def _parent_run(writer: _MlflowWriter, experiment_id: str, sweep: SweepExport) -> str:
    # Matched here rather than in the filter: a job name taken from a folder may hold quotes.
    parents = writer.search(experiment_id, f"tags.`{ROLE_TAG}` = 'job'")
    found = [r for r in parents if r.data.tags.get(JOB_TAG) == sweep.name]
    if found:
        return str(min(found, key=lambda r: r.info.start_time).info.run_id)
    starts = [c.started_ms for c in sweep.cells if c.started_ms is not None]
    tags = {ROLE_TAG: "job", JOB_TAG: sweep.name, "cpusweep.results_dir": str(sweep.root)}
    if sweep.description:
        tags["mlflow.note.content"] = sweep.description  # the run's description in the UI
    run = writer.client.create_run(
        experiment_id, start_time=min(starts, default=None), tags=tags, run_name=sweep.name
    )
    return str(run.info.run_id)


def _cell_metrics(cell: CellExport) -> list[tuple[str, float, int, int]]:
    stamp = cell.finished_ms or int(time.time() * 1000)
    metrics = [
        (name, value, stamp, epoch)
        for epoch, values in cell.epochs
        for name, value in values.items()
    ]
    step = cell.epochs_done or (cell.epochs[-1][0] if cell.epochs else 0)
    metrics += [(name, value, stamp, step) for name, value in cell.final.items()]
    return metrics


def export_mlflow(
    results_dir: str | os.PathLike[str],
    tracking_uri: str | None = None,
    experiment: str | None = None,
    attach_report: bool = True,
) -> ExportSummary:
    """Export a results folder to MLflow (see the module docstring); again after more cells
    finish, only what is new is added."""
    require_mlflow(tracking_uri)
    sweep = collect(results_dir)
    root = sweep.root
    is_default = tracking_uri is None
    uri = default_tracking_uri(root) if is_default else str(tracking_uri)
    if is_default:
        try:
            (root / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(
                f"cannot create the MLflow store in {root / 'mlflow'} ({exc.strerror or exc}); "
                "give another with --tracking-uri sqlite:////path/to/mlflow.db"
            ) from None
    summary = ExportSummary("mlflow", uri, experiment=experiment or sweep.name)
    exception = importlib.import_module("mlflow.exceptions").MlflowException
    try:
        writer = _MlflowWriter(uri)
        summary.experiment_id = _experiment(
            writer, str(summary.experiment), _artifact_location(uri, root, is_default), uri
        )
        _export_runs(writer, sweep, summary, attach_report)
    except exception as exc:
        raise ExportError(f"MLflow could not use the tracking URI {uri}: {exc}") from None
    summary.view = (
        f"mlflow ui --backend-store-uri {uri}" if _is_database_uri(uri) else f"open {uri}"
    )
    return summary


def _export_runs(
    writer: _MlflowWriter, sweep: SweepExport, summary: ExportSummary, attach_report: bool
) -> None:
    client, experiment_id = writer.client, str(summary.experiment_id)
    parent = _parent_run(writer, experiment_id, sweep)
    summary.parent_run_id = parent
    children: dict[tuple[str, str], list[Any]] = {}
    for run in writer.search(experiment_id, f"tags.`mlflow.parentRunId` = '{parent}'"):
        key = run.data.tags.get(KEY_TAG)
        if key:
            children.setdefault((key, run.info.status), []).append(run)

    def incomplete(key: str) -> None:
        """Runs of this cell that an interrupted export left RUNNING: deleted, to redo."""
        for run in children.pop((key, "RUNNING"), []):
            client.delete_run(run.info.run_id)
            summary.redone += 1

    base_tags = {"mlflow.parentRunId": parent, ROLE_TAG: "cell", JOB_TAG: sweep.name}
    for cell in sweep.cells:
        incomplete(cell.key)
        for run in children.get((cell.key, "FAILED"), []):
            if run.data.tags.get(SUPERSEDED_TAG) != "true":
                client.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
                summary.superseded += 1
        if (cell.key, "FINISHED") in children:
            summary.skipped += 1
            continue
        run = client.create_run(
            experiment_id,
            start_time=cell.started_ms,
            tags={**base_tags, KEY_TAG: cell.key},
            run_name=cell.run_name,
        )
        run_id = run.info.run_id
        writer.log(run_id, params=cell.params, tags=cell.tags, metrics=_cell_metrics(cell))
        if cell.confusion:
            client.log_dict(
                run_id,
                {
                    "rows": "true label",
                    "columns": "predicted label",
                    "set": "test",
                    "matrix": cell.confusion,
                },
                "confusion_matrix.json",
            )
        # Last: a run that is still RUNNING was cut short, and the next export redoes it.
        client.set_terminated(run_id, "FINISHED", end_time=cell.finished_ms)
        summary.created += 1

    for failure in sweep.failed:
        incomplete(failure.key)
        if (failure.key, "FAILED") in children:
            # Exported before: brought up to date if the cell has failed again since.
            run = children[(failure.key, "FAILED")][0]
            changed = {k: v for k, v in failure.tags.items() if run.data.tags.get(k) != _text(v)}
            if changed:
                writer.log(run.info.run_id, tags=changed)
                client.log_dict(run.info.run_id, failure.record, "failure.json")
                summary.failed_updated += 1
            else:
                summary.failed_skipped += 1
            continue
        run = client.create_run(
            experiment_id,
            start_time=failure.started_ms,
            tags={**base_tags, KEY_TAG: failure.key},
            run_name=failure.run_name,
        )
        run_id = run.info.run_id
        writer.log(run_id, params=failure.params, tags=failure.tags)
        if failure.record:
            client.log_dict(run_id, failure.record, "failure.json")
        client.set_terminated(run_id, "FAILED", end_time=failure.finished_ms)
        summary.failed_created += 1

    # The parent: counts as of this export, the job file, the report.
    now = int(time.time() * 1000)
    counts = {"cells_finished": len(sweep.cells), "cells_failed": len(sweep.failed)}
    if sweep.missing is not None:
        counts["cells_missing"] = sweep.missing
    writer.log(parent, metrics=[(k, float(v), now, 0) for k, v in counts.items()])
    if sweep.job_path is not None:
        client.log_artifact(parent, str(sweep.job_path))
    if attach_report:
        report, why = ensure_report(sweep.root)
        if why:
            summary.notes.append(why)
        if report is not None:
            client.log_artifact(parent, str(report / "report.md"), "report")
            if (report / "figures").is_dir():
                client.log_artifacts(parent, str(report / "figures"), "report/figures")
            summary.report = report
    if sweep.missing:
        client.update_run(parent, status="RUNNING")
    else:
        client.set_terminated(parent, "FAILED" if sweep.failed else "FINISHED")


# --- TensorBoard ---------------------------------------------------------------------------------


def _tb_run_dir(cell: CellExport) -> Path:
    """A cell's run folder, from the cell alone (so it never moves when more cells finish):
    <dataset>/<paper's method name>/d<depth>_s<seed>_<key>."""
    from runner.report.analysis import slug

    depth, seed = cell.params.get("depth"), cell.params.get("seed")
    return (
        Path(slug(cell.group))
        / slug(cell.tags["cpusweep.paper_label"])
        / (f"d{depth}_s{seed}_{cell.key}")
    )


def _hparam_kinds(cells: list[CellExport]) -> dict[str, type]:
    """Each parameter's type in the hparams table: bool, float (every number) or str (mixed
    values are shown as text)."""
    kinds: dict[str, type] = {}
    seen: dict[str, set[type]] = {}
    for cell in cells:
        for name, value in cell.params.items():
            if value is not None:
                seen.setdefault(name, set()).add(type(value))
    for name, types in seen.items():
        if types == {bool}:
            kinds[name] = bool
        elif types <= {int, float}:
            kinds[name] = float
        else:
            kinds[name] = str
    return kinds


def _hparam_values(cell: CellExport, kinds: dict[str, type]) -> dict[str, Any]:
    return {
        name: kinds[name](value)
        for name, value in cell.params.items()
        if value is not None and name in kinds
    }


class _EventFile:
    """One TensorBoard event file (scalars as the `tensorboard.summary` writer writes them,
    plus raw summaries for the hparams plugin)."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        writer_module = importlib.import_module("tensorboard.summary.writer.event_file_writer")
        self.event_pb2 = importlib.import_module("tensorboard.compat.proto.event_pb2")
        self.summary_pb2 = importlib.import_module("tensorboard.compat.proto.summary_pb2")
        self.tensor_util = importlib.import_module("tensorboard.util.tensor_util")
        self.numpy = importlib.import_module("numpy")
        self.writer = writer_module.EventFileWriter(str(folder), filename_suffix=suffix)

    def scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        metadata = self.summary_pb2.SummaryMetadata(
            plugin_data=self.summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=self.summary_pb2.DataClass.DATA_CLASS_SCALAR,
        )
        event = self.event_pb2.Event(wall_time=wall_time, step=step)
        event.summary.value.add(
            tag=tag,
            tensor=self.tensor_util.make_tensor_proto(self.numpy.float32(value)),
            metadata=metadata,
        )
        self.writer.add_event(event)

    def summary(self, summary: Any, wall_time: float) -> None:
        self.writer.add_event(self.event_pb2.Event(wall_time=wall_time, step=0, summary=summary))

    def close(self) -> None:
        self.writer.close()


def _tb_tag(name: str) -> str:
    """epochs.parquet's column names as TensorBoard tags, grouped: `epoch/val_accuracy`,
    `stat/probe_rel_error.layer2`."""
    if name.startswith("stat."):
        return "stat/" + name[len("stat.") :]
    return "epoch/" + name


def _write_tb_cell(folder: Path, cell: CellExport, kinds: dict[str, type]) -> None:
    hp = importlib.import_module("tensorboard.plugins.hparams.summary_v2")
    wall = (cell.finished_ms or time.time() * 1000) / 1000
    events = _EventFile(folder)
    try:
        start = (cell.started_ms or cell.finished_ms or time.time() * 1000) / 1000
        events.summary(
            hp.hparams_pb(_hparam_values(cell, kinds), trial_id=cell.key, start_time_secs=start),
            start,
        )
        for epoch, values in cell.epochs:
            for name, value in values.items():
                events.scalar(_tb_tag(name), value, epoch, wall)
        step = cell.epochs_done or (cell.epochs[-1][0] if cell.epochs else 0)
        for name, value in cell.final.items():
            events.scalar(f"final/{name}", value, step, wall)
    finally:
        events.close()


def _write_tb_experiment(out: Path, cells: list[CellExport], kinds: dict[str, type]) -> None:
    """The hparams plugin's experiment summary at the top of the log folder: every parameter
    with the values the cells took, and the metrics of the table. Replaces the previous one."""
    hp = importlib.import_module("tensorboard.plugins.hparams.summary_v2")
    previous = [p for p in out.glob(f"events.out.tfevents.*{_TB_ROOT_SUFFIX}") if p.is_file()]
    hparams = []
    for name, kind in sorted(kinds.items()):
        values = {v[name] for v in (_hparam_values(c, kinds) for c in cells) if name in v}
        hparams.append(hp.HParam(name, hp.Discrete(sorted(values), dtype=kind)))
    tags = {_tb_tag(n) for c in cells for _, values in c.epochs for n in values}
    tags |= {f"final/{n}" for c in cells for n in c.final}
    metrics = [hp.Metric(tag) for tag in TENSORBOARD_TABLE_METRICS if tag in tags]
    events = _EventFile(out, _TB_ROOT_SUFFIX)
    try:
        events.summary(hp.hparams_config_pb(hparams, metrics), time.time())
    finally:
        events.close()
    for path in previous:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def export_tensorboard(
    results_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> ExportSummary:
    """Export a results folder's finished cells as TensorBoard event files under `out`
    (default DIR/tensorboard): a cell already there is left as it is; the hparams experiment
    summary is rewritten to cover every cell."""
    require_tensorboard()
    sweep = collect(results_dir)
    folder = Path(out) if out is not None else sweep.root / "tensorboard"
    summary = ExportSummary("tensorboard", str(folder), failed_not_exported=len(sweep.failed))
    kinds = _hparam_kinds(sweep.cells)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for cell in sweep.cells:
            target = folder / _tb_run_dir(cell)
            if target.is_dir() and any(target.glob("events.out.tfevents.*")):
                summary.skipped += 1
                continue
            # Written aside, then renamed into place: an interrupted export leaves no half run.
            temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.rmtree(temporary, ignore_errors=True)
            temporary.mkdir(parents=True)
            try:
                _write_tb_cell(temporary, cell, kinds)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(temporary, target)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
            summary.created += 1
        if sweep.cells:
            _write_tb_experiment(folder, sweep.cells, kinds)
    except OSError as exc:
        raise ResultsError(
            f"cannot write TensorBoard files to {folder} ({exc.strerror or exc}); pick another "
            "folder with --out DIR"
        ) from None
    if sweep.failed:
        summary.notes.append(
            f"{len(sweep.failed)} failed cell(s) have no scalars and are not in TensorBoard "
            "(`python -m runner status` lists them; the MLflow export has them as FAILED runs)"
        )
    summary.view = f"tensorboard --logdir {folder}"
    return summary
