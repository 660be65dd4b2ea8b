"""`python -m runner bench --sweep` (and `--pinning`): the runner itself, the throughput of a
real sweep of short cells on a local Ray, with and without core pinning."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SweepBench:
    cells: int
    slots: int
    cell_seconds: float  # mean wall time of a cell, measured inside it
    span_seconds: float  # first cell's start to last cell's end
    utilization: float  # sum of cell times / (span x slots)
    overhead_per_cell: float  # seconds of slot time per cell not spent inside a cell
    pinned: bool
    spread: float  # coefficient of variation of the cells' seconds per epoch
    nodes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "cells": self.cells,
            "slots": self.slots,
            "cell_seconds": self.cell_seconds,
            "span_seconds": self.span_seconds,
            "utilization": self.utilization,
            "overhead_per_cell": self.overhead_per_cell,
            "overhead_share_of_one_minute_cell": self.overhead_per_cell / 60.0,
            "pinned": self.pinned,
            "seconds_per_epoch_cv": self.spread,
            "nodes": self.nodes,
        }


def _job_text(name: str, cells: int, epochs: int, pin: bool) -> str:
    seeds = ", ".join(str(s) for s in range(cells))
    return f"""
name = "{name}"
[grid]
seed = [{seeds}]
[params]
method = "standard"
dataset = "digits"
width = 256
depth = 2
batch_size = 1
lr = 0.01
epochs = {epochs}
[resources]
memory_gb = 1.0
checkpoint_every = 0
pin_cores = {"true" if pin else "false"}
"""


def calibrate_epochs(cell_seconds: float) -> int:
    """Epochs of the benchmark's digits cell that take about `cell_seconds` on this machine."""
    from runner.job.grid import expand
    from runner.job.spec import parse_spec
    from runner.run.cellrun import run_cell

    cell = expand(parse_spec(_job_text("calibrate", 1, 1, False))).cells[0]
    result = run_cell(cell.to_payload())
    if result["status"] != "ok":
        raise RuntimeError(f"calibration cell failed: {result['failure']['message']}")
    return max(1, round(cell_seconds / float(result["row"]["seconds_per_epoch"])))


def sweep_bench(
    cells: int, epochs: int, cpus: int | None, pin: bool, results_dir: Any
) -> SweepBench:
    """Run a real sweep of `cells` identical short cells on a local Ray and measure how busy
    its CPU slots were from the first cell's start to the last cell's end."""
    from datetime import datetime
    from pathlib import Path

    from runner.job.grid import expand
    from runner.job.spec import parse_spec
    from runner.results.store import ResultsStore
    from runner.run.checkpoint import prepare_checkpoints
    from runner.run.executors import RayExecutor
    from runner.run.sweep import make_plan, run_sweep

    spec = parse_spec(_job_text("sweep-bench", cells, epochs, pin))
    store = ResultsStore(Path(results_dir))
    store.prepare()
    plan = make_plan(expand(spec).cells, store.scan(), retry_failed=False)
    checkpoints = prepare_checkpoints(store.root, 0)
    executor = RayExecutor(
        spec.resources, None, cpus, None, False, checkpoints, pin_cores=1 if pin else 0
    )
    try:
        run_sweep(plan, store, executor)
        slots = executor.slots
    finally:
        executor.close()
    rows = store.finished_rows()
    if len(rows) != cells:
        raise RuntimeError(f"{cells - len(rows)} benchmark cell(s) did not finish")
    starts = [datetime.fromisoformat(r["started_at"]).timestamp() for r in rows]
    ends = [datetime.fromisoformat(r["finished_at"]).timestamp() for r in rows]
    busy = sum(float(r["wall_seconds"]) for r in rows)
    span = max(ends) - min(starts)
    per_epoch = [float(r["seconds_per_epoch"]) for r in rows]
    mean = statistics.fmean(per_epoch)
    return SweepBench(
        cells=cells,
        slots=slots,
        cell_seconds=busy / cells,
        span_seconds=span,
        utilization=busy / (span * slots),
        overhead_per_cell=(span * slots - busy) / cells,
        pinned=pin,
        spread=statistics.pstdev(per_epoch) / mean if mean else float("nan"),
        nodes=sorted({str(r["node"]) for r in rows}),
    )
