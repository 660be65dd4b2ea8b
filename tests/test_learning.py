"""STANDARD learns real data that needs no download (scikit-learn's digits)."""

from __future__ import annotations

import pytest

from runner.cellrun import run_cell
from runner.cells import Cell
from runner.spec import SHARED_PARAMS


def digits_cell(**values: object) -> Cell:
    base = {p.name: p.default for p in SHARED_PARAMS}
    base.update(method="standard", dataset="digits", width=128, depth=2, epochs=5)
    base.update(values)
    return Cell(values=base, torch_threads=1)


@pytest.mark.parametrize(("batch_size", "lr"), [(1, 0.01), (20, 0.1)])
def test_standard_learns_digits_well_above_chance(batch_size: int, lr: float) -> None:
    result = run_cell(digits_cell(batch_size=batch_size, lr=lr).to_payload())
    assert result["status"] == "ok", result.get("failure")
    row = result["row"]
    assert row["test_accuracy"] > 0.9  # chance is 0.1
    history = row["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    confusion = row["confusion_matrix"]
    assert sum(map(sum, confusion)) == row["test_size"] == 360
    assert sum(confusion[i][i] for i in range(10)) / 360 == pytest.approx(row["test_accuracy"])
    # Timing split adds up: training time is the sum of its phases.
    phases = sum(row[f"{p}_seconds"] for p in ("data", "forward", "backward", "step", "upkeep"))
    assert row["train_seconds"] == pytest.approx(phases)
    assert row["seconds_per_epoch"] == pytest.approx(row["train_seconds"] / 5)
