"""The verbs that read a results folder: status, report and export (each one API call,
rendered)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from runner import api
from runner.cli.output import console, err_console, print_warning
from runner.cli.tables import comparison_table, grid_table, summary_table
from runner.results.code_versions import CodeVersion, mix_lines


def _size_or_zero(path: Path) -> int:
    """A file's size, or 0 when a running sweep just deleted it."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def print_code_mix(versions: list[CodeVersion]) -> None:
    """The note of a folder whose rows come from different code (nothing when they do not)."""
    lines = mix_lines(versions)
    if lines:
        headline, why, *each = lines
        console.print(f"[yellow]{escape(headline)}[/]: {escape(why)}")
        for line in each:
            console.print(f"  {escape(line)}", soft_wrap=True)


def cmd_status(args: argparse.Namespace) -> int:
    from runner.results.failures import FAILURE_HINTS, class_counts
    from runner.results.learning import describe, flag_text

    folder = api.status(args.results_dir)
    root = escape(str(folder.root))
    if folder.job_problem:
        print_warning(folder.job_problem)
    if folder.plan is not None and folder.job is not None:
        console.print(f"[bold]{folder.job.name}[/] ({root}): {folder.plan.counts()}")
        if folder.extra_done:
            console.print(
                f"{folder.extra_done} finished cell(s) the job file does not make "
                "(earlier versions of it, or runs with --set)"
            )
    else:
        console.print(
            f"{root}: {len(folder.done)} done, {len(folder.failed)} failed "
            "(cells still to run are unknown without a job file that expands)"
        )
    print_code_mix(folder.code_versions)
    if folder.resumable:
        console.print(
            f"{len(folder.resumable)} unfinished cell(s) have a checkpoint: the next "
            "submit continues them from it"
        )
    if folder.orphans:
        megabytes = sum(_size_or_zero(p) for p in folder.orphans) / 1e6
        console.print(
            f"{len(folder.orphans)} checkpoint(s) ({megabytes:.1f} MB) belong to cells no "
            "longer in the job file: kept in case they come back; to free the space, delete "
            + escape(", ".join(str(p) for p in sorted(folder.orphans)[:3]))
            + (" ..." if len(folder.orphans) > 3 else "")
        )
    for path, problem in folder.corrupt.items():
        console.print(
            f"[yellow]unreadable result file[/] {escape(str(path))}: {escape(problem)} "
            "(counted as not done; the next submit moves it to quarantine/ and runs the cell)"
        )
    if folder.not_learned:
        console.print(
            f"[yellow]{len(folder.not_learned)} finished cell(s) did not learn[/]: counted as "
            "done, but never to be read as normal results"
        )
        for flag in sorted({n.verdict.flag for n in folder.not_learned}):
            console.print(f"  [bold]{flag}[/]: {escape(describe(flag))}")
        out = Table(title="cells that did not learn")
        for name in ("cell", "key", "verdict", "test accuracy", "chance"):
            out.add_column(name, overflow="fold")
        for n in folder.not_learned:
            out.add_row(
                escape(n.label),
                n.key,
                flag_text(n.verdict.flag),
                f"{n.test_accuracy:.4f}",
                f"{n.verdict.chance_accuracy:.4f}",
            )
        console.print(out)
    if folder.stopped:
        from runner.results.stops import REASONS, stop_text

        console.print(
            f"[yellow]{len(folder.stopped)} finished cell(s) stopped before their last "
            "epoch[/]: left out of the report's means (report --include-stopped counts them)"
        )
        for reason in sorted({s.reason for s in folder.stopped}):
            console.print(f"  [bold]{reason}[/]: {escape(REASONS.get(reason, ''))}")
        for s in folder.stopped:
            console.print(
                f"  {stop_text(s.reason)}  {escape(s.label)}  after {s.epochs_done} of "
                f"{s.epochs} epochs  [dim]{s.key}[/]",
                highlight=False,
            )
    if folder.failed:
        counts = class_counts(
            [str(f.get("error_class", "unknown")) for f in folder.failed.values()]
        )
        console.print("failures by class: " + ", ".join(f"{k} {n}" for k, n in counts))
        for name, _ in counts:
            hint = FAILURE_HINTS.get(name, "see the records below")
            console.print(f"  [bold]{escape(name)}[/]: {escape(hint)}")
        table = Table(title="failed cells")
        table.add_column("cell", overflow="fold")
        table.add_column("key", no_wrap=True)
        table.add_column("class", overflow="fold")
        table.add_column("error", overflow="fold")
        for key, failure in sorted(folder.failed.items()):
            message = str(failure.get("message", "")).strip().splitlines()
            table.add_row(
                escape(str(failure.get("label", key))),
                key,
                escape(str(failure.get("error_class"))),
                escape(f"{failure.get('error_type', '')}: {message[0] if message else ''}"),
            )
        console.print(table)
        # The path once, outside the table, where the terminal cannot fold it.
        console.print(
            "full records, with tracebacks: " + escape(str(folder.root / "failed" / "<key>.json")),
            soft_wrap=True,
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from runner.report.configs import not_learned_cells

    report = api.report(
        args.results_dir,
        args.out,
        compare_paper=args.compare_paper,
        include_stopped=args.include_stopped,
    )
    data, analysis = report.data, report.analysis
    for path in data.unreadable:
        err_console.print(
            f"[yellow]warning:[/] unreadable result file skipped: {escape(str(path))}"
        )
    if data.job_problem:
        err_console.print(f"[yellow]warning:[/] {escape(data.job_problem)}")
    if data.expected is not None:
        in_job = {c.key for c in data.expected}
        console.print(
            f"{len(data.expected)} cells in the job file: {len(data.done_keys & in_job)} done, "
            f"{sum(f.in_job for f in data.failed)} failed, {len(data.missing)} missing"
        )
    print_code_mix(analysis.code_versions)
    if analysis.cells.empty:
        console.print(f"No finished cells in {escape(str(args.results_dir))} yet.")
    else:
        console.print(summary_table(analysis.summary, len(analysis.cells)))
        for grid in [*analysis.accuracy, *analysis.timing, *analysis.depth]:
            console.print(grid_table(grid))
        for grid in [*analysis.active_set_tables, *analysis.probe_tables]:
            console.print(grid_table(grid))
    flagged = not_learned_cells(analysis.cells)
    if not flagged.empty:
        console.print(
            f"[yellow]{len(flagged)} finished cell(s) did not learn[/] (marked ⚠ in the tables; "
            "the page lists them and why)"
        )
    stopped = int(analysis.summary["stopped"].sum()) if "stopped" in analysis.summary else 0
    if stopped:
        counted = "counted in" if args.include_stopped else "left out of"
        console.print(
            f"[yellow]{stopped} finished cell(s) stopped before their last epoch[/] (marked ⏹; "
            f"{counted} the means; the page lists them)"
        )
    if report.comparison is not None:
        if report.comparison.empty:
            console.print("No configuration of this sweep matches a published number.")
        else:
            console.print(comparison_table(report.comparison))
        if report.unmatched:
            console.print(
                f"{len(report.unmatched)} published number(s) have no matching cells here."
            )
    if data.missing:
        shown = escape(", ".join(c.label() for c in data.missing[:10]))
        more = f" ... and {len(data.missing) - 10} more" if len(data.missing) > 10 else ""
        console.print(f"[yellow]{len(data.missing)} missing cell(s)[/]: {shown}{more}")
    if data.failed:
        from runner.results.failures import class_counts

        counts = class_counts([f.error_class for f in data.failed])
        console.print("failures by class: " + escape(", ".join(f"{k} {n}" for k, n in counts)))
        console.print(
            f"[red]{len(data.failed)} failed cell(s)[/]: "
            + escape(", ".join(f"{f.label} ({f.error_class})" for f in data.failed[:10]))
            + (f" ... and {len(data.failed) - 10} more" if len(data.failed) > 10 else "")
        )
    if report.cells_path is not None:
        console.print(
            f"Wrote {escape(str(report.cells_path))} and {escape(str(report.epochs_path))}"
        )
        console.print(
            f"{len(report.figures)} figure(s) in {escape(str(report.out_dir / 'figures'))}"
        )
    console.print(f"Page: {escape(str(report.page_path))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    s = api.export(
        args.results_dir,
        args.to,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        out=args.out,
    )
    console.print(
        f"{s.created} cell run(s) created, {s.skipped} skipped as already exported"
        + (f"; {s.redone} left incomplete by an earlier export redone" if s.redone else "")
    )
    if s.target == "mlflow":
        console.print(
            f"failed cells: {s.failed_created} run(s) created, {s.failed_skipped} already "
            f"exported, {s.failed_updated} updated"
            + (f"; {s.superseded} marked superseded (finished since)" if s.superseded else "")
        )
        console.print(
            f"experiment {escape(str(s.experiment))} (id {s.experiment_id}), parent run "
            f"{s.parent_run_id}"
            + (f", with the report of {escape(str(s.report))}" if s.report else "")
        )
    console.print(f"store: {escape(s.location)}")
    for note in s.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    hint = (
        " (the UI is in the full `mlflow` package: pip install mlflow)"
        if s.target == "mlflow"
        else ""
    )
    console.print(f"view: {escape(s.view)}{hint}")
    return 0
