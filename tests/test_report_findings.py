"""What the review asked the report to show: cells that did not learn, flagged everywhere;
ALSH-APPROX's active sets and through-the-tables accuracy by depth; MC-APPROX's two budgets
side by side. Fabricated rows in the real schema (tests/test_report.py's fabricate_row), with
exactly known numbers."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from runner.api.events import CellFinished, SweepStarted
from runner.cli.main import main
from runner.cli.progress import RichProgress
from runner.job.cells import Cell
from runner.job.grid import expand
from runner.job.spec import parse_spec
from runner.report.build import build_report
from runner.results.learning import CHANCE, DIVERGED, row_verdict
from runner.results.store import ResultsStore
from tests.test_report import fabricate_row

JOB = """
name = "findings"
[grid]
method = ["standard", "alsh_approx", "mc_approx"]
depth = [1, 2]
batch_size = [1]
seed = [0, 1]
[grid.mc_approx]
sample_ratio = [0.1, 0.0]
[params]
dataset = "mnist"
epochs = 3
width = 1000
[resources]
memory_gb = 1.0
"""


def learned_confusion(correct: int, wrong: int) -> list[list[int]]:
    """10 classes, `correct` right and `wrong` confused with the next class, per class."""
    matrix = np.zeros((10, 10), dtype=int)
    for c in range(10):
        matrix[c, c] = correct
        matrix[c, (c + 1) % 10] = wrong
    return matrix.tolist()


def chance_confusion() -> list[list[int]]:
    """Every test example predicted as class 0: chance (10%)."""
    matrix = np.zeros((10, 10), dtype=int)
    matrix[:, 0] = 30
    return matrix.tolist()


def overlap(layer: int, seed: int) -> float:
    return 0.1 * layer + 0.01 * seed


def ever(layer: int, seed: int) -> float:
    return 1.0 - 0.1 * layer - 0.02 * seed


def findings_row(cell: Cell, rng: np.random.Generator) -> dict[str, Any]:
    row = fabricate_row(cell, rng)
    v = cell.values
    depth, seed = int(v["depth"]), int(v["seed"])
    row["confusion_matrix"] = learned_confusion(25, 5)
    row["test_accuracy"] = 25 / 30
    row["diverged"] = False
    if cell.method == "standard" and depth == 2 and seed == 1:
        row["confusion_matrix"], row["test_accuracy"] = chance_confusion(), 0.1
    if cell.method == "alsh_approx" and depth == 2 and seed == 0:
        row["diverged"] = True
    if cell.method == "alsh_approx":
        row["approx_test_accuracy"] = 0.5 + 0.1 * seed
        row["test_size"] = 300
        row["chance_accuracy"] = 0.1
        last = row["history"][-1]
        stats = [s for s in last["stats"] if not s["name"].startswith("active_units")]
        for layer in range(1, depth + 1):
            stats += [
                {"name": f"active_overlap.layer{layer}", "value": overlap(layer, seed)},
                {"name": f"ever_active.layer{layer}", "value": ever(layer, seed)},
                {"name": f"active_share.layer{layer}", "value": 0.05},
                {"name": f"active_units.layer{layer}", "value": 50.0 + 10 * layer},
            ]
        stats.append({"name": "active_overlap_random", "value": 0.0256})
        last["stats"] = sorted(stats, key=lambda s: s["name"])
    return row


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("findings") / "results"
    store = ResultsStore(root)
    store.prepare()
    store.save_job(JOB)
    rng = np.random.default_rng(0)
    rows = {}
    for cell in expand(parse_spec(JOB)).cells:
        row = findings_row(cell, rng)
        store.write_result(row)
        rows[cell.key] = row
    return root, rows


def test_cells_that_did_not_learn_are_flagged_in_every_table(
    made: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    root, rows = made
    report = build_report(root, tmp_path / "report")
    cells = report.analysis.cells.set_index("cell_key")
    flagged = {k: f for k, f in cells["learning_flag"].items() if f}
    standard = next(
        k for k, r in rows.items() if r["method"] == "standard" and r["depth"] == 2 and r["seed"]
    )
    alsh = next(
        k
        for k, r in rows.items()
        if r["method"] == "alsh_approx" and r["depth"] == 2 and r["seed"] == 0
    )
    assert flagged == {standard: CHANCE, alsh: DIVERGED}
    depth2 = next(t for t in report.analysis.accuracy if "2 hidden" in t.title)
    stat = depth2.get("mnist", "STANDARD_S")
    assert stat is not None and stat.flag == "⚠ chance 1/2"
    assert stat.mean == pytest.approx(100 * statistics.fmean([25 / 30, 0.1]))
    alsh_stat = depth2.get("mnist", "ALSH-APPROX_S")
    # A diverged seed stopped early: flagged, and left out of the mean (runner/results/stops.py)
    assert alsh_stat is not None and alsh_stat.flag == "⚠ diverged 1/2 (not in means)"
    alsh_other = next(
        r
        for k, r in rows.items()
        if r["method"] == "alsh_approx" and r["depth"] == 2 and r["seed"] and r["batch_size"] == 1
    )
    assert alsh_stat.mean == pytest.approx(100 * alsh_other["test_accuracy"])
    unflagged = depth2.get("mnist", "MC-APPROX_S ratio=0.1")
    assert unflagged is not None and unflagged.flag == ""
    page = report.page_path.read_text(encoding="utf-8")
    section = page.split("## Cells that did not learn", 1)[1].split("\n## ", 1)[0]
    assert f"`{standard}`" in section and f"`{alsh}`" in section
    assert "10.00" in section  # the chance cell's accuracy, beside the chance level
    assert "⚠ chance 1/2" in page  # in the tables too


def test_the_cli_marks_them_in_report_and_status(
    made: tuple[Path, dict[str, dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = made
    assert main(["report", str(root), "--out", str(tmp_path / "r")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 finished cell(s) did not learn" in out and "⚠ chance" in out
    assert main(["status", str(root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 finished cell(s) did not learn" in out
    assert "standard/mnist d2 b1 s1" in out and "⚠ diverged" in out
    assert "diverged: training loss became NaN or infinite" in out


def test_live_output_never_prints_a_flagged_cell_like_a_normal_one() -> None:
    console = Console(record=True, width=300, force_terminal=False)
    progress = RichProgress(console)
    cell = expand(parse_spec(JOB)).cells[0]
    row = {
        "test_accuracy": 0.1,
        "seconds_per_epoch": 1.0,
        "torch_threads": 1,
        "wall_seconds": 3.0,
        "confusion_matrix": chance_confusion(),
        "diverged": False,
    }
    learned = {**row, "confusion_matrix": learned_confusion(25, 5), "test_accuracy": 0.83}
    try:  # the events runner.submit reports, as the command line renders them
        progress(SweepStarted("test executor", slots=1, cells=2))
        progress(CellFinished(cell, row, row_verdict(row)))
        progress(CellFinished(cell, learned, row_verdict(learned)))
    finally:
        progress.close()
    text = console.export_text()
    flagged, normal = [line for line in text.splitlines() if cell.key in line][:2]
    assert "⚠" in flagged and "DID NOT LEARN" in flagged and "✓" not in flagged
    assert "✓" in normal and "DID NOT LEARN" not in normal
    assert progress.not_learned == 1


def test_alsh_active_sets_by_depth_hold_the_rows_numbers(
    made: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    root, _ = made
    report = build_report(root, tmp_path / "report")
    tables = {t.title: t for t in report.analysis.active_set_tables}
    by_depth = tables["ALSH-APPROX_S: active sets and accuracy by depth, mnist"]
    assert by_depth.columns == ["1", "2"]

    def value(row: str, depth: int) -> float:
        stat = by_depth.get(row, str(depth))
        assert stat is not None
        return stat.mean

    seeds = (0, 1)
    for depth in (1, 2):
        assert value("test accuracy through the tables (%)", depth) == pytest.approx(
            100 * statistics.fmean(0.5 + 0.1 * s for s in seeds)
        )
        assert value("active-set overlap, last hidden layer", depth) == pytest.approx(
            statistics.fmean(overlap(depth, s) for s in seeds)
        )
        assert value("active-set overlap, largest of any layer", depth) == pytest.approx(
            statistics.fmean(max(overlap(i, s) for i in range(1, depth + 1)) for s in seeds)
        )
        assert value(
            "units ever active in the last epoch (%), fewest of any layer", depth
        ) == pytest.approx(
            100 * statistics.fmean(min(ever(i, s) for i in range(1, depth + 1)) for s in seeds)
        )
        assert value("active units per example (% of width, mean over layers)", depth) == (
            pytest.approx(5.0)
        )
        assert value(
            "units computed per step (% of width, mean over layers)", depth
        ) == pytest.approx(100 * statistics.fmean(50 + 10 * i for i in range(1, depth + 1)) / 1000)
    exact = by_depth.get("test accuracy, exact network (%)", "2")
    assert exact is not None and exact.flag == "⚠ diverged 1/2"
    per_layer = tables["ALSH-APPROX_S: active-set overlap per hidden layer, mnist"]
    layer2 = per_layer.get("layer 2", "2")
    assert layer2 is not None and layer2.mean == pytest.approx(
        statistics.fmean(overlap(2, s) for s in seeds)
    )
    assert per_layer.get("layer 2", "1") is None  # a 1-layer net has no second layer
    assert "0.026" in by_depth.note  # the random-set reference
    assert any(f.path.name == "active_sets_mnist.png" for f in report.figures)
    page = report.page_path.read_text(encoding="utf-8")
    assert "## ALSH-APPROX's active sets, beside Fig. 15 and Theorem 2" in page
    # Beside Fig. 15 and the Theorem 2 probe: between them on the page.
    assert (
        page.index("Fig. 15")
        < page.index("## ALSH-APPROX's active sets")
        < page.index("against Theorem 2")
    )


def test_mc_approx_budgets_are_labelled_by_what_they_keep(
    made: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    root, _ = made
    report = build_report(root, tmp_path / "report")
    labels = set(report.analysis.summary["label"])
    assert {"MC-APPROX_S ratio=0.1", "MC-APPROX_S k=10"} <= labels
    depth_table = next(t for t in report.analysis.depth if "Test accuracy" in t.title)
    assert {"MC-APPROX_S ratio=0.1", "MC-APPROX_S k=10"} <= set(depth_table.rows)
    assert not math.isnan(report.analysis.summary["test_accuracy"].iloc[0])


def test_time_tables_show_the_share_of_the_work_actually_done(
    made: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    """Every time table shows, beside the seconds, the share of each layer an example used
    and the share a step computed (ALSH-APPROX: its own 5% and the recorded units)."""
    root, _ = made
    report = build_report(root, tmp_path / "report")
    table = next(t for t in report.analysis.timing if "2 hidden layer(s), batch 1" in t.title)
    assert table.columns[-2:] == ["active share", "computed share"]
    alsh_active = table.get("ALSH-APPROX_S", "active share")
    alsh_computed = table.get("ALSH-APPROX_S", "computed share")
    assert alsh_active is not None and alsh_active.mean == pytest.approx(5.0)
    # Mean over the three epochs (fabricate_row's 50 + layer units in the first two, this
    # file's 50 + 10 x layer in the last), then over layers 1 and 2, of 1000 units.
    units = [statistics.fmean([50 + i, 50 + i, 50 + 10 * i]) for i in (1, 2)]
    assert alsh_computed is not None
    assert alsh_computed.mean == pytest.approx(100 * statistics.fmean(units) / 1000)
    standard = table.get("STANDARD_S", "active share")
    assert standard is not None and standard.mean == pytest.approx(100.0)


def test_work_shares_read_each_methods_instrumentation() -> None:
    from runner.report.active_sets import work_shares

    assert work_shares({}, 1000, 3) == (1.0, 1.0)  # STANDARD: everything, reported nothing
    alsh = {"active_share.layer1": 0.05, "active_share.layer2": 0.05}
    alsh |= {"active_units.layer1": 400.0, "active_units.layer2": 300.0}
    assert work_shares(alsh, 1000, 2) == pytest.approx((0.05, 0.35))
    dropout = {"keep_rate.layer1": 0.04, "keep_rate.layer2": 0.06, "active_units.layer1": 50.0}
    assert work_shares(dropout, 1000, 2) == pytest.approx((0.05, 0.05))
    # MC-APPROX, backward mode, depth 3: the input gradients of layers 2 and 3 are over
    # hidden units; layer 4's is over the 10 classes and layer 1's is never computed.
    mc = {
        "sampled_pairs.grad_input.layer2": 100.0,
        "sampled_pairs.grad_input.layer3": 120.0,
        "sampled_pairs.grad_input.layer4": 10.0,
    }
    assert work_shares(mc, 1000, 3) == pytest.approx((0.11, 1.0))
    forward = {"sampled_pairs.forward.layer1": 79.0, "sampled_pairs.forward.layer2": 100.0}
    assert work_shares(forward, 1000, 1) == pytest.approx((0.1, 1.0))
