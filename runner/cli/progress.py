"""Live progress of a sweep in the terminal (rich): done / running / failed / ETA, drawn from
the events `runner.submit` reports (runner/api/events.py)."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from runner.api.events import (
    CellFailed,
    CellFinished,
    Event,
    SweepPlanned,
    SweepStarted,
    SweepWarning,
    Tick,
)
from runner.cli.output import print_warning
from runner.results.learning import describe
from runner.results.stops import DIVERGED, TIME_BUDGET, stop_reason


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def stopped_note(row: dict[str, Any]) -> str:
    """What a cell that stopped early is marked with ('' for one that ran its epochs)."""
    reason = stop_reason(row)
    epochs = f"after {row.get('epochs_done')} of {row.get('epochs')} epochs"
    if reason == DIVERGED:
        return f" [yellow]⏹ stopped at step {row.get('diverged_at_step')}, {epochs}[/]"
    if reason == TIME_BUDGET:
        budget = f"max_cell_minutes = {row.get('max_cell_minutes'):g}"
        return f" [yellow]⏹ STOPPED by {budget}, {epochs}: not in means[/]"
    return ""


def per_epoch(row: dict[str, Any]) -> str:
    seconds = float(row.get("seconds_per_epoch", math.nan))
    return f"{seconds:.2f} s/epoch" if math.isfinite(seconds) else "no full epoch"


class RichProgress:
    """Renders a sweep's events: warnings, the plan's counts, then a live bar and one line per
    finished or failed cell. Call it with each event; `close()` stops the bar."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task: Any = None
        self.done = self.failed = self.running = self.queued = 0
        self.not_learned = 0  # finished, but at chance or diverged (runner/results/learning.py)
        self.slots = 1
        self.started_at = time.perf_counter()
        self.cell_seconds: list[float] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, SweepWarning):
            print_warning(event.message)
        elif isinstance(event, SweepPlanned):
            self.console.print(
                f"[bold]{escape(event.job)}[/]: {event.plan.counts()} → "
                f"{escape(str(event.results))}"
            )
        elif isinstance(event, SweepStarted):
            self.console.print(f"Running on {escape(event.executor)}")
            self.slots = event.slots
            self.started_at = time.perf_counter()
            self.progress.start()
            self.task = self.progress.add_task("cells", total=event.cells, status="starting")
        elif isinstance(event, CellFinished):
            self.cell_finished(event)
        elif isinstance(event, CellFailed):
            self.cell_failed(event)
        elif isinstance(event, Tick):
            self.running, self.queued = event.running, event.queued
            self._refresh()

    def close(self) -> None:
        self.progress.stop()

    def _eta(self) -> str:
        remaining = self.running + self.queued
        if not self.cell_seconds or remaining == 0:
            return "ETA -"
        mean = sum(self.cell_seconds) / len(self.cell_seconds)
        # Work left, spread over the slots; cells already running are about half done.
        work = (self.queued + 0.5 * self.running) * mean
        return f"ETA {_duration(work / max(1, min(self.slots, remaining)))}"

    def _refresh(self) -> None:
        not_learned = f" · [yellow]did not learn {self.not_learned}[/]" if self.not_learned else ""
        status = (
            f"[green]done {self.done}[/]{not_learned} · running {self.running} · queued "
            f"{self.queued} · [red]failed {self.failed}[/] · {self._eta()}"
        )
        self.progress.update(self.task, completed=self.done + self.failed, status=status)

    def cell_finished(self, event: CellFinished) -> None:
        cell, row, verdict = event.cell, event.row, event.verdict
        self.done += 1
        self.cell_seconds.append(float(row.get("wall_seconds", 0.0)))
        label = escape(f"{cell.label():40s}")
        if verdict.learned:
            mark = "[yellow]⏹[/]" if stop_reason(row) == TIME_BUDGET else "[green]✓[/]"
            result = f"test {row['test_accuracy']:.4f}"
        else:  # never printed like a normal result
            self.not_learned += 1
            mark = "[yellow]⚠[/]"
            result = (
                f"[yellow]test {row['test_accuracy']:.4f} DID NOT LEARN: "
                f"{escape(describe(verdict.flag))} (chance {verdict.chance_accuracy:.4f})[/]"
            )
        self.console.print(
            f"{mark} {label} {result}{stopped_note(row)}  "
            f"{per_epoch(row)}  threads {row['torch_threads']}  [dim]{cell.key}[/]",
            highlight=False,
        )
        self._refresh()

    def cell_failed(self, event: CellFailed) -> None:
        cell, failure = event.cell, event.failure
        self.failed += 1
        message = str(failure.get("message", "")).strip().splitlines()
        first = message[0][:120] if message else ""
        what = f"{failure.get('error_class')}: {failure.get('error_type')}: {first}"
        self.console.print(
            f"[red]✗[/] {escape(f'{cell.label():40s}')} {escape(what)}  [dim]{cell.key}[/]",
            highlight=False,
        )
        self._refresh()
