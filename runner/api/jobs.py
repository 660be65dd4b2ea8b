"""A job and its plan: `load_job` (from a TOML file, TOML text or a Python mapping) and
`plan` (the job's cells against a results folder, with time estimates). Nothing runs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from runner.errors import CpusweepError, SpecError
from runner.job.cells import Cell
from runner.job.grid import expand
from runner.job.select import select
from runner.job.spec import JobSpec, load_spec, parse_spec
from runner.results.store import ResultsStore
from runner.run.estimate import Estimate, Estimator, load_bench, makespan
from runner.run.sweep import SweepPlan, make_plan

JobLike = JobSpec | str | os.PathLike[str] | Mapping[str, Any]


def load_job(job: JobLike, source: str | None = None) -> JobSpec:
    """A validated job from a TOML file's path, or from a mapping with the same tables as a
    job file (`name`, `[grid]`, `[params]`, `[resources]`, ...), which gets the same
    validation and messages (they name `source`, default "<dict>"). A JobSpec passes
    through. Raises `SpecError` listing every problem."""
    if isinstance(job, JobSpec):
        return job
    if isinstance(job, Mapping):
        import tomli_w

        where = source or "<dict>"
        try:  # the job's own TOML text: saved in the results folder like a file's
            text = tomli_w.dumps(dict(job))
        except (TypeError, ValueError) as exc:
            raise SpecError(where, [f"not expressible as a TOML job file: {exc}"]) from None
        return parse_spec(text, where)
    return load_spec(Path(job))


def results_folder(job: JobSpec, results: str | os.PathLike[str] | None) -> Path:
    """Where a job's results go: `results`, else results/<job name> under the current
    folder."""
    return Path(results) if results is not None else Path("results") / job.name


Only = Mapping[str, Sequence[Any] | str]


def cells_of(
    job: JobSpec, only: Only | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[list[Cell], list[str]]:
    """The job's cells (those `only` keeps, with `overrides` set: runner/job/select.py) and
    the expansion's warnings; an empty grid is an error."""
    expansion = expand(job)
    if not expansion.cells:
        raise CpusweepError(
            f"{job.source}: the job has no cells: its [[exclude]] tables drop every "
            "combination of the grid; loosen them (`python -m runner plan` shows the cells)"
        )
    if not only and not overrides:
        return expansion.cells, expansion.warnings
    cells = select(expansion.cells, only, overrides)
    if not cells:
        raise CpusweepError(
            "--only: no cell of the job passes every one of them together "
            "(`python -m runner plan JOB` lists the job's cells)"
        )
    return cells, expansion.warnings


@dataclass
class Plan:
    """What a submit would do now: the job's cells (done, failed, to run), estimates of the
    cells to run, and what the user should know (`warnings`)."""

    job: JobSpec
    results: Path
    sweep: SweepPlan
    estimates: dict[str, Estimate] = field(default_factory=dict)  # by cell key, cells to run
    warnings: list[str] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return self.sweep.cells

    @property
    def todo(self) -> list[Cell]:
        return self.sweep.todo

    def state(self, cell: Cell) -> str:
        """ "done", "failed" or "to run"."""
        if cell.key in self._done_keys:
            return "done"
        return "failed" if cell.key in self._failed_keys else "to run"

    @cached_property
    def _done_keys(self) -> set[str]:
        return {c.key for c in self.sweep.done}

    @cached_property
    def _failed_keys(self) -> set[str]:
        return {c.key for c in self.sweep.failed}

    def counts(self) -> str:
        return self.sweep.counts()

    def by_method(self) -> Counter[str]:
        return Counter(c.method for c in self.todo)

    def slots(self, cpus: int | None = None) -> int:
        cpus = cpus or os.cpu_count() or 1
        return max(1, int(cpus // self.job.resources.cpus_per_cell))

    def cpu_hours(self) -> float:
        """CPU-hours of the cells to run that have an estimate."""
        known = [e.seconds for e in self.estimates.values() if e.seconds is not None]
        return sum(known) * self.job.resources.cpus_per_cell / 3600

    def wall_seconds(self, cpus: int | None = None) -> float:
        """Wall time of the estimated cells on `cpus` CPUs (default: this machine's),
        longest first."""
        known = [e.seconds for e in self.estimates.values() if e.seconds is not None]
        return makespan(known, self.slots(cpus))


def unreadable_warnings(corrupt: Mapping[Path, str]) -> list[str]:
    return [
        f"unreadable result file {path}: {problem} (counted as not done)"
        for path, problem in corrupt.items()
    ]


def plan(
    job: JobLike,
    results: str | os.PathLike[str] | None = None,
    bench: str | os.PathLike[str] | None = None,
    *,
    only: Only | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Plan:
    """The job's cells against its results folder (nothing is created or changed), with an
    estimate of each cell to run from the folder's finished cells or from a `runner bench
    --json` file. `only` and `overrides` select and vary cells as for `submit`."""
    spec = load_job(job)
    cells, warnings = cells_of(spec, only, overrides)
    store = ResultsStore(results_folder(spec, results))
    ledger = store.scan()
    warnings += unreadable_warnings(ledger.corrupt)
    sweep = make_plan(cells, ledger, retry_failed=False)
    estimator = Estimator(store.finished_rows(), load_bench(Path(bench)) if bench else ())
    estimates = {c.key: estimator.estimate(c) for c in sweep.todo}
    return Plan(spec, store.root, sweep, estimates, warnings)
