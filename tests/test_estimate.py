"""Time estimates and longest-first ordering (pure: no torch, no Ray), and `plan`'s output."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runner.cli.main import main
from runner.errors import CpusweepError
from runner.job.cells import Cell
from runner.job.grid import expand
from runner.job.spec import parse_spec
from runner.run.estimate import Estimator, load_bench, longest_first, makespan, multiply_adds


def cells(body: str) -> list[Cell]:
    return expand(parse_spec(textwrap.dedent(body), "job.toml")).cells


BASE = """
    name = "e"
    [grid]
    method = ["standard", "dropout"]
    depth = [1, 3]
    batch_size = [1, 20]
    epochs = [2, 10]
    [params]
    dataset = "mnist"
    width = 100
"""


def row(cell: Cell, seconds_per_epoch: float, train_size: int = 55000) -> dict[str, Any]:
    return {**cell.values, "seconds_per_epoch": seconds_per_epoch, "train_size": train_size}


def test_same_configuration_scales_with_epochs_and_examples() -> None:
    all_cells = cells(BASE)
    reference = next(
        c
        for c in all_cells
        if c.method == "standard"
        and c.values["depth"] == 1
        and c.values["batch_size"] == 1
        and c.values["epochs"] == 2
    )
    estimator = Estimator([row(reference, 30.0)])
    longer = next(
        c
        for c in all_cells
        if c.method == "standard"
        and c.values["depth"] == 1
        and c.values["batch_size"] == 1
        and c.values["epochs"] == 10
    )
    estimate = estimator.estimate(longer)
    assert estimate.seconds == pytest.approx(300.0)
    assert estimate.source == "finished cells (same configuration)"
    limited = Cell(values={**longer.values, "train_limit": 5500}, torch_threads=1)
    assert estimator.estimate(limited).seconds == pytest.approx(30.0)


def test_other_depths_scale_by_multiply_adds_and_unknown_stays_unknown() -> None:
    all_cells = cells(BASE)
    shallow = next(
        c
        for c in all_cells
        if c.method == "standard"
        and c.values["depth"] == 1
        and c.values["batch_size"] == 1
        and c.values["epochs"] == 2
    )
    deep = next(
        c
        for c in all_cells
        if c.method == "standard"
        and c.values["depth"] == 3
        and c.values["batch_size"] == 1
        and c.values["epochs"] == 2
    )
    estimator = Estimator([row(shallow, 10.0)])
    ratio = multiply_adds(deep.values) / multiply_adds(shallow.values)
    assert estimator.estimate(deep).seconds == pytest.approx(20.0 * ratio)
    other_method = next(c for c in all_cells if c.method == "dropout")
    assert estimator.estimate(other_method).seconds is None
    assert estimator.estimate(other_method).source == "unknown"


def test_benchmark_records_give_estimates(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            {
                "records": [
                    {
                        "method": "dropout",
                        "batch_size": 20,
                        "depth": 3,
                        "width": 1000,
                        "seconds_per_epoch": 5.5,
                    },
                ]
            }
        )
    )
    estimator = Estimator(bench=load_bench(bench))
    cell = Cell(
        values={
            **cells(BASE)[0].values,
            "method": "dropout",
            "batch_size": 20,
            "depth": 3,
            "width": 1000,
            "epochs": 4,
            "dropout.keep": 0.05,
            "dropout.mask": "batch",
        },
        torch_threads=1,
    )
    assert estimator.estimate(cell).seconds == pytest.approx(22.0)
    assert estimator.estimate(cell).source == "benchmark (scaled)"
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CpusweepError, match="not a benchmark file"):
        load_bench(tmp_path / "bad.json")


def test_longest_first_without_any_data_uses_the_proxy() -> None:
    ordered = longest_first(cells(BASE), Estimator())
    costs = [Estimator().ordering_cost(c) for c in ordered]
    assert costs == sorted(costs, reverse=True)
    first = ordered[0].values
    assert (first["epochs"], first["depth"], first["batch_size"]) == (10, 3, 1)
    last = ordered[-1].values
    assert (last["epochs"], last["depth"], last["batch_size"]) == (2, 1, 20)


def test_makespan_is_the_longest_processing_time_schedule() -> None:
    assert makespan([3, 3, 2, 2, 2], slots=2) == 7
    assert makespan([5, 1, 1, 1], slots=4) == 5
    assert makespan([1.0] * 10, slots=1) == 10


def test_plan_prints_estimates_from_finished_cells(
    digits_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "r"
    assert main(["submit", str(digits_job), "--executor", "serial", "--results", str(results)]) == 0
    grown = digits_job.read_text().replace("seed = [0, 1]", "seed = [0, 1, 2]")
    grown_job = tmp_path / "grown.toml"
    grown_job.write_text(grown)
    capsys.readouterr()
    assert main(["plan", str(grown_job), "--results", str(results), "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 cells: 4 done, 0 failed, 2 to run" in out
    assert "estimate for 2 of 2 cells to run" in out
    assert "finished cells (same configuration) (2)" in out


def test_submit_runs_the_longest_cells_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runner.run.cellrun

    order: list[int] = []
    real = runner.run.cellrun.run_cell

    def recording(payload: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        order.append(int(payload["values"]["epochs"]))
        return real(payload, *args, **kwargs)

    monkeypatch.setattr(runner.run.cellrun, "run_cell", recording)
    job = tmp_path / "order.toml"
    job.write_text(
        textwrap.dedent("""
        name = "order"
        [grid]
        epochs = [1, 3, 2]
        [params]
        method = "standard"
        dataset = "digits"
        width = 8
        depth = 1
        batch_size = 20
        train_limit = 100
    """)
    )
    assert main(["submit", str(job), "--executor", "serial", "--results", str(tmp_path / "r")]) == 0
    assert order == [3, 2, 1]
