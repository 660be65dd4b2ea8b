"""What a results folder holds: `status` (done, failed, to run, resumable, did not learn),
`load` (the rows as DataFrames), `report` (tables, figures, a page) and `export` (MLflow,
TensorBoard). They read a folder; only report and export write, into their own outputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from runner.errors import CpusweepError
from runner.job.grid import expand
from runner.job.spec import JobSpec, parse_spec
from runner.results.code_versions import CodeVersion, mixes_code, table_code_versions
from runner.results.learning import Verdict, row_verdict
from runner.results.store import ResultsStore
from runner.run.sweep import SweepPlan, make_plan

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from runner.export.collect import ExportSummary
    from runner.report.build import Report

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class NotLearned:
    """A finished cell at chance accuracy or with a diverged loss."""

    key: str
    label: str
    test_accuracy: float
    verdict: Verdict


@dataclass(frozen=True)
class Stopped:
    """A finished cell that stopped before its last epoch: diverged, or by a time budget."""

    key: str
    label: str
    reason: str  # runner/results/stops.py
    epochs_done: int
    epochs: int


@dataclass
class FolderStatus:
    root: Path
    job: JobSpec | None  # the folder's job.toml, when it expands with this code
    job_problem: str | None  # why it does not, if it does not
    plan: SweepPlan | None  # the job's cells against the folder (None without a job)
    done: set[str] = field(default_factory=set)  # finished cell keys, of any job version
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> failure record
    corrupt: dict[Path, str] = field(default_factory=dict)  # unreadable result file -> why
    resumable: list[Path] = field(default_factory=list)  # checkpoints of the job's cells
    orphans: list[Path] = field(default_factory=list)  # checkpoints of cells not in the job
    not_learned: list[NotLearned] = field(default_factory=list)
    # Finished cells that stopped before their last epoch (runner/results/stops.py)
    stopped: list[Stopped] = field(default_factory=list)
    # The finished rows' code (commit, dirty, trainer and method hashes) with their counts;
    # more than one: the folder mixes code (runner/results/code_versions.py)
    code_versions: list[CodeVersion] = field(default_factory=list)

    @property
    def extra_done(self) -> int:
        """Finished cells that the current job file no longer makes."""
        if self.plan is None:
            return 0
        return len(self.done - {c.key for c in self.plan.cells})

    @property
    def mixes_code(self) -> bool:
        """The finished rows come from more than one version of the code."""
        return mixes_code(self.code_versions)


def _not_learned(table: pa.Table | None, labels: dict[str, str]) -> list[NotLearned]:
    from runner.report.configs import paper_label

    if table is None:
        return []
    columns = ["cell_key", "dataset", "method", "batch_size", "depth", "seed", "test_accuracy"]
    optional = ("learning_flag", "chance_accuracy", "chance_p_value", "diverged")
    columns += [c for c in (*optional, "confusion_matrix") if c in table.column_names]
    flagged = []
    for row in table.select(columns).to_pylist():
        verdict = row_verdict(row)
        if verdict.learned:
            continue
        label = labels.get(row["cell_key"]) or (
            f"{row['dataset']} {paper_label(row['method'], row['batch_size'])} "
            f"depth {row['depth']} seed {row['seed']}"
        )
        flagged.append(NotLearned(row["cell_key"], label, row["test_accuracy"], verdict))
    return flagged


def _stopped(table: pa.Table | None, labels: dict[str, str]) -> list[Stopped]:
    from runner.results.stops import COMPLETED, stop_reason

    if table is None:
        return []
    wanted = ("cell_key", "stop_reason", "diverged", "epochs_done", "epochs")
    rows = table.select([c for c in wanted if c in table.column_names]).to_pylist()
    return [
        Stopped(
            r["cell_key"],
            labels.get(r["cell_key"], r["cell_key"]),
            reason,
            int(r.get("epochs_done") or 0),
            int(r.get("epochs") or 0),
        )
        for r in rows
        if (reason := stop_reason(r)) != COMPLETED
    ]


def status(results: PathLike) -> FolderStatus:
    """Done, failed and to-run cells of a results folder (against the job file saved in it),
    checkpoints that let a cell resume, unreadable files and cells that did not learn."""
    from runner.run.checkpoint import checkpoints_dir

    store = ResultsStore(results)
    store.check_readable_folder()
    ledger = store.scan()
    spec, cells, problem = None, None, None
    try:
        text = store.job_text()
        if text is not None:
            spec = parse_spec(text, str(store.root / "job.toml"))
            cells = expand(spec).cells
    except CpusweepError as exc:  # e.g. a dataset renamed since: say so, show the rest
        spec, problem = None, f"the job file does not expand with this version of the code: {exc}"
    plan = make_plan(cells, ledger, retry_failed=False) if cells is not None else None
    resumable = [p for p in checkpoints_dir(store.root).glob("*.pt") if p.stem not in ledger.done]
    in_job = {c.key for c in cells} if cells is not None else None
    orphans = [p for p in resumable if in_job is not None and p.stem not in in_job]
    table, _ = store.read_results()
    labels = {c.key: c.label() for c in cells or []}
    return FolderStatus(
        root=store.root,
        job=spec,
        job_problem=problem,
        plan=plan,
        done=set(ledger.done),
        failed=dict(ledger.failed),
        corrupt=dict(ledger.corrupt),
        resumable=[p for p in resumable if p not in orphans],
        orphans=orphans,
        not_learned=_not_learned(table, labels),
        stopped=_stopped(table, labels),
        code_versions=table_code_versions(table),
    )


def load(results: PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, epochs): one row per finished cell with every column of every result file,
    and one row per cell and epoch; typed, and with every column even for a sweep with no
    finished cell yet. docs/results.md describes the columns."""
    from runner.results.frames import load_frames

    ResultsStore(results).check_readable_folder()
    return load_frames(results)


