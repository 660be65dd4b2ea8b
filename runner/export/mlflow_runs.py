"""The MLflow export: a parent run per job, a child run per cell (see runner/export/collect.py)."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from runner.errors import ResultsError
from runner.export.collect import (
    _MAX_TAG_TEXT,
    JOB_TAG,
    KEY_TAG,
    ROLE_TAG,
    SUPERSEDED_TAG,
    CellExport,
    ExportError,
    ExportSummary,
    SweepExport,
    _is_database_uri,
    collect,
    ensure_report,
    require_mlflow,
)

# --- MLflow --------------------------------------------------------------------------------------


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


def _child_run(
    client: Any, experiment_id: str, base_tags: dict[str, str], key: str, item: Any
) -> str:
    """A new child run for a finished or failed cell (`item`: its started_ms and run_name),
    tagged with its cell key, which re-exports match on."""
    run = client.create_run(
        experiment_id,
        start_time=item.started_ms,
        tags={**base_tags, KEY_TAG: key},
        run_name=item.run_name,
    )
    return str(run.info.run_id)


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
        run_id = _child_run(client, experiment_id, base_tags, cell.key, cell)
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
        run_id = _child_run(client, experiment_id, base_tags, failure.key, failure)
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
