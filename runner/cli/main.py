"""`python -m runner`: submit, plan, status, report and data. The only module that prints.

Exit codes: 0 all good; 1 some cells failed; 2 a problem for the user to fix (bad job file,
missing data, unusable results folder, Ray unreachable); 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from runner.errors import CpusweepError
from runner.job.grid import expand
from runner.job.spec import JobSpec, load_spec, parse_spec
from runner.report.configs import group_name, summary_flag
from runner.report.tables import GridTable, format_stat
from runner.results.store import TEMP_SUFFIX, Ledger, ResultsStore
from runner.run.estimate import Estimator, load_bench, longest_first, makespan
from runner.run.sweep import SweepPlan, make_plan

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
        err_console.print(f"[yellow]warning:[/] {escape(warning)}")


def _plan_for(spec: JobSpec, store: ResultsStore, retry_failed: bool) -> SweepPlan:
    expansion = expand(spec)
    _print_warnings(expansion.warnings)
    ledger = store.scan()
    for path, problem in ledger.corrupt.items():
        err_console.print(
            f"[yellow]warning:[/] unreadable result file {escape(str(path))}: "
            f"{escape(problem)} (counted as not done)"
        )
    return make_plan(expansion.cells, ledger, retry_failed)


def _counts_line(plan: SweepPlan) -> str:
    return (
        f"{len(plan.cells)} cells: {len(plan.done)} done, {len(plan.failed)} failed, "
        f"{len(plan.todo)} to run"
    )


# --- submit ----------------------------------------------------------------------------------


def _tidy(store: ResultsStore, ledger: Ledger) -> None:
    """Clear what an earlier submit killed mid-write left: temporary files, and failure
    records and checkpoints of cells whose result was stored just before it died."""
    from runner.run.checkpoint import checkpoints_dir, discard_checkpoint

    removed = store.tidy(ledger)
    folder = checkpoints_dir(store.root)
    stale = [p.stem for p in folder.glob("*.pt") if p.stem in ledger.done]
    removed += [folder / f"{key}.pt" for key in stale if discard_checkpoint(store.root, key)]
    # No cell runs yet: a cell's temporary file is stale.
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    for path in removed:
        log.info("removed %s, left by an interrupted submit", path)


def cmd_submit(args: argparse.Namespace) -> int:
    from runner.run.sweep import interrupt_handling

    with interrupt_handling():  # covers Ray's start-up and shut-down too
        return _submit(args)


def _submit(args: argparse.Namespace) -> int:
    from runner.cli.progress import RichProgress
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.run.checkpoint import prepare_checkpoints
    from runner.run.executors import Executor, RayExecutor, SerialExecutor
    from runner.run.sweep import run_sweep

    spec = load_spec(args.job)
    expansion = expand(spec)
    if not expansion.cells:
        raise CpusweepError(
            f"{args.job}: the job has no cells: its [[exclude]] tables drop every combination "
            "of the grid; loosen them (`python -m runner plan` shows the cells)"
        )
    store = ResultsStore(_results_dir(spec, args.results))
    store.prepare()
    with store.lock():
        ledger = store.scan()
        _tidy(store, ledger)
        if ledger.corrupt:
            moved = store.quarantine(ledger.corrupt)
            for (path, problem), target in zip(ledger.corrupt.items(), moved, strict=True):
                err_console.print(
                    f"[yellow]warning:[/] {escape(str(path))} is unreadable ({escape(problem)}): "
                    f"moved to {escape(str(target))}; that cell will run again"
                )
        _print_warnings(expansion.warnings)
        plan = make_plan(expansion.cells, store.scan(), args.retry_failed)
        # Longest cells first (estimated from finished cells where there are some).
        plan.todo = longest_first(plan.todo, Estimator(store.finished_rows()))
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
        pin = math.ceil(spec.resources.cpus_per_cell) if spec.resources.pin_cores else 0
        executor: Executor
        if args.executor == "serial":
            executor = SerialExecutor(
                data_root, download, spec.resources.torch_threads, checkpoints, pin_cores=pin
            )
        else:
            executor = RayExecutor(
                spec.resources,
                args.address,
                args.cpus,
                data_root,
                download,
                checkpoints,
                pin_cores=pin,
            )
        try:
            console.print(f"Running on {escape(executor.describe())}")
            with RichProgress(console) as progress:
                summary = run_sweep(plan, store, executor, spec.resources.max_in_flight, progress)
        finally:
            executor.close()

    failed_total = len(store.scan().failed.keys() & {c.key for c in plan.cells})
    console.print(
        f"{len(summary.finished)} cell(s) finished, {len(summary.failed)} failed in "
        f"{summary.seconds:.1f} s. Results: {escape(str(store.root))}"
    )
    if progress.not_learned:
        console.print(
            f"[yellow]{progress.not_learned} finished cell(s) did not learn[/] (test accuracy "
            "within noise of chance, or a diverged loss): `python -m runner status "
            f"{escape(str(store.root))}` lists them."
        )
    if summary.interrupted:
        stopped = (
            f" {summary.stopped} cell(s) running or queued were stopped, not failed: they run "
            "again on the next submit, from their last checkpoint if they have one."
            if summary.stopped
            else ""
        )
        console.print(
            f"[yellow]Interrupted.[/] Every finished cell is saved.{stopped} Resume with:\n"
            f"  {escape(_resume_command())}"
        )
        return 130
    if failed_total:
        console.print(
            f"{failed_total} cell(s) failed; see `python -m runner status "
            f"{escape(str(store.root))}`, fix, then re-run with --retry-failed."
        )
        return 1
    console.print(f"Next: python -m runner report {escape(str(store.root))}")
    return 0


# --- slurm -----------------------------------------------------------------------------------


def cmd_slurm(args: argparse.Namespace) -> int:
    from runner.clusters.slurm import SlurmJob, SlurmRequest, submit_script, write_script
    from runner.datasets.loading import ensure_available
    from runner.datasets.locations import downloads_allowed, resolve_data_root

    spec = load_spec(args.job)
    expansion = expand(spec)
    if not expansion.cells:
        raise CpusweepError(
            f"{args.job}: the job has no cells: its [[exclude]] tables drop every combination "
            "of the grid; loosen them (`python -m runner plan` shows the cells)"
        )
    store = ResultsStore(_results_dir(spec, args.results).absolute())
    store.prepare()
    plan = _plan_for(spec, store, retry_failed=False)
    # The datasets, here and now (downloading them where allowed: login nodes often have the
    # network that compute nodes lack), rather than after a wait in the queue.
    root = resolve_data_root(args.data_root)
    for name in sorted({c.dataset for c in plan.todo}):
        ensure_available(name, root, downloads_allowed())
    job = SlurmJob(
        name=spec.name,
        job_file=Path(args.job).absolute(),
        results=store.root,
        python=sys.executable,
        workdir=Path.cwd(),
        request=SlurmRequest(
            nodes=args.nodes,
            cpus_per_node=args.cpus_per_node,
            mem_per_cpu=args.mem_per_cpu,
            time=args.time,
            partition=args.partition,
            account=args.account,
        ),
        data_root=Path(args.data_root).absolute() if args.data_root else None,
        container=Path(args.container).absolute() if args.container else None,
        command=_resume_command(),
    )
    script = write_script(job)
    console.print(f"[bold]{spec.name}[/]: {_counts_line(plan)} → {escape(str(store.root))}")
    console.print(f"Wrote {escape(str(script))}")
    if not args.submit:
        console.print(f"Submit it with: sbatch {escape(str(script))}  (or add --submit)")
        return 0
    if not plan.todo:
        console.print("Nothing to run: not submitted.")
        return 1 if plan.failed else 0
    job_id = submit_script(script, job.request)
    console.print(f"Submitted batch job {job_id}")
    console.print(
        f"output: {escape(str(store.root / 'slurm' / f'slurm-{job_id}.out'))}; "
        f"`squeue -j {job_id}` shows it; `python -m runner status {escape(str(store.root))}` "
        "the sweep. Run this command again to resume after the job ends."
    )
    return 0


# --- plan ------------------------------------------------------------------------------------


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_spec(args.job)
    store = ResultsStore(_results_dir(spec, args.results))
    plan = _plan_for(spec, store, retry_failed=False)
    estimator = Estimator(store.finished_rows(), load_bench(args.bench) if args.bench else ())
    estimates = {c.key: estimator.estimate(c) for c in plan.todo}
    done = {c.key for c in plan.done}
    failed = {c.key for c in plan.failed}
    table = Table(title=f"{spec.name}: {_counts_line(plan)}")
    for column in ("#", "cell", "key", "state", "estimate"):
        table.add_column(column, justify="right" if column == "estimate" else "left")
    shown = plan.cells if args.all else plan.cells[:50]
    for i, cell in enumerate(shown, start=1):
        state = (
            "[green]done[/]"
            if cell.key in done
            else "[red]failed[/]"
            if cell.key in failed
            else "to run"
        )
        seconds = estimates[cell.key].seconds if cell.key in estimates else None
        table.add_row(
            str(i), cell.label(), cell.key, state, "" if seconds is None else _hours(seconds)
        )
    console.print(table)
    if len(shown) < len(plan.cells):
        console.print(f"... {len(plan.cells) - len(shown)} more (--all shows every cell)")
    by_method = Counter(c.method for c in plan.todo)
    if by_method:
        console.print(
            "to run by method: " + ", ".join(f"{m} {n}" for m, n in sorted(by_method.items()))
        )
    if plan.todo:
        known = [e.seconds for e in estimates.values() if e.seconds is not None]
        sources = Counter(e.source for e in estimates.values() if e.seconds is not None)
        cpus = args.cpus or os.cpu_count() or 1
        slots = max(1, int(cpus // spec.resources.cpus_per_cell))
        if known:
            cpu_hours = sum(known) * spec.resources.cpus_per_cell / 3600
            console.print(
                f"estimate for {len(known)} of {len(plan.todo)} cells to run: "
                f"{cpu_hours:.2f} CPU-hours, about {_hours(makespan(known, slots))} of wall "
                f"time on {slots} slot(s) ({cpus} CPUs), longest first; from "
                + ", ".join(f"{source} ({n})" for source, n in sorted(sources.items()))
            )
        unknown = len(plan.todo) - len(known)
        if unknown:
            console.print(
                f"{unknown} cell(s) have no estimate yet: finish a few cells of the same method "
                "and batch size, or pass --bench FILE (from `python -m runner bench --json "
                "FILE`)"
            )
    console.print(f"results folder: {store.root}")
    return 0


# --- status ----------------------------------------------------------------------------------


def _size_or_zero(path: Path) -> int:
    """A file's size, or 0 when a running sweep just deleted it."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def cmd_status(args: argparse.Namespace) -> int:
    from runner.results.failures import FAILURE_HINTS, class_counts
    from runner.run.checkpoint import checkpoints_dir

    store = ResultsStore(args.results_dir)
    store.check_readable_folder()
    ledger = store.scan()
    root = escape(str(store.root))
    cells = None
    try:
        text = store.job_text()
        if text is not None:
            spec = parse_spec(text, str(store.root / "job.toml"))
            cells = expand(spec).cells
    except CpusweepError as exc:  # e.g. a dataset renamed since: say so, show the rest
        err_console.print(
            "[yellow]warning:[/] the job file does not expand with this version of the "
            f"code: {escape(str(exc))}"
        )
    if cells is not None:
        plan = make_plan(cells, ledger, retry_failed=False)
        console.print(f"[bold]{spec.name}[/] ({root}): {_counts_line(plan)}")
        extra = len(ledger.done - {c.key for c in plan.cells})
        if extra:
            console.print(f"{extra} finished cell(s) from earlier versions of the job file")
    else:
        console.print(
            f"{root}: {len(ledger.done)} done, {len(ledger.failed)} failed "
            "(cells still to run are unknown without a job file that expands)"
        )
    resumable = [p for p in checkpoints_dir(store.root).glob("*.pt") if p.stem not in ledger.done]
    in_job = {c.key for c in cells} if cells is not None else None
    orphans = [p for p in resumable if in_job is not None and p.stem not in in_job]
    if len(resumable) > len(orphans):
        console.print(
            f"{len(resumable) - len(orphans)} unfinished cell(s) have a checkpoint: the next "
            "submit continues them from it"
        )
    if orphans:
        megabytes = sum(_size_or_zero(p) for p in orphans) / 1e6
        console.print(
            f"{len(orphans)} checkpoint(s) ({megabytes:.1f} MB) belong to cells no longer in "
            "the job file: kept in case they come back; to free the space, delete "
            + escape(", ".join(str(p) for p in sorted(orphans)[:3]))
            + (" ..." if len(orphans) > 3 else "")
        )
    for path, problem in ledger.corrupt.items():
        console.print(
            f"[yellow]unreadable result file[/] {escape(str(path))}: {escape(problem)} "
            "(counted as not done; the next submit moves it to quarantine/ and runs the cell)"
        )
    _print_not_learned(store, {c.key: c.label() for c in cells or []})
    if ledger.failed:
        counts = class_counts(
            [str(f.get("error_class", "unknown")) for f in ledger.failed.values()]
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
        for key, failure in sorted(ledger.failed.items()):
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
            "full records, with tracebacks: " + escape(str(store.failed_dir / "<key>.json")),
            soft_wrap=True,
        )
    return 0


