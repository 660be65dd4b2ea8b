"""What a running sweep reports to its caller, as events (plain frozen dataclasses).

`runner.submit(..., on_event=callback)` calls `callback(event)` in the calling thread, in
this order: `SweepWarning`s (job file, unreadable results), `SweepPlanned` (the counts),
then, if there is something to run, `SweepStarted`, and for each cell `CellStarted` and
`CellFinished` or `CellFailed`, with a `Tick` about twice a second. The library never prints:
the command line renders these events with rich (runner/cli/progress.py); a notebook may
collect them or draw its own bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.job.cells import Cell
from runner.results.learning import Verdict, row_verdict
from runner.run.executors import Executor
from runner.run.sweep import SweepListener, SweepPlan


@dataclass(frozen=True)
class SweepWarning:
    """Something the user should know that does not stop the sweep."""

    message: str


@dataclass(frozen=True)
class SweepPlanned:
    """The job's cells against the results folder, before anything runs."""

    job: str
    results: Path
    plan: SweepPlan


@dataclass(frozen=True)
class SweepStarted:
    """The executor is up; `cells` will run on `slots` parallel slots."""

    executor: str
    slots: int
    cells: int


@dataclass(frozen=True)
class CellStarted:
    """The cell was handed to the executor: it runs as soon as a slot is free."""

    cell: Cell


@dataclass(frozen=True)
class CellFinished:
    """The cell's row is stored. `verdict.learned` is False for a cell at chance accuracy or
    with a diverged loss: such a row is never to be shown like a normal result."""

    cell: Cell
    row: dict[str, Any]
    verdict: Verdict


@dataclass(frozen=True)
class CellFailed:
    """The cell's failure record is stored (`error_class`, `error_type`, `message`, ...)."""

    cell: Cell
    failure: dict[str, Any]


@dataclass(frozen=True)
class Tick:
    """Cells running and queued now (about twice a second)."""

    running: int
    queued: int


Event = SweepWarning | SweepPlanned | SweepStarted | CellStarted | CellFinished | CellFailed | Tick
EventCallback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default callback."""


class EventListener(SweepListener):
    """The sweep loop's hooks turned into events for one callback; counts what it saw."""

    def __init__(self, on_event: EventCallback):
        self.on_event = on_event
        self.not_learned: list[str] = []

    def started(self, plan: SweepPlan, executor: Executor) -> None:
        self.on_event(SweepStarted(executor.describe(), executor.slots, len(plan.todo)))

    def cell_started(self, cell: Cell) -> None:
        self.on_event(CellStarted(cell))

    def cell_finished(self, cell: Cell, row: dict[str, Any]) -> None:
        verdict = row_verdict(row)
        if not verdict.learned:
            self.not_learned.append(cell.key)
        self.on_event(CellFinished(cell, row, verdict))

    def cell_failed(self, cell: Cell, failure: dict[str, Any]) -> None:
        self.on_event(CellFailed(cell, failure))

    def tick(self, running: int, queued: int) -> None:
        self.on_event(Tick(running, queued))
