"""Cells that stop early (runner/results/stops.py): a loss that is not finite stops a cell at
once, a time budget after the epoch that crosses it; both are recorded, flagged in status and
the report, and left out of means unless asked. Neither enters the cell key."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

import methods
import runner
from runner.cli.main import main
from runner.job.grid import expand
from runner.job.spec import parse_spec
from runner.results.stops import COMPLETED, DIVERGED, TIME_BUDGET, stop_reason
from runner.run.cellrun import run_cell

pytestmark = pytest.mark.slow

TRAIN = 200  # train_limit: 10 steps per epoch at batch 20
JOB = {
    "name": "stops",
    "grid": {"lr": [0.05, 1e8]},  # 1e8: the loss becomes NaN within the first epoch
    "params": {
        "method": "standard",
        "dataset": "digits",
        "width": 32,
        "depth": 2,
        "epochs": 3,
        "batch_size": 20,
        "optimizer": "sgd",
        "train_limit": TRAIN,
    },
}


def one_cell(**params: Any) -> Any:
    text = "\n".join(
        ['name = "one"', "[params]"]
        + [f"{k} = {v!r}".replace("'", '"') for k, v in {**JOB["params"], **params}.items()]
    )
    (cell,) = expand(parse_spec(text.replace("True", "true"), "one.toml")).cells
    return cell


def test_a_nan_loss_stops_the_cell_at_that_step_before_its_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 14th training forward pass (epoch 2, its 4th step) returns NaN: the cell stops
    there, records 13 updates, 1 full epoch, and finite weights (no NaN update was made)."""
    build = methods.build
    calls = {"n": 0}

    def build_poisoned(*args: Any, **kwargs: Any) -> Any:
        model = build(*args, **kwargs)
        forward = model.forward

        def poisoned(x: torch.Tensor) -> torch.Tensor:
            out = forward(x)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 14:
                    return out * float("nan")
            return out

        model.forward = poisoned  # type: ignore[method-assign]
        return model

    monkeypatch.setattr(methods, "build", build_poisoned)
    cell = one_cell(lr=0.05)
    result = run_cell(cell.to_payload())
    assert result["status"] == "ok", result.get("failure")
    row = result["row"]
    assert calls["n"] == 14, "training went on after the NaN"
    assert (row["stop_reason"], row["diverged_at_step"]) == (DIVERGED, 14)
    assert (row["steps"], row["epochs_done"]) == (13, 1)
    history = row["history"]
    assert [h["steps"] for h in history] == [10, 3]  # the second epoch cut short
    assert math.isnan(history[-1]["train_loss"]) and math.isfinite(history[0]["train_loss"])
    assert row["diverged"] and row["learning_flag"] == DIVERGED
    assert row["seconds_per_epoch"] == history[0]["train_seconds"]  # full epochs only
    assert math.isfinite(row["test_loss"]), "a NaN update reached the weights"


def test_a_cell_without_problems_is_unchanged_by_a_generous_budget() -> None:
    """The budget is not in the key, and a budget that is not reached changes nothing."""
    plain = run_cell(one_cell(lr=0.05).to_payload())["row"]
    budget = run_cell(one_cell(lr=0.05).to_payload(), max_cell_minutes=60.0)["row"]
    assert plain["cell_key"] == budget["cell_key"]
    assert plain["weights_sha256"] == budget["weights_sha256"]
    assert (plain["stop_reason"], budget["stop_reason"]) == (COMPLETED, COMPLETED)
    assert (plain["max_cell_minutes"], budget["max_cell_minutes"]) == (None, 60.0)
    assert plain["epochs_done"] == budget["epochs_done"] == 3

    tiny = run_cell(one_cell(lr=0.05).to_payload(), max_cell_minutes=1e-9)["row"]
    assert (tiny["stop_reason"], tiny["epochs_done"], tiny["steps"]) == (TIME_BUDGET, 1, 10)
    assert [h["epoch"] for h in tiny["history"]] == [1]
    assert tiny["history"][0]["train_loss"] == plain["history"][0]["train_loss"]


def test_stopped_cells_are_flagged_and_left_out_of_means_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    job = {**JOB, "resources": {"max_cell_minutes": 1e-9}}
    result = runner.submit(job, results, executor="serial")
    assert result.exit_code == 0 and len(result.finished) == 2
    cells, _ = runner.load(results)
    by_lr = {float(r["lr"]): r for r in cells.to_dict("records")}
    assert stop_reason(by_lr[1e8]) == DIVERGED and by_lr[1e8]["epochs_done"] == 0
    assert stop_reason(by_lr[0.05]) == TIME_BUDGET and by_lr[0.05]["epochs_done"] == 1

    folder = runner.status(results)
    assert {s.reason for s in folder.stopped} == {DIVERGED, TIME_BUDGET}
    overview = runner.overview(results)
    assert overview["stopped"].tolist() == [1, 1]
    assert overview["test_accuracy"].isna().all()  # nothing left to average
    counted = runner.overview(results, include_stopped=True)
    assert not counted["test_accuracy"].isna().any()

    report = runner.report(results, tmp_path / "report")
    page = report.page_path.read_text(encoding="utf-8")
    section = page.split("## Cells that stopped early", 1)[1].split("\n## ", 1)[0]
    assert "left out of the means" in section and "⏹ time_budget" in section
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 finished cell(s) stopped before their last epoch" in out

    # Without the budget, --rerun-stopped runs the budget-stopped cell again, to its end;
    # the diverged one is finished for good.
    again = runner.submit(JOB, results, executor="serial", rerun_stopped=True)
    assert len(again.finished) == 1
    cells, _ = runner.load(results)
    rerun = cells[cells["lr"] == 0.05].iloc[0]
    assert (rerun["stop_reason"], rerun["epochs_done"]) == (COMPLETED, 3)
    assert not runner.submit(JOB, results, executor="serial", rerun_stopped=True).ran
