"""The `bench` verb: each method timed against a plain PyTorch loop, or (--sweep, --pinning)
the runner's own throughput on a local Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from runner.cli.output import console


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    """The runner's own throughput (and, with --pinning, timing spread with and without)."""
    import json
    import tempfile

    from runner.bench.sweep import calibrate_epochs, sweep_bench

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

    from runner.bench.epochs import BenchConfig, machine, method_hyper, run_bench

    chosen = tuple(args.methods or BenchConfig.methods)
    for spec in chosen:
        method_hyper(spec)  # a CpusweepError names what is wrong, before anything runs
    config = BenchConfig(
        methods=chosen,
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
        "x floor",
        "x blas",
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
        if "bound_target_met" in r.extra:
            met = r.extra["bound_target_met"]
            verdict += (" " if verdict else "") + (
                ("[green]✓ " if met else "[red]✗ ") + r.extra["bound_target"] + "[/]"
            )
        if "diverged_after_steps" in r.extra:  # timed on a few steps only: not a normal result
            verdict += (" " if verdict else "") + (
                f"[yellow]⚠ diverged after {r.extra['diverged_after_steps']} steps: "
                "timed on those, scaled[/]"
            )
        floor, blas = r.extra.get("ratio_to_bound"), r.extra.get("ratio_to_blas_bound")
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
            "" if floor is None else f"{floor:.2f}",
            "" if blas is None else f"{blas:.2f}",
            verdict,
        )
    console.print(table)
    console.print(
        "active: share of each hidden layer's units an example uses (pairs kept for "
        "MC-APPROX's sampled products); computed: units a step computes (the batch's union for "
        "ALSH-APPROX and dropout); medians over repeats, means over hidden layers; x floor: "
        "the epoch against its minimum FLOPs (forward, weight and input gradients) at this "
        f"machine's measured single-thread matrix-multiply rate, "
        f"{records[0].extra['matmul_gflops']:.1f} GFLOP/s; x blas: against the step's own "
        "products alone, in step order (what the BLAS needs on these shapes; the rest is the "
        "code's); both against a dense step's work, which MC-APPROX does not all do (below 1: "
        "work it skips)"
        if records
        else ""
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
