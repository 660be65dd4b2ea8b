"""`python -m runner`: submit, plan, status and report. The only module that prints.

Exit codes: 0 all good; 1 some cells failed; 2 a problem for the user to fix (bad job file,
missing data, unusable results folder, Ray unreachable); 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from runner.errors import CpusweepError
from runner.grid import expand
from runner.spec import JobSpec, load_spec, parse_spec
from runner.store import ResultsStore
from runner.sweep import SweepPlan, make_plan

# Piped output (CI logs, files) gets wide lines rather than tables squeezed to 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)
log = logging.getLogger("cpusweep")


def _results_dir(spec: JobSpec, explicit: str | None) -> Path:
    return Path(explicit) if explicit else Path("results") / spec.name


def _resume_command() -> str:
    return "python -m runner " + shlex.join(sys.argv[1:])


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")


def _plan_for(spec: JobSpec, store: ResultsStore, retry_failed: bool) -> SweepPlan:
    expansion = expand(spec)
    _print_warnings(expansion.warnings)
    ledger = store.scan()
    if ledger.corrupt:
        listing = ", ".join(p.name for p in ledger.corrupt)
        err_console.print(
            f"[yellow]warning:[/] unreadable result files (counted as not done): {listing}"
        )
    return make_plan(expansion.cells, ledger, retry_failed)


def _counts_line(plan: SweepPlan) -> str:
    return (
        f"{len(plan.cells)} cells: {len(plan.done)} done, {len(plan.failed)} failed, "
        f"{len(plan.todo)} to run"
    )


# --- submit ----------------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    from runner.checkpoint import prepare_checkpoints
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.executors import Executor, RayExecutor, SerialExecutor
    from runner.progress import RichProgress
    from runner.sweep import run_sweep

    spec = load_spec(args.job)
    store = ResultsStore(_results_dir(spec, args.results))
    store.prepare()
    with store.lock():
        ledger = store.scan()
        if ledger.corrupt:
            moved = store.quarantine(ledger.corrupt)
            err_console.print(
                f"[yellow]warning:[/] {len(moved)} unreadable result file(s) "
                f"moved to {store.root / 'quarantine'}; those cells will re-run"
            )
        expansion = expand(spec)
        _print_warnings(expansion.warnings)
        plan = make_plan(expansion.cells, store.scan(), args.retry_failed)
        console.print(f"[bold]{spec.name}[/]: {_counts_line(plan)} → {store.root}")
        if not plan.todo:
            hint = " (re-run them with --retry-failed)" if plan.failed else ""
            console.print(f"Nothing to run{hint}.")
            return 1 if plan.failed else 0
        store.save_job(spec.text)

        # Check every dataset before starting anything: a missing file should cost seconds,
        # not a sweep of failed cells.
        root = resolve_data_root(args.data_root)
        download = downloads_allowed()
        from runner.datasets.loading import ensure_available

        for name in sorted({c.dataset for c in plan.todo}):
            ensure_available(name, root, download)

        data_root = str(root) if args.data_root else None
        checkpoints = prepare_checkpoints(store.root, spec.resources.checkpoint_every)
        executor: Executor
        if args.executor == "serial":
            executor = SerialExecutor(
                data_root, download, spec.resources.torch_threads, checkpoints
            )
        else:
            executor = RayExecutor(
                spec.resources, args.address, args.cpus, data_root, download, checkpoints
            )
        try:
            console.print(f"Running on {executor.describe()}")
            with RichProgress(console) as progress:
                summary = run_sweep(plan, store, executor, spec.resources.max_in_flight, progress)
        finally:
            executor.close()

    failed_total = len(store.scan().failed.keys() & {c.key for c in plan.cells})
    console.print(
        f"{len(summary.finished)} cell(s) finished, {len(summary.failed)} failed in "
        f"{summary.seconds:.1f} s. Results: {store.root}"
    )
    if summary.interrupted:
        console.print(
            f"[yellow]Interrupted.[/] Every finished cell is saved. Resume with:\n"
            f"  {_resume_command()}"
        )
        return 130
    if failed_total:
        console.print(
            f"{failed_total} cell(s) failed; see `python -m runner status "
            f"{store.root}`, fix, then re-run with --retry-failed."
        )
        return 1
    console.print(f"Next: python -m runner report {store.root}")
    return 0


# --- plan ------------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.job)
    store = ResultsStore(_results_dir(spec, args.results))
    plan = _plan_for(spec, store, retry_failed=False)
    done = {c.key for c in plan.done}
    failed = {c.key for c in plan.failed}
    table = Table(title=f"{spec.name}: {_counts_line(plan)}")
    for column in ("#", "cell", "key", "state"):
        table.add_column(column)
    shown = plan.cells if args.all else plan.cells[:50]
    for i, cell in enumerate(shown, start=1):
        state = (
            "[green]done[/]"
            if cell.key in done
            else "[red]failed[/]"
            if cell.key in failed
            else "to run"
        )
        table.add_row(str(i), cell.label(), cell.key, state)
    console.print(table)
    if len(shown) < len(plan.cells):
        console.print(f"... {len(plan.cells) - len(shown)} more (--all shows every cell)")
    by_method = Counter(c.method for c in plan.todo)
    if by_method:
        console.print(
            "to run by method: " + ", ".join(f"{m} {n}" for m, n in sorted(by_method.items()))
        )
    console.print(f"results folder: {store.root}")
    return 0


# --- status ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    store = ResultsStore(args.results_dir)
    if not store.root.is_dir():
        raise CpusweepError(f"{store.root} is not a results folder (it does not exist)")
    ledger = store.scan()
    text = store.job_text()
    if text is not None:
        spec = parse_spec(text, str(store.root / "job.toml"))
        plan = make_plan(expand(spec).cells, ledger, retry_failed=False)
        console.print(f"[bold]{spec.name}[/] ({store.root}): {_counts_line(plan)}")
        extra = len(ledger.done - {c.key for c in plan.cells})
        if extra:
            console.print(f"{extra} finished cell(s) from earlier versions of the job file")
    else:
        console.print(
            f"{store.root}: {len(ledger.done)} done, {len(ledger.failed)} failed "
            "(no job.toml: nothing is known about cells still to run)"
        )
    if ledger.corrupt:
        console.print(
            f"[yellow]{len(ledger.corrupt)} unreadable result file(s)[/]: "
            + ", ".join(p.name for p in ledger.corrupt)
        )
    if ledger.failed:
        classes = Counter(f.get("error_class", "unknown") for f in ledger.failed.values())
        console.print(
            "failures by class: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))
        )
        table = Table(title="failed cells")
        for column in ("cell", "class", "error", "record"):
            table.add_column(column, overflow="fold")
        for key, failure in sorted(ledger.failed.items()):
            message = str(failure.get("message", "")).strip().splitlines()
            table.add_row(
                str(failure.get("label", key)),
                str(failure.get("error_class")),
                f"{failure.get('error_type', '')}: {message[0] if message else ''}",
                str(store.failure_path(key)),
            )
        console.print(table)
    return 0


# --- report ----------------------------------------------------------------------------------


def _mean_std(mean: float, std: float, fmt: str) -> str:
    if mean != mean:  # NaN
        return "-"
    return format(mean, fmt) + ("" if std != std else " ± " + format(std, fmt))


def _summary_table(summary: pd.DataFrame, n_cells: int) -> Table:
    table = Table(title=f"{n_cells} finished cell(s), mean ± std over seeds")
    keys = ["dataset", "method", "depth", "batch_size", "lr"]
    keys += [c for c in summary.columns if "." in c]  # method hyperparameters
    for column in [*keys, "seeds", "test acc", "val acc", "s/epoch", "threads"]:
        table.add_column(column, justify="left" if column in ("dataset", "method") else "right")
    for _, row in summary.iterrows():
        table.add_row(
            *(
                (
                    "-"
                    if row[k] != row[k]
                    else f"{row[k]:g}"
                    if isinstance(row[k], float)
                    else str(row[k])
                )
                for k in keys
            ),
            str(row["seeds"]),
            _mean_std(row["test_accuracy"], row["test_accuracy_std"], ".4f"),
            f"{row['val_accuracy']:.4f}",
            _mean_std(row["seconds_per_epoch"], row["seconds_per_epoch_std"], ".3g"),
            str(row["torch_threads"]),
        )
    return table


def cmd_report(args: argparse.Namespace) -> int:
    from runner.report import build_report

    report = build_report(args.results_dir, args.out)
    for path in report.unreadable:
        err_console.print(f"[yellow]warning:[/] unreadable result file skipped: {path}")
    if report.cells_path is None:
        console.print(f"No finished cells in {args.results_dir} yet.")
        return 0
    console.print(_summary_table(report.summary, len(report.cells)))
    console.print(f"Wrote {report.cells_path} and {report.epochs_path}")
    return 0


# --- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner",
        description="Run resumable sweeps of sampling-based training methods on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("submit", help="run a job's cells that are not done yet (the resume)")
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--results", help="results folder (default: results/<name>)")
    p.add_argument(
        "--data-root",
        help="dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)",
    )
    p.add_argument("--cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument(
        "--address", help="join this Ray cluster (default: $RAY_ADDRESS, else start a local Ray)"
    )
    p.add_argument(
        "--executor",
        choices=("ray", "serial"),
        default="ray",
        help="ray (default) or serial: the same cells, in this process",
    )
    p.add_argument("--retry-failed", action="store_true", help="re-run cells that failed")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("plan", help="show the cells and what is done, without running")
    p.add_argument("job")
    p.add_argument("--results")
    p.add_argument("--all", action="store_true", help="list every cell")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="what a results folder holds: done, failed, to run")
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="write cells.parquet / epochs.parquet and a summary")
    p.add_argument("results_dir")
    p.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )
    try:
        code: int = args.func(args)
        return code
    except CpusweepError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        err_console.print(f"[yellow]Interrupted.[/] Resume with: {_resume_command()}")
        return 130
