"""`verify`: re-run finished cells of a results folder from the content their rows record and
compare what they produce with the rows, bit for bit (weights digest, metrics, every epoch's
non-timing values). Nothing is written into the folder: no rows, no failure records, no
checkpoints. Progress goes to the caller's `on_event`; nothing is printed.

A row's `cell_json` is the cell as its worker received it; the cell runs again through the
very function a sweep runs it with (`run_cell`), in this process or on Ray (the same executor
code as `submit`: loopback only, the same threads and pinning). A row stopped by a wall-clock
budget (`stop_reason` "time_budget": not part of the cell's content) is re-run to the epoch
it reached, since the trainer's epochs do not depend on how many there are in all.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from runner.api.events import CellStarted, SweepWarning, Tick
from runner.errors import CpusweepError, ResultsError
from runner.job.cells import Cell
from runner.results.compare import Difference, differences, parameter_differences
from runner.results.stops import TIME_BUDGET
from runner.results.store import ResultsStore
from runner.run.executors import Executor

log = logging.getLogger("cpusweep")

PathLike = str | os.PathLike[str]

# Which code made a row (runner/run/provenance.py): a mismatch may come from a change there.
CODE_FIELDS = ("trainer_sha256", "method_sha256", "git_commit")
# Where it ran: torch picks its kernels by CPU, so another CPU or torch may change float bits.
ENVIRONMENT_FIELDS = ("cpu_model", "torch_version")


@dataclass(frozen=True)
class CellCheck:
    """One re-run cell against its row. `matches` iff it ran and reproduced every value."""

    key: str
    label: str
    differences: tuple[Difference, ...] = ()
    failure: str | None = None  # why the cell could not be re-run, or how its re-run failed
    epochs_capped: int | None = None  # stopped by a time budget: re-run to this epoch
    code_notes: tuple[str, ...] = ()  # how the row's code differs from the re-run's
    # How the row's machine differs (CPU model, torch): floats may then differ in their last bits
    environment_notes: tuple[str, ...] = ()
    seconds: float = 0.0  # the re-run's wall time

    @property
    def matches(self) -> bool:
        return self.failure is None and not self.differences


@dataclass(frozen=True)
class VerifyPlanned:
    """The folder's finished cells and the ones chosen to re-run (`chosen`: key -> label)."""

    results: Path
    finished: int
    chosen: dict[str, str]
    sample: int | None
    seed: int


@dataclass(frozen=True)
class VerifyStarted:
    """The executor is up; `cells` will re-run on `slots` parallel slots."""

    executor: str
    slots: int
    cells: int


@dataclass(frozen=True)
class CellVerified:
    """A chosen cell was re-run (or could not be) and compared with its row."""

    check: CellCheck


VerifyEvent = SweepWarning | VerifyPlanned | VerifyStarted | CellStarted | CellVerified | Tick


@dataclass
class VerifyReport:
    """What `verify` found. `exit_code` is the command line's: 0 every chosen cell matches,
    1 some did not (or could not be re-run), 130 interrupted."""

    results: Path
    finished: int  # readable finished cells in the folder
    chosen: list[str]  # keys of the cells chosen to re-run
    sample: int | None
    seed: int
    checks: list[CellCheck] = field(default_factory=list)  # in the order of `chosen`
    executor: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def mismatched(self) -> list[CellCheck]:
        return [c for c in self.checks if not c.matches]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.mismatched else 0


def choose_cells(keys: Sequence[str], sample: int | None, seed: int) -> list[str]:
    """`sample` of the keys (all when None or at least as many), drawn with a generator
    seeded by `seed`: the same keys and seed always choose the same cells. Sorted."""
    ordered = sorted(keys)
    if sample is None or sample >= len(ordered):
        return ordered
    if sample < 1:
        raise ValueError(f"sample must be at least 1, not {sample}")
    return sorted(random.Random(seed).sample(ordered, sample))


def _code_notes(recorded: Mapping[str, Any], rerun: Mapping[str, Any], method: str) -> list[str]:
    """How the code that made the row differs from the code that re-ran it."""
    old = {name: recorded.get(name) for name in CODE_FIELDS}
    if all(v is None for v in old.values()):
        return ["the row does not record its code (written before provenance columns)"]
    notes = []
    if old["trainer_sha256"] != rerun.get("trainer_sha256"):
        notes.append("the trainer's code differs")
    if old["method_sha256"] != rerun.get("method_sha256"):
        notes.append(f"{method}'s code differs")
    if old["git_commit"] != rerun.get("git_commit"):
        commits = [
            str(c)[:10] if c else "unknown" for c in (old["git_commit"], rerun.get("git_commit"))
        ]
        notes.append(f"recorded at commit {commits[0]}, re-run at {commits[1]}")
    return notes


def _environment_notes(recorded: Mapping[str, Any], rerun: Mapping[str, Any]) -> list[str]:
    """Where the row ran differently from the re-run (both known)."""
    notes = []
    for name in ENVIRONMENT_FIELDS:
        old, new = recorded.get(name), rerun.get(name)
        if old is not None and new is not None and old != new:
            notes.append(f"{name} {old!r} recorded, {new!r} re-ran")
    return notes