def _print_not_learned(store: ResultsStore, labels: dict[str, str]) -> None:
    """Finished cells that did not learn (chance accuracy or a diverged loss), as a table;
    `labels`: the job's cell labels by key (others are described from their row)."""
    from runner.report.configs import paper_label
    from runner.results.learning import describe, flag_text, row_verdict

    table, _ = store.read_results()
    if table is None:
        return
    columns = ["cell_key", "dataset", "method", "batch_size", "depth", "seed", "test_accuracy"]
    columns += [
        c
        for c in (
            "learning_flag",
            "chance_accuracy",
            "chance_p_value",
            "diverged",
            "confusion_matrix",
        )
        if c in table.column_names
    ]
    flagged = []
    for row in table.select(columns).to_pylist():
        verdict = row_verdict(row)
        if not verdict.learned:
            flagged.append((row, verdict))
    if not flagged:
        return
    console.print(
        f"[yellow]{len(flagged)} finished cell(s) did not learn[/]: counted as done, but never "
        "to be read as normal results"
    )
    for flag in sorted({v.flag for _, v in flagged}):
        console.print(f"  [bold]{flag}[/]: {escape(describe(flag))}")
    out = Table(title="cells that did not learn")
    for name in ("cell", "key", "verdict", "test accuracy", "chance"):
        out.add_column(name, overflow="fold")
    for row, verdict in flagged:
        label = labels.get(row["cell_key"]) or (
            f"{row['dataset']} {paper_label(row['method'], row['batch_size'])} "
            f"depth {row['depth']} seed {row['seed']}"
        )
        out.add_row(
            escape(label),
            row["cell_key"],
            flag_text(verdict.flag),
            f"{row['test_accuracy']:.4f}",
            f"{verdict.chance_accuracy:.4f}",
        )
    console.print(out)


