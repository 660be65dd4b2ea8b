"""File helpers shared by the dataset readers and the prepared-array cache.

Locks between processes on one node, content digests, and writing a file so that it either
appears whole or not at all (temporary file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from runner.errors import DatasetError

log = logging.getLogger("cpusweep")

_CHUNK = 1 << 20


def digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (files here reach hundreds of MB)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


@contextlib.contextmanager
def file_lock(path: Path, waiting_message: str = "") -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the block.

    Logs `waiting_message` once if another process holds the lock, then waits for it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                log.info(waiting_message)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def fetch_lock(root: Path, name: str) -> Iterator[None]:
    """Serialise fetching one dataset's official files into `root` between processes."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(
                file_lock(root / f".{name}.lock", f"waiting for another process fetching {name}")
            )
        except OSError as exc:
            raise DatasetError(
                f"dataset {name!r}: files are missing and cannot be fetched into the data "
                f"root {root} ({exc}). Use a writable --data-root, or put the files there."
            ) from None
        yield


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_maybe_gzip(path: Path) -> BinaryIO:
    """Open a file for reading, decompressing on the fly when its name ends in .gz."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def decompress_atomically(source: Path, target: Path) -> None:
    """Write the gunzipped `source` to `target`: all of it, or nothing (never half a file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(source, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"could not decompress {source} into {target} ({type(exc).__name__}: {exc}); "
            "the .gz file may be truncated or corrupt: delete it and fetch it again"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_unwritable(exc: OSError) -> bool:
    """A data root we may read but not write (read-only mount, permissions, full disk)."""
    return exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover - the loop always returns
