"""`submit`: run a job's cells that are not done yet into its results folder (the resume).

The orchestration the command line's `submit` verb used to hold: results folder, lock, tidy
what an interrupted submit left, plan, data checks, executor, the sweep loop. Progress goes
to the caller's `on_event` (runner/api/events.py); nothing is printed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.api.events import EventCallback, EventListener, SweepPlanned, SweepWarning, ignore
from runner.api.jobs import JobLike, Only, cells_of, load_job, results_folder
from runner.job.cells import Cell
from runner.job.spec import JobSpec
from runner.results.stops import TIME_BUDGET, stop_reason
from runner.results.store import TEMP_SUFFIX, Ledger, ResultsStore
from runner.run.estimate import Estimator, longest_first
from runner.run.sweep import SweepPlan, interrupt_handling, make_plan

log = logging.getLogger("cpusweep")


@dataclass
class SweepResult:
    """What a submit did. `exit_code` is the command line's: 0 all good, 1 cells of the job
    failed (now or before), 130 interrupted (every finished cell is saved; submit again to
    resume)."""

    job: JobSpec
    results: Path
    plan: SweepPlan
    finished: list[str] = field(default_factory=list)  # cell keys finished by this submit
    failed: list[str] = field(default_factory=list)  # cell keys failed in this submit
    failed_in_job: int = 0  # the job's cells with a failure record now, from any submit
    not_learned: list[str] = field(default_factory=list)  # finished, at chance or diverged
    interrupted: bool = False
    stopped: int = 0  # cells running or queued when interrupted: they run again next time
    seconds: float = 0.0
    executor: str = ""  # what ran the cells; "" when there was nothing to run
    warnings: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return bool(self.plan.todo)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed_in_job else 0


def _tidy(store: ResultsStore, ledger: Ledger) -> None:
    """Clear what an earlier submit killed mid-write left: temporary files, and failure
    records and checkpoints of cells whose result was stored just before it died."""
    from runner.run.checkpoint import checkpoints_dir, discard_checkpoint

    removed = store.tidy(ledger)
    folder = checkpoints_dir(store.root)
    stale = [p.stem for p in folder.glob("*.pt") if p.stem in ledger.done]
    removed += [folder / f"{key}.pt" for key in stale if discard_checkpoint(store.root, key)]
    # No cell runs yet: a cell's temporary file is stale.
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    for path in removed:
        log.info("removed %s, left by an interrupted submit", path)


def submit(
    job: JobLike,
    results: str | os.PathLike[str] | None = None,
    *,
    executor: Literal["ray", "serial"] = "ray",
    cpus: int | None = None,
    address: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
    rerun_stopped: bool = False,
    only: Only | None = None,
    overrides: Mapping[str, Any] | None = None,
    on_event: EventCallback | None = None,
) -> SweepResult:
    """Run the job's cells that are not done in `results` (default results/<job name>):
    on a local Ray with `cpus` CPUs (default: all) or the Ray cluster at `address` (default:
    $RAY_ADDRESS, else a local one), or in this process (`executor="serial"`). Cells that
    failed before run again only with `retry_failed`, cells a time budget stopped only with
    `rerun_stopped` (from scratch, under the job's budget now). `only` runs part of the job
    and `overrides` sets parameters for this run, as new cells (runner/job/select.py), e.g.
    `only={"method": ["standard"]}, overrides={"epochs": 1}`. Datasets come from `data_root`
    (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data) and are all checked before
    anything starts.

    Ctrl-C (or SIGTERM) stops the sweep: running cells keep their checkpoints and the result
    says `interrupted`; calling submit again resumes. Raises `CpusweepError` (a bad job,
    missing data, an unusable folder, Ray unreachable) before any cell runs."""
    if executor not in ("ray", "serial"):
        raise ValueError(f"executor must be 'ray' or 'serial', not {executor!r}")
    emit = on_event or ignore
    with interrupt_handling():  # covers Ray's start-up and shut-down too
        spec = load_job(job)
        cells, warnings = cells_of(spec, only, overrides)
        return _submit(
            spec,
            cells,
            warnings,
            results,
            executor,
            cpus,
            address,
            data_root,
            retry_failed,
            rerun_stopped,
            emit,
        )


def _submit(
    spec: JobSpec,
    cells: list[Cell],
    expansion_warnings: list[str],
    results: str | os.PathLike[str] | None,
    executor_name: str,
    cpus: int | None,
    address: str | None,
    data_root: str | os.PathLike[str] | None,
    retry_failed: bool,
    rerun_stopped: bool,
    emit: EventCallback,
) -> SweepResult:
    from runner.datasets.loading import ensure_available
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.run.checkpoint import prepare_checkpoints
    from runner.run.executors import Executor, RayExecutor, SerialExecutor
    from runner.run.sweep import run_sweep

    store = ResultsStore(results_folder(spec, results))
    store.prepare()
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        emit(SweepWarning(message))

    with store.lock():
        ledger = store.scan()
        _tidy(store, ledger)
        if ledger.corrupt:
            moved = store.quarantine(ledger.corrupt)
            for (path, problem), target in zip(ledger.corrupt.items(), moved, strict=True):
                warn(
                    f"{path} is unreadable ({problem}): moved to {target}; that cell will run again"
                )
        for warning in expansion_warnings:
            warn(warning)
        ledger = store.scan()
        if rerun_stopped:  # their rows stay until the new ones replace them
            ledger.done -= {
                r["cell_key"] for r in store.finished_rows() if stop_reason(r) == TIME_BUDGET
            }
        plan = make_plan(cells, ledger, retry_failed)
        # Longest cells first (estimated from finished cells where there are some).
        plan.todo = longest_first(plan.todo, Estimator(store.finished_rows()))
        emit(SweepPlanned(spec.name, store.root, plan))
        result = SweepResult(spec, store.root, plan, warnings=warnings)
        if not plan.todo:
            result.failed_in_job = len(plan.failed)
            return result
        store.save_job(spec.text)

        # Check every dataset before starting anything: a missing file should cost seconds,
        # not a sweep of failed cells.
        root = resolve_data_root(data_root)
        download = downloads_allowed()
        for name in sorted({c.dataset for c in plan.todo}):
            ensure_available(name, root, download)

        given_root = str(root) if data_root is not None else None
        checkpoints = prepare_checkpoints(store.root, spec.resources.checkpoint_every)
        pin = math.ceil(spec.resources.cpus_per_cell) if spec.resources.pin_cores else 0
        runner: Executor
        if executor_name == "serial":
            runner = SerialExecutor(
                given_root,
                download,
                spec.resources.torch_threads,
                checkpoints,
                pin_cores=pin,
                max_cell_minutes=spec.resources.max_cell_minutes,
            )
        else:
            runner = RayExecutor(
                spec.resources, address, cpus, given_root, download, checkpoints, pin_cores=pin
            )
        listener = EventListener(emit)
        try:
            result.executor = runner.describe()
            summary = run_sweep(plan, store, runner, spec.resources.max_in_flight, listener)
        finally:
            runner.close()

    result.finished, result.failed = summary.finished, summary.failed
    result.not_learned = listener.not_learned
    result.interrupted, result.stopped = summary.interrupted, summary.stopped
    result.seconds = summary.seconds
    result.failed_in_job = len(store.scan().failed.keys() & {c.key for c in plan.cells})
    return result
