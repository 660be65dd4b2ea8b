"""The results folder: the ledger of what is done, written by one process, atomically.

    DIR/job.toml             the job file of the latest submit (a copy)
    DIR/jobs/<sha>.toml      every distinct job file ever submitted here (provenance)
    DIR/cells/<key>.parquet  one finished cell, one row: a cell is done iff this file exists
    DIR/failed/<key>.json    the latest failure of a cell that is not done
    DIR/quarantine/          unreadable result files moved aside (never deleted)
    DIR/.lock                held by the submit that is running
    DIR/report/              written by `runner report`

Every file is written to a temporary name in the same folder, flushed to disk, then renamed:
a crash leaves either the old state or the new one, never half a file. Only the driver
writes here; workers send their rows back to it.

A result file counts as done only if it reads back whole: a Parquet file (each page with its
CRC) of exactly one row, about the cell its name says, whose content matches the sha256 stored
in it when it was written. A truncated, damaged or misplaced file is reported, never counted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from runner.errors import ResultsError
from runner.results.schema import row_to_table

log = logging.getLogger("cpusweep")

_PARQUET_MAGIC = b"PAR1"
_DIGEST_KEY = b"cpusweep.row_sha256"
# Temporary files are named so that tidy() can never mistake a user's file for one of ours
# (results may be written into a folder that holds other things).
TEMP_SUFFIX = ".cpusweep-tmp"
_WRITE_TEST_PREFIX = ".cpusweep-write-test."


@dataclass
class Ledger:
    """What the results folder says about cells, by key."""

    done: set[str] = field(default_factory=set)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    corrupt: dict[Path, str] = field(default_factory=dict)  # unreadable result file -> why


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem allows it; rename is still atomic
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _explain_os_error(exc: OSError, path: Path) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"the disk holding {path} is full ({exc.strerror}); free space and re-run the same "
            "command: every finished cell is kept"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path} is not writable ({exc.strerror}); fix its permissions or pick --results"
    return f"cannot write {path}: {exc}"


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(file) on a temporary file beside `path`, fsync, then rename it into place:
    `path` is the old content or the new, whole, never a mix. Errors propagate as raised."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """atomic_write of `data`, an OSError told as a ResultsError that says what to do."""
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as exc:
        raise ResultsError(_explain_os_error(exc, path)) from None


def looks_like_parquet(path: Path) -> bool:
    """Cheap first check: size, and the magic bytes at both ends."""
    try:
        size = path.stat().st_size
        if size < 12:
            return False
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(-4, os.SEEK_END)
            tail = f.read(4)
        return head == _PARQUET_MAGIC and tail == _PARQUET_MAGIC
    except OSError:
        return False


def _content_digest(table: pa.Table) -> str:
    """sha256 of a table's column names and values (JSON tells 1 from 1.0), independent of
    how Parquet stored them."""
    text = json.dumps(table.to_pylist(), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class UnreadableResult(Exception):
    """A result file that cannot count as its cell's result; the message says why."""