# --- report ----------------------------------------------------------------------------------


def _mean_std(mean: float, std: float, fmt: str) -> str:
    if mean != mean:  # NaN
        return "-"
    return format(mean, fmt) + ("" if std != std else " ± " + format(std, fmt))


def _summary_table(summary: pd.DataFrame, n_cells: int) -> Table:
    table = Table(title=f"{n_cells} finished cell(s), mean ± std over seeds")
    keys = ["dataset", "arch", "label", "depth"]
    for column in [*keys, "seeds", "test acc", "val acc", "s/epoch", "threads"]:
        table.add_column(column, justify="left" if column in ("dataset", "label") else "right")
    for _, row in summary.iterrows():
        table.add_row(
            *(str(row[k]) for k in keys),
            str(row["seeds"]),
            _mean_std(row["test_accuracy"], row["test_accuracy_std"], ".4f")
            + (f" [yellow]{flag}[/]" if (flag := summary_flag(row)) else ""),
            _mean_std(row["val_accuracy"], row["val_accuracy_std"], ".4f"),
            _mean_std(row["seconds_per_epoch"], row["seconds_per_epoch_std"], ".3g"),
            str(row["threads"]),
        )
    return table


def _grid_table(grid: GridTable) -> Table:
    table = Table(title=grid.title, caption=grid.note or None)
    table.add_column(grid.row_header)
    for column in grid.columns:
        table.add_column(column, justify="right")
    for row in grid.rows:
        table.add_row(row, *(format_stat(grid.get(row, c), grid.fmt) for c in grid.columns))
    return table


