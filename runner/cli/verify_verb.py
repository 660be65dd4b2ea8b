"""The verb that checks a results folder by re-running its cells: verify (one API call,
rendered). Exit code 0 when every chosen cell reproduced its row, 1 when one did not."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from runner import api
from runner.api.verify import CellCheck, CellVerified, Difference, VerifyPlanned, VerifyStarted
from runner.cli.output import console, print_warning

SHOWN_DIFFERENCES = 3  # per cell in the table; the API's report has them all


def _value(value: Any) -> str:
    """A recorded or re-run value, briefly: floats exactly (repr), digests cut short."""
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return text if len(text) <= 16 else text[:12] + "…"


def difference_text(d: Difference) -> str:
    if d.field == "confusion_matrix" and isinstance(d.recorded, list):
        old, new = d.recorded, d.rerun if isinstance(d.rerun, list) else []
        cells = [(i, j) for i, row in enumerate(old) for j in range(len(row))]
        changed = sum(
            1 for i, j in cells if i >= len(new) or j >= len(new[i]) or new[i][j] != old[i][j]
        )
        return f"confusion_matrix: {changed} of {len(cells)} counts differ"
    return f"{d.field}: {_value(d.recorded)} → {_value(d.rerun)}"


def result_text(check: CellCheck) -> str:
    if check.failure is not None:
        return f"[red]MISMATCH[/] failed: {escape(check.failure)}"
    if check.differences:
        return "[red]MISMATCH[/]"
    return "[green]match[/]"


def note_text(check: CellCheck) -> str:
    notes = []
    if check.epochs_capped is not None:
        notes.append(f"stopped by its time budget: re-run to epoch {check.epochs_capped}")
    if check.code_notes:
        notes.append("other code: " + "; ".join(check.code_notes))
    if check.environment_notes:
        notes.append("other machine: " + "; ".join(check.environment_notes))
    return escape(". ".join(notes))


def _differences(check: CellCheck) -> str:
    shown = [escape(difference_text(d)) for d in check.differences[:SHOWN_DIFFERENCES]]
    more = len(check.differences) - SHOWN_DIFFERENCES
    if more > 0:
        shown.append(f"… and {more} more")
    return "\n".join(shown)


def verify_table(checks: list[CellCheck]) -> Table:
    table = Table(title="re-run against the recorded rows (recorded → re-run)")
    table.add_column("cell", overflow="fold")
    table.add_column("key", no_wrap=True)
    table.add_column("result", overflow="fold")
    table.add_column("differences", overflow="fold")
    table.add_column("note", overflow="fold")
    for check in checks:
        table.add_row(
            escape(check.label),
            check.key,
            result_text(check),
            _differences(check),
            note_text(check),
        )
    return table


class VerifyProgress:
    """Renders verify's events: the chosen cells, then one line per cell as it is checked."""

    def __call__(self, event: api.VerifyEvent) -> None:
        if isinstance(event, api.SweepWarning):
            print_warning(event.message)
        elif isinstance(event, VerifyPlanned):
            root = escape(str(event.results))
            if len(event.chosen) < event.finished:
                console.print(
                    f"Verifying {len(event.chosen)} of {event.finished} finished cell(s) in "
                    f"{root}, chosen with --seed {event.seed}:"
                )
                for key, label in event.chosen.items():
                    console.print(f"  {escape(f'{label:40s}')} [dim]{key}[/]", highlight=False)
            else:
                console.print(f"Verifying all {event.finished} finished cell(s) in {root}")
        elif isinstance(event, VerifyStarted):
            console.print(f"Re-running {event.cells} cell(s) on {escape(event.executor)}")
        elif isinstance(event, CellVerified):
            check = event.check
            mark = "[green]✓[/]" if check.matches else "[red]✗[/]"
            fields = ", ".join(d.field for d in check.differences)
            what = result_text(check) + (f": {escape(fields)}" if fields else "")
            console.print(
                f"{mark} {escape(f'{check.label:40s}')} {what}  {check.seconds:.2f} s  "
                f"[dim]{check.key}[/]",
                highlight=False,
            )


def cmd_verify(args: argparse.Namespace) -> int:
    report = api.verify(
        args.results_dir,
        sample=args.sample,
        seed=args.seed,
        executor=args.executor,
        cpus=args.cpus,
        address=args.address,
        data_root=args.data_root,
        on_event=VerifyProgress(),
    )
    if report.checks:
        console.print(verify_table(report.checks))
    bad = report.mismatched
    if report.interrupted:
        console.print(
            f"[yellow]Interrupted[/] after {len(report.checks)} of {len(report.chosen)} "
            "chosen cell(s); nothing was written into the folder."
        )
    summary = (
        f"{len(report.checks)} cell(s) re-run in {report.seconds:.1f} s: "
        f"{len(report.checks) - len(bad)} match, {len(bad)} mismatch"
    )
    if bad:
        console.print(
            f"[red]{summary}[/]. Their rows: "
            + escape(", ".join(str(report.results / "cells" / f"{c.key}.parquet") for c in bad)),
            soft_wrap=True,
        )
        if any(c.code_notes for c in bad):
            console.print(
                "[yellow]note:[/] some mismatched rows were made by other code than this "
                "(see the note column): the difference may come from the code change"
            )
    elif not report.interrupted:
        console.print(f"[green]{summary}[/]: every chosen cell reproduced its row bit for bit")
    return report.exit_code
