"""The verbs that run or plan a job: submit, slurm and plan (each one API call, rendered)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from runner import api
from runner.api.jobs import results_folder
from runner.cli.output import console, hours, print_warning, resume_command
from runner.cli.progress import RichProgress
from runner.cli.tables import overview_table
from runner.job.select import from_command_line


def cmd_submit(args: argparse.Namespace) -> int:
    only, overrides = from_command_line(args.only, args.set)
    progress = RichProgress(console)
    try:
        result = api.submit(
            args.job,
            args.results,
            executor=args.executor,
            cpus=args.cpus,
            address=args.address,
            data_root=args.data_root,
            retry_failed=args.retry_failed,
            rerun_stopped=args.rerun_stopped,
            only=only,
            overrides=overrides,
            on_event=progress,
        )
    finally:
        progress.close()
    root = escape(str(result.results))
    if not result.ran:
        hint = " (re-run them with --retry-failed)" if result.plan.failed else ""
        console.print(f"Nothing to run{hint}.")
        return result.exit_code
    console.print(
        f"{len(result.finished)} cell(s) finished, {len(result.failed)} failed in "
        f"{result.seconds:.1f} s. Results: {root}"
    )
    overview = api.overview(result.results, {c.key for c in result.plan.cells})
    if not overview.empty:
        console.print(overview_table(overview))
    if result.not_learned:
        console.print(
            f"[yellow]{len(result.not_learned)} finished cell(s) did not learn[/] (test "
            "accuracy within noise of chance, or a diverged loss): `python -m runner status "
            f"{root}` lists them."
        )
    if result.interrupted:
        stopped = (
            f" {result.stopped} cell(s) running or queued were stopped, not failed: they run "
            "again on the next submit, from their last checkpoint if they have one."
            if result.stopped
            else ""
        )
        console.print(
            f"[yellow]Interrupted.[/] Every finished cell is saved.{stopped} Resume with:\n"
            f"  {escape(resume_command())}"
        )
    elif result.failed_in_job:
        console.print(
            f"{result.failed_in_job} cell(s) failed; see `python -m runner status {root}`, "
            "fix, then re-run with --retry-failed."
        )
    else:
        console.print(f"Next: python -m runner report {root}")
    return result.exit_code


def cmd_slurm(args: argparse.Namespace) -> int:
    from runner.clusters.slurm import SlurmJob, SlurmRequest, submit_script, write_script
    from runner.datasets.loading import ensure_available
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.results.store import ResultsStore

    spec = api.load_job(args.job)
    store = ResultsStore(results_folder(spec, args.results).absolute())
    store.prepare()
    plan = api.plan(spec, store.root)
    for warning in plan.warnings:
        print_warning(warning)
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
        command=resume_command(),
    )
    script = write_script(job)
    console.print(f"[bold]{spec.name}[/]: {plan.counts()} → {escape(str(store.root))}")
    console.print(f"Wrote {escape(str(script))}")
    if not args.submit:
        console.print(f"Submit it with: sbatch {escape(str(script))}  (or add --submit)")
        return 0
    if not plan.todo:
        console.print("Nothing to run: not submitted.")
        return 1 if plan.sweep.failed else 0
    job_id = submit_script(script, job.request)
    console.print(f"Submitted batch job {job_id}")
    console.print(
        f"output: {escape(str(store.root / 'slurm' / f'slurm-{job_id}.out'))}; "
        f"`squeue -j {job_id}` shows it; `python -m runner status {escape(str(store.root))}` "
        "the sweep. Run this command again to resume after the job ends."
    )
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    only, overrides = from_command_line(args.only, args.set)
    plan = api.plan(args.job, args.results, bench=args.bench, only=only, overrides=overrides)
    for warning in plan.warnings:
        print_warning(warning)
    table = Table(title=f"{plan.job.name}: {plan.counts()}")
    for column in ("#", "cell", "key", "state", "estimate"):
        table.add_column(column, justify="right" if column == "estimate" else "left")
    shown = plan.cells if args.all else plan.cells[:50]
    colours = {"done": "[green]done[/]", "failed": "[red]failed[/]", "to run": "to run"}
    for i, cell in enumerate(shown, start=1):
        estimate = plan.estimates.get(cell.key)
        seconds = estimate.seconds if estimate is not None else None
        table.add_row(
            str(i),
            cell.label(),
            cell.key,
            colours[plan.state(cell)],
            "" if seconds is None else hours(seconds),
        )
    console.print(table)
    if len(shown) < len(plan.cells):
        console.print(f"... {len(plan.cells) - len(shown)} more (--all shows every cell)")
    by_method = plan.by_method()
    if by_method:
        console.print(
            "to run by method: " + ", ".join(f"{m} {n}" for m, n in sorted(by_method.items()))
        )
    if plan.todo:
        known = [e for e in plan.estimates.values() if e.seconds is not None]
        sources: dict[str, int] = {}
        for e in known:
            sources[e.source] = sources.get(e.source, 0) + 1
        if known:
            cpus = args.cpus or os.cpu_count() or 1
            console.print(
                f"estimate for {len(known)} of {len(plan.todo)} cells to run: "
                f"{plan.cpu_hours():.2f} CPU-hours, about {hours(plan.wall_seconds(cpus))} of "
                f"wall time on {plan.slots(cpus)} slot(s) ({cpus} CPUs), longest first; from "
                + ", ".join(f"{source} ({n})" for source, n in sorted(sources.items()))
            )
        unknown = len(plan.todo) - len(known)
        if unknown:
            console.print(
                f"{unknown} cell(s) have no estimate yet: finish a few cells of the same method "
                "and batch size, or pass --bench FILE (from `python -m runner bench --json "
                "FILE`)"
            )
    console.print(f"results folder: {plan.results}")
    return 0