_TIME_METRIC_NAMES = {
    "seconds_per_epoch": "total",
    "forward_seconds_per_epoch": "feedforward",
    "backward_seconds_per_epoch": "backprop",
}


def _comparison_table(comparison: pd.DataFrame) -> Table:
    table = Table(title="Published (paper) vs ours: difference = ours - published")
    for column in (
        "source",
        "dataset",
        "depth",
        "paper",
        "our config",
        "published",
        "ours",
        "diff",
    ):
        table.add_column(column, justify="right" if column in ("depth", "diff") else "left")
    table.add_column("ours/paper", justify="right")
    table.add_column("note", overflow="fold")
    for _, r in comparison.iterrows():
        accuracy = r["metric"] == "test_accuracy"
        fmt = ".2f" if accuracy else ".4g"
        unit = "%" if accuracy else " s/ep"
        what = "" if accuracy else " " + _TIME_METRIC_NAMES.get(r["metric"], r["metric"])
        table.add_row(
            r["source"],
            group_name(r["dataset"], r["arch"]),
            str(r["depth"]),
            r["paper_label"] + what,
            r["label"],
            format(r["published"], fmt) + unit,
            _mean_std(r["ours"], r["ours_std"], fmt) + unit,
            format(r["difference"], "+" + fmt),
            "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.3g}",
            r["note"],
        )
    return table


