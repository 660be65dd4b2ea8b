"""The driver loop: skip what is done, fan the rest out, store results as they stream in.

Written once for every executor. A bounded number of cells is in flight at a time; each
result is stored the moment it arrives, by this process only, so an interruption at any
point loses at most the cells that were still computing, and re-running the same command
is the resume. A cell's mid-cell checkpoint is deleted here, once its result is stored.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from runner.job.cells import Cell
from runner.results.store import Ledger, ResultsStore
from runner.run.checkpoint import discard_checkpoint
from runner.run.executors import Executor

log = logging.getLogger("cpusweep")


class SweepListener:
    """Hooks for progress (runner.api.events turns them into events). All no-ops here."""

    def started(self, plan: SweepPlan, executor: Executor) -> None: ...

    def cell_started(self, cell: Cell) -> None: ...  # handed to the executor

    def cell_finished(self, cell: Cell, row: dict[str, Any]) -> None: ...

    def cell_failed(self, cell: Cell, failure: dict[str, Any]) -> None: ...

    def tick(self, running: int, queued: int) -> None: ...


@dataclass
class SweepPlan:
    """What a submit will do, decided from the job's cells and the results folder."""

    cells: list[Cell]
    done: list[Cell]
    failed: list[Cell]  # failed before; re-run only with --retry-failed
    todo: list[Cell]

    def counts(self) -> str:
        """E.g. "20 cells: 4 done, 1 failed, 15 to run", as every verb says it."""
        return (
            f"{len(self.cells)} cells: {len(self.done)} done, {len(self.failed)} failed, "
            f"{len(self.todo)} to run"
        )


@dataclass
class SweepSummary:
    plan: SweepPlan
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False
    stopped: int = 0  # cells running or queued when interrupted: left to do, checkpoints kept
    seconds: float = 0.0


def make_plan(cells: Sequence[Cell], ledger: Ledger, retry_failed: bool) -> SweepPlan:
    done = [c for c in cells if c.key in ledger.done]
    failed = [c for c in cells if c.key not in ledger.done and c.key in ledger.failed]
    todo = [
        c
        for c in cells
        if c.key not in ledger.done and (retry_failed or c.key not in ledger.failed)
    ]
    return SweepPlan(cells=list(cells), done=done, failed=failed, todo=todo)


_handling_depth = 0  # nesting of interrupt_handling() contexts
_stopping = False  # an interrupt arrived: later ones are acknowledged, not raised


def _on_signal(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping:
        log.warning("already stopping: cancelling the cells in flight, then saying how to resume")
        return
    _stopping = True
    raise KeyboardInterrupt


@contextmanager
def interrupt_handling(afterwards: Any = None) -> Iterator[None]:
    """Ctrl-C (SIGINT) and `kill` (SIGTERM) stop a sweep alike, by a KeyboardInterrupt; after
    the first, further ones are only acknowledged, so that cancelling the cells in flight,
    shutting Ray down and telling the user how to resume are not cut short. Entering (again)
    installs the handlers, whatever replaced them meanwhile; the outermost context restores
    the previous ones, or installs `afterwards` (a process that is about to exit, with all
    said, passes signal.SIG_IGN: no gap in which a late signal could cut it short)."""
    global _handling_depth, _stopping
    try:
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in saved:
            signal.signal(sig, _on_signal)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    _handling_depth += 1
    try:
        yield
    finally:
        _handling_depth -= 1
        # Only the outermost context restores; an inner one re-installs this handling, since
        # Ray's start-up inside it may have replaced it (with a SIGTERM handler that kills
        # every Ray process and exits 1, summary unsaid). `python -m runner` holds the
        # outermost one around the whole command, summary included (cli.main.process_main).
        for sig, handler in saved.items():
            if _handling_depth > 0:
                signal.signal(sig, _on_signal)
            else:
                signal.signal(sig, handler if afterwards is None else afterwards)
        if _handling_depth == 0:
            _stopping = False


def run_sweep(
    plan: SweepPlan,
    store: ResultsStore,
    executor: Executor,
    max_in_flight: int = 0,
    listener: SweepListener | None = None,
) -> SweepSummary:
    listener = listener or SweepListener()
    summary = SweepSummary(plan=plan)
    limit = max_in_flight or 2 * executor.slots
    queue = list(plan.todo)
    queue.reverse()  # pop() from the end keeps the job's order
    in_flight: dict[Any, Cell] = {}
    start = time.perf_counter()
    listener.started(plan, executor)
    with interrupt_handling():
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    cell = queue.pop()
                    in_flight[executor.submit(cell.to_payload())] = cell
                    listener.cell_started(cell)
                for handle, result in executor.wait(list(in_flight), timeout=0.5):
                    cell = in_flight.pop(handle)
                    for warning in result.get("warnings", ()):
                        log.warning("%s [%s]: %s", cell.label(), cell.key, warning)
                    if result["status"] == "ok":
                        store.write_result(result["row"])
                        discard_checkpoint(store.root, cell.key)  # only once the row is safe
                        summary.finished.append(cell.key)
                        listener.cell_finished(cell, result["row"])
                    else:
                        failure = dict(result["failure"])
                        store.write_failure(failure)
                        if failure.get("error_class") == "application":
                            # A deterministic error: continuing from the state that led to it
                            # (or from a checkpoint that made it fail) would only repeat it. A
                            # lost worker, an OOM kill, missing data or Ctrl-C keeps it: those
                            # are what resuming is for.
                            discard_checkpoint(store.root, cell.key)
                        summary.failed.append(cell.key)
                        listener.cell_failed(cell, failure)
                running = min(len(in_flight), executor.slots)
                listener.tick(running, len(in_flight) - running + len(queue))
        except KeyboardInterrupt:
            summary.interrupted = True
            summary.stopped = len(in_flight)
            log.info("interrupted: cancelling %d cell(s) running or queued", len(in_flight))
            executor.cancel(list(in_flight))
    summary.seconds = time.perf_counter() - start
    return summary
