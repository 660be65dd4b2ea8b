"""Reading a results folder for a report: finished cells (with their histories), failures, the
job file and what it expands to; and Parquet writing. The long-form epochs table is
runner/results/frames.py's `epochs_table`, imported here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from runner.errors import CpusweepError, ResultsError
from runner.job.cells import Cell
from runner.results.frames import epochs_table as epochs_table  # moved there; re-exported
from runner.results.store import ResultsStore, atomic_write_bytes

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


def write_parquet(table: pa.Table, path: Path) -> None:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue().to_pybytes())