def cmd_report(args: argparse.Namespace) -> int:
    from runner.report.build import build_report
    from runner.report.configs import not_learned_cells

    report = build_report(args.results_dir, args.out, compare_paper=args.compare_paper)
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
    if analysis.cells.empty:
        console.print(f"No finished cells in {escape(str(args.results_dir))} yet.")
    else:
        console.print(_summary_table(analysis.summary, len(analysis.cells)))
        for grid in [*analysis.accuracy, *analysis.timing, *analysis.depth]:
            console.print(_grid_table(grid))
        for grid in [*analysis.active_set_tables, *analysis.probe_tables]:
            console.print(_grid_table(grid))
    flagged = not_learned_cells(analysis.cells)
    if not flagged.empty:
        console.print(
            f"[yellow]{len(flagged)} finished cell(s) did not learn[/] (marked ⚠ in the tables; "
            "the page lists them and why)"
        )
    if report.comparison is not None:
        if report.comparison.empty:
            console.print("No configuration of this sweep matches a published number.")
        else:
            console.print(_comparison_table(report.comparison))
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


# --- export ----------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from runner.export.mlflow_runs import export_mlflow
    from runner.export.tensorboard_runs import export_tensorboard

    if args.to == "mlflow":
        if args.out:
            raise CpusweepError("--out is for --to tensorboard; MLflow takes --tracking-uri URI")
        s = export_mlflow(args.results_dir, args.tracking_uri, args.experiment)
    else:
        if args.tracking_uri or args.experiment:
            raise CpusweepError(
                "--tracking-uri and --experiment are for --to mlflow; TensorBoard takes --out DIR"
            )
        s = export_tensorboard(args.results_dir, args.out)
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


# --- data ------------------------------------------------------------------------------------