def read_result(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A result file's row, checked whole (see the module docstring), or UnreadableResult.

    Files written before rows carried a digest are checked for everything else."""
    if not looks_like_parquet(path):
        raise UnreadableResult("not a Parquet file: truncated, or something else")
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        stored = (table.schema.metadata or {}).get(_DIGEST_KEY)
        digest = _content_digest(table) if stored is not None else None
    except Exception as exc:  # whatever a damaged file makes the reader raise
        raise UnreadableResult(f"damaged: {type(exc).__name__}: {exc}") from None
    if stored is not None and stored.decode("ascii", "replace") != digest:
        raise UnreadableResult("damaged: its content does not match the digest stored in it")
    if table.num_rows != 1:
        raise UnreadableResult(f"{table.num_rows} rows where one cell's result has one")
    keys = table.column("cell_key").to_pylist() if "cell_key" in table.column_names else [None]
    if keys != [path.stem]:
        raise UnreadableResult(f"it holds the result of another cell ({keys[0]})")
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    return table


class ResultsStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.failed_dir = self.root / "failed"
        # Result files found whole already, by name -> (inode, size, mtime): each file is read
        # in full once per process, however often the folder is scanned.
        self._checked: dict[str, tuple[int, int, int]] = {}

    # --- set-up -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folders and prove they are writable, before any cell runs."""
        for folder in (self.root, *self.root.parents):
            if folder.exists() and not folder.is_dir():
                raise ResultsError(
                    f"{folder} is a file, so {self.root} cannot be a results folder; "
                    "pick another --results"
                )
            if folder.exists():
                break
        try:
            for folder in (self.root, self.cells_dir, self.failed_dir, self.root / "jobs"):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{_WRITE_TEST_PREFIX}{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise ResultsError(_explain_os_error(exc, self.root)) from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the folder by one submit. Released by the OS if the process dies."""
        path = self.root / ".lock"
        handle = open(path, "a+")  # noqa: SIM115 - held for the whole context
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ResultsError(
                    f"{self.root} is in use by another submit ({holder}). Wait for it to "
                    "finish, or stop it (Ctrl-C) and re-run; two sweeps never share a folder."
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
            )
            handle.flush()
            yield
        finally:
            handle.close()

    def save_job(self, text: str) -> None:
        data = text.encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()[:12]
        atomic_write_bytes(self.root / "jobs" / f"{digest}.toml", data)
        atomic_write_bytes(self.root / "job.toml", data)

    def job_text(self) -> str | None:
        """The job file of the latest submit, None if there is none; ResultsError if it
        cannot be read as text."""
        path = self.root / "job.toml"
        if not path.is_file():
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise ResultsError(
                f"{path} cannot be read as the job file ({exc}); it is a copy of the job file "
                "the sweep was submitted with: submit that file again to replace it"
            ) from None

    def check_readable_folder(self) -> None:
        """ResultsError unless the root is a results folder (for commands that only read)."""
        if not self.root.exists():
            raise ResultsError(f"{self.root} is not a results folder (it does not exist)")
        if not self.root.is_dir():
            raise ResultsError(f"{self.root} is a file, not a results folder")
        markers = ("job.toml", "cells", "failed", "checkpoints")
        if not any((self.root / m).exists() for m in markers):
            raise ResultsError(
                f"{self.root} is not a results folder: it holds none of job.toml, cells/, "
                "failed/ (submit writes to results/<job name> unless --results says otherwise)"
            )

    # --- the ledger ---------------------------------------------------------------------------

    def result_path(self, key: str) -> Path:
        return self.cells_dir / f"{key}.parquet"

    def failure_path(self, key: str) -> Path:
        return self.failed_dir / f"{key}.json"

    def _read(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        """read_result(), remembering the files found whole (see _check)."""
        try:
            stat = path.stat()
        except OSError as exc:
            raise UnreadableResult(f"cannot be read: {exc.strerror}") from None
        table = read_result(path, columns)
        self._checked[path.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return table

    def _check(self, path: Path) -> str | None:
        """Why a result file does not count, or None when it is whole."""
        try:
            stat = path.stat()
        except OSError as exc:
            return f"cannot be read: {exc.strerror}"
        if self._checked.get(path.name) == (stat.st_ino, stat.st_size, stat.st_mtime_ns):
            return None
        try:
            self._read(path, columns=["cell_key"])
        except UnreadableResult as exc:
            return str(exc)
        return None

    def scan(self) -> Ledger:
        ledger = Ledger()
        if self.cells_dir.is_dir():
            for path in sorted(self.cells_dir.glob("*.parquet")):
                problem = self._check(path)
                if problem is None:
                    ledger.done.add(path.stem)
                else:
                    ledger.corrupt[path] = problem
        if self.failed_dir.is_dir():
            for path in self.failed_dir.glob("*.json"):
                if path.stem in ledger.done:
                    continue
                try:
                    ledger.failed[path.stem] = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    ledger.failed[path.stem] = {
                        "error_class": "unknown",
                        "message": f"unreadable failure record {path}",
                    }
        return ledger

    def quarantine(self, paths: Iterable[Path]) -> list[Path]:
        """Move unreadable result files aside (the cells then count as not done)."""
        moved = []
        target_dir = self.root / "quarantine"
        try:
            target_dir.mkdir(exist_ok=True)
            for path in paths:
                target = target_dir / f"{path.name}.{time.time_ns()}"
                os.replace(path, target)
                moved.append(target)
        except OSError as exc:
            raise ResultsError(_explain_os_error(exc, target_dir)) from None
        return moved

    def tidy(self, ledger: Ledger) -> list[Path]:
        """Remove what a driver killed mid-write leaves behind (call with the lock held): its
        temporary files, and failure records of cells that are done. Returns what went."""
        stale: list[Path] = []
        for folder in (self.root, self.cells_dir, self.failed_dir, self.root / "jobs"):
            if folder.is_dir():
                stale += [p for p in folder.glob(".*") if p.name.endswith(TEMP_SUFFIX)]
                stale += folder.glob(_WRITE_TEST_PREFIX + "*")
        stale += [self.failure_path(key) for key in ledger.done if self.failure_path(key).exists()]
        removed = []
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
        return removed

    def write_result(self, row: dict[str, Any]) -> Path:
        key = str(row["cell_key"])
        table = row_to_table(row)
        metadata = dict(table.schema.metadata or {})
        metadata[_DIGEST_KEY] = _content_digest(table).encode("ascii")
        buffer = pa.BufferOutputStream()
        pq.write_table(
            table.replace_schema_metadata(metadata),
            buffer,
            compression="zstd",
            write_page_checksum=True,
            # Min/max of a one-row file only repeat its values, and neither the page CRCs
            # nor the digest cover them: with every column in every file they were a fifth
            # of the column data, where a damaged byte went unnoticed. Without them, nearly
            # every byte of the column data is checked.
            write_statistics=False,
        )
        path = self.result_path(key)
        atomic_write_bytes(path, buffer.getvalue().to_pybytes())
        with contextlib.suppress(OSError):  # this process wrote it whole: no need to re-read it
            stat = path.stat()
            self._checked[path.name] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with contextlib.suppress(FileNotFoundError):
            self.failure_path(key).unlink()
        return path

    def write_failure(self, record: dict[str, Any]) -> Path:
        path = self.failure_path(str(record["cell_key"]))
        data = json.dumps(record, indent=2, sort_keys=True, default=str).encode("utf-8")
        atomic_write_bytes(path, data)
        return path

    # --- reading ------------------------------------------------------------------------------

    def finished_rows(
        self, exclude: tuple[str, ...] = ("history", "confusion_matrix")
    ) -> list[dict[str, Any]]:
        """Every readable finished cell's row as a dict, without the bulky `exclude` columns."""
        rows: list[dict[str, Any]] = []
        for path in sorted(self.cells_dir.glob("*.parquet")) if self.cells_dir.is_dir() else []:
            try:
                schema = pq.read_schema(path)
                present = [c for c in schema.names if c not in exclude]
                rows.extend(pq.read_table(path, columns=present).to_pylist())
            except (OSError, pa.ArrowException):
                continue  # unreadable: scan() reports it
        return rows

    def read_tables(self) -> tuple[dict[Path, pa.Table], dict[Path, str]]:
        """Every finished cell's one-row table as its file holds it (by file, in name order,
        without the file's metadata), and why each unreadable result file does not count."""
        tables: dict[Path, pa.Table] = {}
        unreadable: dict[Path, str] = {}
        for path in sorted(self.cells_dir.glob("*.parquet")) if self.cells_dir.is_dir() else []:
            try:
                tables[path] = self._read(path).replace_schema_metadata(None)
            except UnreadableResult as exc:
                unreadable[path] = str(exc)
        return tables, unreadable

    def read_results(self) -> tuple[pa.Table | None, list[Path]]:
        """Every finished cell as one table, and the files that could not be read."""
        tables, unreadable = self.read_tables()
        if not tables:
            return None, list(unreadable)
        return pa.concat_tables(list(tables.values()), promote_options="permissive"), list(
            unreadable
        )
