"""Every method learns real data that needs no download (scikit-learn's digits), at batch 1
and batch 20, with each method's default hyperparameters (5% keep rates, K = 6 / L = 5,
k = 10, ...). Learning rates and widths are per method: what a few epochs on 1257 images
need, not the paper's 50 MNIST epochs."""

from __future__ import annotations

from typing import Any

import pytest

from methods.registry import METHODS
from runner.job.cells import Cell
from runner.job.spec import SHARED_PARAMS
from runner.run.cellrun import run_cell


def digits_cell(**values: object) -> Cell:
    base: dict[str, Any] = {p.name: p.default for p in SHARED_PARAMS}
    base.update(method="standard", dataset="digits", width=128, depth=2, epochs=5)
    base.update(values)
    method = str(base["method"])
    for param in METHODS[method].params:
        base.setdefault(f"{method}.{param.name}", param.default)
    return Cell(values=base, torch_threads=1)


CASES = [
    # method, batch size, settings
    ("standard", 1, {"lr": 0.01}),
    ("standard", 20, {"lr": 0.1}),
    # 5% of the units kept, scaled by 20: a wide layer and a small step.
    ("dropout", 1, {"lr": 1e-3, "width": 1000, "epochs": 6}),
    ("dropout", 20, {"lr": 1e-2, "width": 1000, "epochs": 10}),
    # Standout keeps ~5% without rescaling: tiny signals, so a large step.
    ("adaptive_dropout", 1, {"lr": 0.1, "width": 512, "epochs": 6}),
    ("adaptive_dropout", 20, {"lr": 1.0, "width": 512, "epochs": 10}),
    ("mc_approx", 1, {"lr": 0.01}),
    ("mc_approx", 20, {"lr": 0.05}),
    ("alsh_approx", 1, {"lr": 3e-3, "optimizer": "adam", "width": 256}),
    ("alsh_approx", 20, {"lr": 3e-3, "optimizer": "adam", "width": 256}),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "batch_size", "settings"), CASES, ids=[f"{m}-b{b}" for m, b, _ in CASES]
)
def test_every_method_learns_digits_well_above_chance(
    method: str, batch_size: int, settings: dict[str, Any]
) -> None:
    cell = digits_cell(method=method, batch_size=batch_size, **settings)
    result = run_cell(cell.to_payload())
    assert result["status"] == "ok", result.get("failure")
    row = result["row"]
    assert row["test_accuracy"] > 0.5, row["test_accuracy"]  # chance is 0.1
    history = row["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_result_row_is_consistent() -> None:
    result = run_cell(digits_cell(batch_size=20, lr=0.1).to_payload())
    assert result["status"] == "ok", result.get("failure")
    row = result["row"]
    confusion = row["confusion_matrix"]
    assert sum(map(sum, confusion)) == row["test_size"] == 360
    assert sum(confusion[i][i] for i in range(10)) / 360 == pytest.approx(row["test_accuracy"])
    # Timing split adds up: training time is the sum of its phases.
    phases = sum(row[f"{p}_seconds"] for p in ("data", "forward", "backward", "step", "upkeep"))
    assert row["train_seconds"] == pytest.approx(phases)
    assert row["seconds_per_epoch"] == pytest.approx(row["train_seconds"] / 5)
    assert row["steps"] == 5 * 63  # ceil(1257 / 20) steps per epoch