def cmd_data_list(args: argparse.Namespace) -> int:
    from runner.datasets.files import human_size
    from runner.datasets.inventory import inventory
    from runner.datasets.locations import resolve_data_root

    root = resolve_data_root(args.data_root)
    entries = inventory(root)
    console.print(f"[bold]Official files in {escape(str(root))}[/]")
    for entry in entries:
        present = [f for f in entry.files if f.bytes is not None]
        if not entry.files:
            state = "bundled with scikit-learn, nothing to fetch"
        else:
            state = f"{len(present)} of {len(entry.files)} official files"
        console.print(f"{entry.info.name} ({entry.info.summary}): {state}")
        for f in entry.files:  # lines, not a table: paths and sha256 must never be folded
            shown = f.path.relative_to(root)
            if f.bytes is None:
                console.print(f"  [red]missing[/] {escape(str(shown))}")
            else:
                console.print(f"  {escape(str(shown))}  {human_size(f.bytes)}  sha256 {f.sha256}")

    prepared = Table(title=f"prepared splits in {escape(str(root / 'prepared'))}")
    for column in ("dataset", "version", "split seed", "train / val / test", "size", "mean / std"):
        prepared.add_column(column)
    prepared.add_column("state", overflow="fold")
    for entry in entries:
        for p in entry.prepared:
            sizes = p.sizes or {}
            prepared.add_row(
                entry.info.name,
                str(p.version),
                str(p.split_seed),
                " / ".join(str(sizes.get(s, "?")) for s in ("train", "val", "test")),
                human_size(p.bytes),
                "-" if p.norm_mean is None else f"{p.norm_mean:.4f} / {p.norm_std:.4f}",
                "[green]ok[/]" if p.problem is None else f"[yellow]{escape(p.problem)}[/]",
            )
    if prepared.row_count:
        console.print(prepared)
    else:
        console.print("No prepared splits yet.")
    console.print("Prepare with: python -m runner data prepare NAME... [--data-root DIR]")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from runner.datasets.files import human_size
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.datasets.prepared import info_for, prepare
    from runner.errors import DatasetError

    for name in args.names:  # every name checked before anything is fetched
        info_for(name)
    root = resolve_data_root(args.data_root)
    failures = []
    for name in args.names:
        try:
            splits = prepare(
                name,
                root,
                args.split_seed,
                download=downloads_allowed(),
                verify_checksums=not args.skip_checksums,
            )
        except DatasetError as exc:
            failures.append(str(exc))
            err_console.print(f"[red]{name}: not prepared[/]")
            continue
        sizes = splits.sizes()
        where = "in memory only (not stored)" if splits.path is None else str(splits.path)
        stored = sum(a.nbytes for a in splits.arrays.values())
        console.print(
            f"[green]{name}[/]: {sizes['train']} / {sizes['val']} / {sizes['test']} "
            f"(train / val / test, split seed {args.split_seed}), {human_size(stored)}, "
            f"mean {splits.norm_mean:.4f} std {splits.norm_std:.4f} -> {escape(where)}"
        )
    if failures:
        raise DatasetError("\n".join(failures))
    return 0


# --- bench -------------------------------------------------------------------------------------