def overview(
    results: PathLike, keys: set[str] | None = None, include_stopped: bool = False
) -> pd.DataFrame:
    """One row per configuration (dataset, method and batch setting with its variant, depth)
    of the folder's finished cells (only `keys`, if given): seeds, mean and standard
    deviation of test accuracy and seconds per epoch, and the worst learning flag."""
    import pandas as pd

    from runner.report.configs import summarise

    rows = ResultsStore(results).finished_rows()
    if keys is not None:
        rows = [r for r in rows if r["cell_key"] in keys]
    return summarise(pd.DataFrame(rows), include_stopped) if rows else pd.DataFrame()


def report(
    results: PathLike,
    out: PathLike | None = None,
    compare_paper: bool = False,
    include_stopped: bool = False,
) -> Report:
    """Write the report of a results folder into `out` (default RESULTS/report): cells and
    epochs as Parquet, the paper's tables and figures, and a page; with `compare_paper`, the
    published numbers beside ours. Cells that stopped early (diverged, or by a time budget)
    are flagged and left out of the means unless `include_stopped`."""
    from runner.report.build import build_report

    return build_report(
        Path(results), None if out is None else Path(out), compare_paper, include_stopped
    )


def export(
    results: PathLike,
    to: Literal["mlflow", "tensorboard"],
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    out: PathLike | None = None,
) -> ExportSummary:
    """Export a results folder to MLflow (one parent run per job, one child run per cell;
    default store: sqlite in RESULTS/mlflow) or to TensorBoard event files (default
    RESULTS/tensorboard). Re-exporting adds new cells only. Needs the `mlflow` or
    `tensorboard` extra."""
    if to == "mlflow":
        if out is not None:
            raise CpusweepError("--out is for --to tensorboard; MLflow takes --tracking-uri URI")
        from runner.export.mlflow_runs import export_mlflow

        return export_mlflow(results, tracking_uri, experiment)
    if to == "tensorboard":
        if tracking_uri is not None or experiment is not None:
            raise CpusweepError(
                "--tracking-uri and --experiment are for --to mlflow; TensorBoard takes --out DIR"
            )
        from runner.export.tensorboard_runs import export_tensorboard

        return export_tensorboard(results, out)
    raise CpusweepError(f"unknown export target {to!r}: use 'mlflow' or 'tensorboard'")
