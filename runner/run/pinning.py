"""Optional core pinning: each running cell (all its threads) on cores of its own.

Ray's num_cpus is admission control only: a 1-CPU cell's threads may run on any core, and
share one with another cell's. With `[resources] pin_cores = true`, a cell claims
ceil(cpus_per_cell) cores of its node for its whole run and pins every thread of its process to
them; afterwards every thread gets the process's original affinity back (Ray reuses worker
processes, and an affinity mask would otherwise outlive the cell).

Cores are claimed with one lock file per core in the node's temporary folder (flock: released
by the kernel if the process dies), among the cores the process may use. When every core is
taken (more cells than cores on a node), the cell runs unpinned and says so in its row.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

log = logging.getLogger("cpusweep")

LOCK_DIR_ENV = "CPUSWEEP_CORE_LOCKS"  # where the per-core lock files live (tests, odd hosts)


def _lock_dir() -> Path:
    path = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "cpusweep-cores")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _thread_ids() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


def set_process_affinity(cores: set[int]) -> None:
    """Pin every thread of this process (sched_setaffinity(0) pins only the calling one)."""
    for tid in _thread_ids():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(tid, cores)


@contextlib.contextmanager
def pinned_cores(count: int) -> Iterator[list[int]]:
    """Claim `count` free cores and pin this process's threads to them for the duration;
    yields the cores (empty when pinning was not possible)."""
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/self/task").is_dir():
        log.warning("core pinning needs Linux; this cell runs unpinned")
        yield []
        return
    original = os.sched_getaffinity(0)
    held: list[tuple[int, IO[str]]] = []
    try:
        for core in sorted(original):
            if len(held) == count:
                break
            handle = open(_lock_dir() / f"core{core}.lock", "w")  # noqa: SIM115 - held below
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((core, handle))
        if len(held) < count:
            log.warning("no %d free core(s) to pin this cell to; it runs unpinned", count)
            yield []
            return
        cores = [core for core, _ in held]
        set_process_affinity(set(cores))
        try:
            yield cores
        finally:
            set_process_affinity(original)
    finally:
        for _, lock in held:
            lock.close()  # closing releases the flock