def _csv(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {text!r}") from None

    return parse


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    """The runner's own throughput (and, with --pinning, timing spread with and without)."""
    import json
    import tempfile

    from runner.bench import calibrate_epochs, sweep_bench

    with console.status("calibrating the benchmark cell"):
        epochs = calibrate_epochs(args.cell_seconds)
    runs = []
    for pin in (False, True) if args.pinning else (False,):
        with (
            tempfile.TemporaryDirectory() as folder,
            console.status(f"sweep of {args.cells} cells ({epochs} epochs each), pinning {pin}"),
        ):
            runs.append(sweep_bench(args.cells, epochs, args.cpus, pin, folder))
    table = Table(title="Sweep throughput on a local Ray (cells timed from inside)")
    for column in (
        "pinned",
        "cells",
        "slots",
        "cell s",
        "span s",
        "utilization",
        "overhead/cell s",
        "of a 1-min cell",
        "s/epoch CV",
    ):
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(
            str(r.pinned),
            str(r.cells),
            str(r.slots),
            f"{r.cell_seconds:.2f}",
            f"{r.span_seconds:.1f}",
            f"{r.utilization:.3f}",
            f"{r.overhead_per_cell:.3f}",
            f"{100 * r.overhead_per_cell / 60:.2f}%",
            f"{100 * r.spread:.2f}%",
        )
    console.print(table)
    console.print("targets: utilization >= 0.9; overhead per cell < 1% of a one-minute cell")
    if args.json:
        Path(args.json).write_text(
            json.dumps([r.as_json() for r in runs], indent=2) + "\n", encoding="utf-8"
        )
        console.print(f"Wrote {args.json}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    if args.sweep or args.pinning:
        return cmd_bench_sweep(args)

    from methods.registry import METHODS
    from runner.bench import BenchConfig, machine, run_bench

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise CpusweepError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    config = BenchConfig(
        methods=tuple(args.methods),
        depths=tuple(args.depths),
        batch_sizes=tuple(args.batch_sizes),
        width=args.width,
        repeats=args.repeats,
        examples_batch1=args.examples_batch1,
        examples_batched=args.examples_batched,
    )
    host = machine()
    console.print(
        f"Benchmark on {host['cpu_model']}, torch {host['torch_version']}, "
        f"{host['torch_threads']} torch thread(s); {config.repeats} repeats, "
        f"{config.examples_batch1} examples at batch 1, {config.examples_batched} "
        "otherwise"
    )
    with console.status("benchmarking") as status:
        records = run_bench(config, progress=lambda message: status.update(message))
    table = Table(title="Seconds per MNIST-sized epoch (extrapolated) and median ratios")
    for column in (
        "method",
        "batch",
        "depth",
        "opt",
        "s/epoch",
        "x plain",
        "x standard",
        "IQR",
        "x std same opt",
        "data",
        "fwd",
        "bwd",
        "step",
        "upkeep",
        "active",
        "computed",
        "target",
    ):
        table.add_column(column, justify="left" if column in ("method", "opt") else "right")
    for r in records:
        share = r.phase_share
        verdict = (
            ""
            if r.target_met is None
            else ("[green]✓ " if r.target_met else "[red]✗ ") + r.target + "[/]"
        )
        table.add_row(
            r.method,
            str(r.batch_size),
            str(r.depth),
            r.optimizer,
            f"{r.seconds_per_epoch:.1f}",
            f"{r.ratio_vs_plain:.2f}",
            f"{r.ratio_vs_standard:.2f}",
            f"{r.ratio_vs_standard_iqr[0]:.2f}-{r.ratio_vs_standard_iqr[1]:.2f}",
            f"{r.ratio_vs_standard_same_optimizer:.2f}",
            *(f"{100 * share[p]:.1f}%" for p in ("data", "forward", "backward", "step", "upkeep")),
            f"{100 * r.extra['active_share']:.1f}%",
            f"{100 * r.extra['computed_share']:.1f}%",
            verdict,
        )
    console.print(table)
    console.print(
        "active: share of each hidden layer's units an example uses (pairs kept for "
        "MC-APPROX's sampled products); computed: units a step computes (the batch's union for "
        "ALSH-APPROX and dropout); medians over repeats, means over hidden layers"
    )
    if args.json:
        payload = {
            "machine": host,
            "config": {
                "width": config.width,
                "examples_batch1": config.examples_batch1,
                "examples_batched": config.examples_batched,
                "repeats": config.repeats,
            },
            "records": [r.as_json() for r in records],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        console.print(f"Wrote {escape(str(args.json))}")
    return 0


# --- entry point -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner",
        description="Run resumable sweeps of sampling-based training methods on CPUs.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    # -v after the command too (`submit JOB -v`); SUPPRESS keeps the top-level one otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log more"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "submit", help="run a job's cells that are not done yet (the resume)", parents=[common]
    )
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--results", help="results folder (default: results/<name>)")
    p.add_argument(
        "--data-root",
        help="dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)",
    )
    p.add_argument("--cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
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

    p = sub.add_parser(
        "slurm",
        help="write (and --submit) an sbatch script that runs the sweep on a SLURM cluster",
        parents=[common],
    )
    p.add_argument("job", help="job file (TOML)")
    p.add_argument("--nodes", type=_positive_int, default=1, help="nodes (default: 1)")
    p.add_argument(
        "--cpus-per-node",
        type=_positive_int,
        help="CPUs per node (default: whole nodes, every CPU of each)",
    )
    p.add_argument("--mem-per-cpu", help="memory per CPU, SLURM's syntax (e.g. 2000, 2G)")
    p.add_argument("--time", help="time limit, SLURM's syntax (e.g. 04:00:00, 1-00:00:00)")
    p.add_argument("--partition", help="partition (default: the cluster's default)")
    p.add_argument("--account", help="account to charge")
    p.add_argument("--results", help="results folder (default: results/<name>)")
    p.add_argument(
        "--data-root",
        help="dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)",
    )
    p.add_argument(
        "--container",
        metavar="IMAGE.sif",
        help="run every Ray node and the driver in this Apptainer image (docker/cpusweep.def)",
    )
    p.add_argument(
        "--submit", action="store_true", help="also submit it with sbatch; prints the job id"
    )
    p.set_defaults(func=cmd_slurm)

    p = sub.add_parser(
        "plan", help="show the cells and what is done, without running", parents=[common]
    )
    p.add_argument("job")
    p.add_argument("--results")
    p.add_argument("--all", action="store_true", help="list every cell")
    p.add_argument("--bench", help="a `runner bench --json` file, for time estimates")
    p.add_argument(
        "--cpus", type=_positive_int, help="CPUs the sweep will have (default: this machine's)"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "status", help="what a results folder holds: done, failed, to run", parents=[common]
    )
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "report",
        help="tables, figures and a page from a results folder (and Parquet files)",
        parents=[common],
    )
    p.add_argument("results_dir")
    p.add_argument("--out", help="output folder (default: RESULTS_DIR/report)")
    p.add_argument(
        "--compare-paper",
        action="store_true",
        help="put the paper's published numbers beside ours, with the difference",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "export",
        help="export a results folder to MLflow (runs) or TensorBoard (event files)",
        parents=[common],
    )
    p.add_argument("results_dir")
    p.add_argument("--to", choices=("mlflow", "tensorboard"), required=True)
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///RESULTS_DIR/mlflow/mlflow.db)",
    )
    p.add_argument("--experiment", help="MLflow experiment (default: the job's name)")
    p.add_argument("--out", help="TensorBoard log folder (default: RESULTS_DIR/tensorboard)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "bench", help="time each method against a plain PyTorch loop", parents=[common]
    )
    p.add_argument(
        "--methods",
        type=_csv(str),
        default=["standard", "dropout", "adaptive_dropout", "mc_approx", "alsh_approx"],
        help="comma-separated",
    )
    p.add_argument("--depths", type=_csv(int), default=[3, 7], help="comma-separated")
    p.add_argument("--batch-sizes", type=_csv(int), default=[1, 20], help="comma-separated")
    p.add_argument("--width", type=int, default=1000)
    p.add_argument(
        "--repeats",
        type=int,
        default=4,
        help="timed repeats, alternately in forward and reverse order",
    )
    p.add_argument(
        "--examples-batch1",
        type=int,
        default=1000,
        help="training examples per timed epoch at batch 1",
    )
    p.add_argument(
        "--examples-batched",
        type=int,
        default=10000,
        help="training examples per timed epoch at larger batches",
    )
    p.add_argument("--json", help="write the records to this file")
    p.add_argument(
        "--sweep",
        action="store_true",
        help="instead: the runner's throughput on a sweep of short cells",
    )
    p.add_argument(
        "--pinning",
        action="store_true",
        help="instead: that sweep with and without [resources] pin_cores",
    )
    p.add_argument("--cells", type=int, default=40, help="cells of the --sweep benchmark")
    p.add_argument(
        "--cell-seconds", type=float, default=5.0, help="about how long each --sweep cell trains"
    )
    p.add_argument("--cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("data", help="list and prepare datasets in the data root", parents=[common])
    data = p.add_subparsers(dest="data_command", required=True)
    data_root_help = "dataset folder (default: $CPUSWEEP_DATA_ROOT, else ~/.cache/cpusweep/data)"
    p = data.add_parser(
        "list", help="official files (sizes, sha256) and prepared splits", parents=[common]
    )
    p.add_argument("--data-root", help=data_root_help)
    p.set_defaults(func=cmd_data_list)
    p = data.add_parser(
        "prepare", help="fetch (where allowed) and convert datasets", parents=[common]
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s)")
    p.add_argument("--data-root", help=data_root_help)
    p.add_argument("--split-seed", type=int, default=0, help="validation split seed (default 0)")
    p.add_argument(
        "--skip-checksums",
        action="store_true",
        help="do not compare with published checksums (files you made or re-encoded "
        "yourself); sizes and structure are still checked",
    )
    p.set_defaults(func=cmd_data_prepare)
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
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    except KeyboardInterrupt:
        err_console.print(f"[yellow]Interrupted.[/] Resume with: {escape(_resume_command())}")
        return 130