def _normalised(row: dict[str, Any]) -> dict[str, Any]:
    """A re-run's row as its result file would hold it (the same types as a stored row)."""
    from runner.results.schema import row_to_table

    try:
        normalised: dict[str, Any] = row_to_table(row).to_pylist()[0]
        return normalised
    except ValueError:  # a row this code's schema does not know: compare it as it is
        return row


# --- running ------------------------------------------------------------------------------


@dataclass
class _Job:
    """A chosen row, ready to re-run (or why it cannot be)."""

    key: str
    label: str
    recorded: dict[str, Any]
    cell: Cell | None = None
    payload: dict[str, Any] | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)
    pre: list[Difference] = field(default_factory=list)  # found before running
    capped: int | None = None


def _prepare(key: str, recorded: dict[str, Any], labels: Mapping[str, str]) -> _Job:
    text = recorded.get("cell_json")
    job = _Job(key, labels.get(key, key), recorded)
    if not text:
        job.problem = "cannot re-run: the row records no cell content (cell_json)"
        return job
    try:
        content = json.loads(text)
        cell = Cell.from_payload({k: v for k, v in content.items() if k != "key"})
        # An unknown method or dataset fails here.
        computed, label = cell.key, labels.get(key) or cell.label()
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        job.problem = f"cannot re-run: the row's cell_json is not a cell of this code ({exc!r})"
        return job
    job.cell, job.label = cell, label
    if content.get("key") != key:
        job.pre.append(Difference("cell_json key", key, content.get("key")))
    if computed != content.get("key"):
        job.notes.append(f"this code gives the cell another key ({computed}): a version changed")
    job.pre += parameter_differences(recorded, cell)
    values = dict(cell.values)
    if recorded.get("stop_reason") == TIME_BUDGET and recorded.get("epochs_done") is not None:
        job.capped = int(recorded["epochs_done"])
        values["epochs"] = min(int(values["epochs"]), job.capped)
    job.payload = {"values": values, "torch_threads": cell.torch_threads, "shown": []}
    return job


def _check(job: _Job, result: dict[str, Any] | None) -> CellCheck:
    from runner.run.provenance import provenance_columns

    failure, found = job.problem, list(job.pre)
    notes = list(job.notes)
    rerun: dict[str, Any] = {}
    seconds = 0.0
    if result is not None and result.get("status") == "ok":
        rerun = _normalised(dict(result["row"]))
        found += differences(job.recorded, rerun, stop_reason=job.capped is None)
        seconds = float(rerun.get("wall_seconds") or 0.0)
    elif result is not None:
        record = result.get("failure") or {}
        seconds = float(record.get("seconds") or 0.0)
        message = str(record.get("message", "")).strip().splitlines()
        failure = f"{record.get('error_class', 'unknown')}: " + (
            message[0] if message else str(record.get("error_type", ""))
        )
    if job.cell is not None:
        if not rerun:  # failed: the code here is what would have re-run it
            rerun = provenance_columns(job.cell.method)
        notes += _code_notes(job.recorded, rerun, job.cell.method)
    return CellCheck(
        key=job.key,
        label=job.label,
        differences=tuple(found),
        failure=failure,
        epochs_capped=job.capped,
        code_notes=tuple(notes),
        environment_notes=tuple(_environment_notes(job.recorded, rerun)),
        seconds=seconds,
    )


def _labels(store: ResultsStore) -> dict[str, str]:
    """Labels of the folder's job's cells (with its shown axes), where its job file expands."""
    from runner.job.grid import expand
    from runner.job.spec import parse_spec

    try:
        text = store.job_text()
        if text is None:
            return {}
        return {c.key: c.label() for c in expand(parse_spec(text, "job.toml")).cells}
    except CpusweepError:
        return {}


def verify(
    results: PathLike,
    sample: int | None = None,
    seed: int = 0,
    executor: Literal["ray", "serial"] = "ray",
    cpus: int | None = None,
    address: str | None = None,
    data_root: PathLike | None = None,
    on_event: Callable[[VerifyEvent], None] | None = None,
) -> VerifyReport:
    """Re-run `sample` finished cells of `results` (default: all), chosen with a generator
    seeded by `seed`, from the content their rows record, and compare each re-run with its
    row bit for bit. On a local Ray with `cpus` CPUs (default: all), the Ray cluster at
    `address`, or in this process (`executor="serial"`); datasets from `data_root` (default:
    $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data). Writes nothing into the folder.

    Raises `CpusweepError` (not a results folder, no finished cell, missing data, Ray
    unreachable) before any cell runs. Ctrl-C stops it: the report says `interrupted`."""
    if executor not in ("ray", "serial"):
        raise ValueError(f"executor must be 'ray' or 'serial', not {executor!r}")
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be at least 1, not {sample}")
    from runner.run.sweep import interrupt_handling

    emit = on_event or (lambda event: None)
    with interrupt_handling():  # covers Ray's start-up and shut-down too
        return _verify(Path(results), sample, seed, executor, cpus, address, data_root, emit)


def _verify(
    root: Path,
    sample: int | None,
    seed: int,
    executor_name: str,
    cpus: int | None,
    address: str | None,
    data_root: PathLike | None,
    emit: Callable[[VerifyEvent], None],
) -> VerifyReport:
    from runner.datasets.loading import ensure_available
    from runner.datasets.locations import downloads_allowed, resolve_data_root

    store = ResultsStore(root)
    store.check_readable_folder()
    tables, unreadable = store.read_tables()
    warnings = [f"unreadable result file {p} skipped: {why}" for p, why in unreadable.items()]
    for message in warnings:
        emit(SweepWarning(message))
    if not tables:
        raise ResultsError(
            f"{root} has no finished cells to verify"
            + (f" ({len(unreadable)} unreadable result file(s))" if unreadable else "")
            + f"; `python -m runner status {root}` shows what it holds"
        )
    rows = {path.stem: table.to_pylist()[0] for path, table in tables.items()}
    chosen = choose_cells(list(rows), sample, seed)
    labels = _labels(store)
    jobs = [_prepare(key, rows[key], labels) for key in chosen]
    report = VerifyReport(root, len(rows), chosen, sample, seed, warnings=warnings)
    emit(VerifyPlanned(root, len(rows), {j.key: j.label for j in jobs}, sample, seed))

    runnable = [j for j in jobs if j.payload is not None]
    # Every dataset before anything runs: a missing file should cost seconds.
    data = resolve_data_root(data_root)
    download = downloads_allowed()
    for name in sorted({j.cell.dataset for j in runnable if j.cell is not None}):
        ensure_available(name, data, download)

    start = time.perf_counter()
    checks = {j.key: _check(j, None) for j in jobs if j.payload is None}
    for check in checks.values():
        emit(CellVerified(check))
    if runnable:
        given_root = str(data) if data_root is not None else None
        runner = _executor(store, runnable, executor_name, cpus, address, given_root, download)
        try:
            report.executor = runner.describe()
            report.interrupted = _rerun(runnable, runner, emit, checks)
        finally:
            runner.close()
    report.checks = [checks[k] for k in chosen if k in checks]
    report.seconds = time.perf_counter() - start
    return report


def _executor(
    store: ResultsStore,
    jobs: list[_Job],
    name: str,
    cpus: int | None,
    address: str | None,
    data_root: str | None,
    download: bool,
) -> Executor:
    """The executor `submit` would use for the folder's job (its resources and pinning;
    defaults where the job file does not expand), without checkpoints."""
    from dataclasses import replace

    from runner.job.spec import Resources, parse_spec
    from runner.run.executors import RayExecutor, SerialExecutor

    threads = max(j.cell.torch_threads for j in jobs if j.cell is not None)
    resources = Resources(torch_threads=threads)
    try:
        text = store.job_text()
        if text is not None:
            resources = parse_spec(text, str(store.root / "job.toml")).resources
    except CpusweepError:
        pass
    # A time budget is the machine's, not the cell's: a re-run runs to its epoch instead.
    resources = replace(resources, max_cell_minutes=None)
    pin = math.ceil(resources.cpus_per_cell) if resources.pin_cores else 0
    if name == "serial":
        return SerialExecutor(data_root, download, resources.torch_threads, None, pin_cores=pin)
    return RayExecutor(resources, address, cpus, data_root, download, None, pin_cores=pin)


def _rerun(
    jobs: list[_Job],
    runner: Executor,
    emit: Callable[[VerifyEvent], None],
    checks: dict[str, CellCheck],
) -> bool:
    """Re-run the jobs, a bounded number in flight, comparing each as it comes back (into
    `checks`); True when interrupted (the cells in flight are cancelled)."""
    from runner.run.sweep import interrupt_handling

    emit(VerifyStarted(runner.describe(), runner.slots, len(jobs)))
    queue = list(reversed(jobs))  # pop() from the end keeps the chosen order
    in_flight: dict[Any, _Job] = {}
    limit = 2 * runner.slots
    with interrupt_handling():
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    job = queue.pop()
                    assert job.payload is not None and job.cell is not None
                    in_flight[runner.submit(job.payload)] = job
                    emit(CellStarted(job.cell))
                for handle, result in runner.wait(list(in_flight), timeout=0.5):
                    job = in_flight.pop(handle)
                    for warning in result.get("warnings", ()):
                        log.warning("%s [%s]: %s", job.label, job.key, warning)
                    check = _check(job, result)
                    checks[job.key] = check
                    emit(CellVerified(check))
                running = min(len(in_flight), runner.slots)
                emit(Tick(running, len(in_flight) - running + len(queue)))
        except KeyboardInterrupt:
            runner.cancel(list(in_flight))
            return True
    return False
