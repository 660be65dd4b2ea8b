"""Reports from fabricated results folders: exact numbers, every figure, partial sweeps.

Rows are written through ResultsStore.write_result, so they follow the real schema; every
expected number is computed here independently of runner/report/analysis.py (statistics module).
"""

from __future__ import annotations

import math
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from methods.registry import METHODS
from runner.cli.main import main
from runner.datasets.registry import DATASETS
from runner.job.cells import TRAINER_VERSION, Cell
from runner.job.grid import expand
from runner.job.spec import parse_spec
from runner.report.analysis import prediction_shares
from runner.report.build import build_report
from runner.report.configs import paper_label
from runner.report.published import PublishedDataError, load_published
from runner.report.theorem2 import fit_theorem2
from runner.results.schema import MEASURED_FIELDS
from runner.results.store import ResultsStore

PHASES = ("data", "forward", "backward", "step", "upkeep")
EPOCHS = 3
TRUE_C = 4.0  # the fabricated ALSH probe errors follow Theorem 2 with this c, plus noise

JOB = """
name = "fabricated"
description = "three methods, depth 1-3, batch 1 and 20, three seeds"
[grid]
method = ["standard", "alsh_approx", "mc_approx"]
depth = [1, 2, 3]
batch_size = [1, 20]
seed = [0, 1, 2]
[params]
dataset = "mnist"
epochs = 3
[[exclude]]
method = "alsh_approx"
batch_size = 20
[resources]
memory_gb = 1.0
"""


@dataclass
class Fabricated:
    root: Path
    cells: list[Cell]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # by key, as written


def fabricate_row(cell: Cell, rng: np.random.Generator) -> dict[str, Any]:
    """A result row in the real schema with arbitrary but known numbers."""
    v = cell.values
    depth = int(v["depth"])
    history = []
    cumulative = 0.0
    for epoch in range(1, EPOCHS + 1):
        phases = {f"{p}_seconds": float(rng.uniform(0.1, 2.0)) for p in PHASES}
        train = sum(phases.values())
        cumulative += train
        stats = []
        if cell.method == "alsh_approx":
            q = TRUE_C / (TRUE_C + 1.0)
            for layer in range(1, depth + 1):
                error = 1.0 - q**layer + float(rng.normal(0.0, 0.003))
                stats.append({"name": f"probe_rel_error.layer{layer}", "value": error})
                stats.append({"name": f"active_units.layer{layer}", "value": 50.0 + layer})
        if cell.method == "mc_approx":
            stats.append({"name": "sampled_pairs.grad_input.layer1", "value": 10.0 + epoch})
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(rng.uniform(0.1, 1.0)),
                "val_accuracy": float(rng.uniform(0.5, 1.0)),
                "val_loss": float(rng.uniform(0.1, 1.0)),
                "train_seconds": train,
                "cumulative_train_seconds": cumulative,
                **phases,
                "eval_seconds": float(rng.uniform(0.01, 0.1)),
                "stats": sorted(stats, key=lambda s: s["name"]),
            }
        )
    confusion = rng.integers(0, 30, size=(10, 10)).tolist()
    # Each column a value of its type (strings null): the writer refuses a 0 for a string.
    row: dict[str, Any] = {
        name: False if pa.types.is_boolean(t) else None if pa.types.is_string(t) else 0
        for name, t in MEASURED_FIELDS
    }
    row.update(v)
    full = DATASETS[cell.dataset].train
    limit = v.get("train_limit")
    row["train_size"] = full if limit is None else min(full, int(limit))
    totals = {f"{p}_seconds": sum(h[f"{p}_seconds"] for h in history) for p in PHASES}
    train_seconds = sum(totals.values())
    row.update(
        cell_key=cell.key,
        status="ok",
        test_accuracy=float(rng.uniform(0.1, 0.99)),
        val_accuracy=history[-1]["val_accuracy"],
        best_val_accuracy=max(h["val_accuracy"] for h in history),
        epochs_done=EPOCHS,
        train_seconds=train_seconds,
        seconds_per_epoch=train_seconds / EPOCHS,
        eval_seconds=sum(h["eval_seconds"] for h in history),
        **totals,
        torch_threads=1,
        requested_torch_threads=1,
        cpu_model="Fabricated CPU 9000",
        node="node-a" if int(v["seed"]) % 2 == 0 else "node-b",
        method_version=METHODS[cell.method].version,
        trainer_version=TRAINER_VERSION,
        dataset_version=DATASETS[cell.dataset].version,
        torch_version="2.99.0",
        python_version="3.11.9",
        confusion_matrix=confusion,
        history=history,
    )
    return row


def fabricate(root: Path, job: str = JOB, keep: Any = None, seed: int = 0) -> Fabricated:
    """Write job.toml and the rows of the cells `keep(cell)` accepts (all by default)."""
    store = ResultsStore(root)
    store.prepare()
    store.save_job(job)
    cells = expand(parse_spec(job)).cells
    made = Fabricated(root, cells)
    rng = np.random.default_rng(seed)
    for cell in cells:
        row = fabricate_row(cell, rng)
        if keep is None or keep(cell):
            store.write_result(row)
            made.rows[cell.key] = row
    return made


def expected_stat(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def by_config(made: Fabricated, method: str, depth: int, batch: int) -> list[dict[str, Any]]:
    return [
        r
        for r in made.rows.values()
        if r["method"] == method and r["depth"] == depth and r["batch_size"] == batch
    ]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fabricated, Any]:
    made = fabricate(tmp_path_factory.mktemp("report") / "results")
    report = build_report(made.root, compare_paper=True)
    return made, report


def test_parquet_files_hold_every_row_and_epoch(full: tuple[Fabricated, Any]) -> None:
    made, report = full
    cells = pd.read_parquet(report.cells_path).set_index("cell_key")
    assert set(cells.index) == set(made.rows) and len(cells) == 45
    assert "history" not in cells.columns
    for key, row in made.rows.items():
        assert cells.loc[key, "test_accuracy"] == row["test_accuracy"]
        assert cells.loc[key, "label"] == paper_label(row["method"], row["batch_size"])
        assert (
            np.array(cells.loc[key, "confusion_matrix"].tolist()).tolist()
            == (row["confusion_matrix"])
        )
    epochs = pd.read_parquet(report.epochs_path)
    assert len(epochs) == 45 * EPOCHS
    assert list(epochs.columns[:3]) == ["cell_key", "epoch", "train_loss"]
    alsh = next(r for r in made.rows.values() if r["method"] == "alsh_approx" and r["depth"] == 3)
    mine = epochs[epochs["cell_key"] == alsh["cell_key"]].set_index("epoch")
    for entry in alsh["history"]:
        for stat in entry["stats"]:
            assert mine.loc[entry["epoch"], f"stat.{stat['name']}"] == stat["value"]
        assert mine.loc[entry["epoch"], "forward_seconds"] == entry["forward_seconds"]
    standard = epochs[
        epochs["cell_key"].isin([k for k, r in made.rows.items() if r["method"] == "standard"])
    ]
    assert standard["stat.probe_rel_error.layer1"].isna().all()


def test_tables_hold_exactly_the_rows_numbers(full: tuple[Fabricated, Any]) -> None:
    made, report = full
    analysis = report.analysis
    assert [t.title for t in analysis.accuracy] == [
        f"Test accuracy (%), {d} hidden layer(s) (paper Table 3 style)" for d in (1, 2, 3)
    ]
    for depth, table in zip((1, 2, 3), analysis.accuracy, strict=True):
        assert table.rows == ["mnist"]
        assert set(table.columns) == {
            "ALSH-APPROX_S",
            "MC-APPROX_S",
            "MC-APPROX_M",
            "STANDARD_S",
            "STANDARD_M",
        }
        for method, batch in (("alsh_approx", 1), ("mc_approx", 1), ("mc_approx", 20)):
            rows = by_config(made, method, depth, batch)
            mean, std = expected_stat([100 * r["test_accuracy"] for r in rows])
            stat = table.get("mnist", paper_label(method, batch))
            assert stat is not None and stat.n == 3
            assert stat.mean == pytest.approx(mean, abs=1e-12)
            assert stat.std == pytest.approx(std, abs=1e-12)

    # Tables 4 / 5 style: per-epoch phase times, mean and std over seeds.
    timing = {t.title: t for t in analysis.timing}
    assert len(timing) == 3 * 2  # depth x batch size
    table = timing[
        "Seconds per epoch, mnist, 2 hidden layer(s), batch 20 (paper Tables 4 / 5 style)"
    ]
    assert table.rows == ["MC-APPROX_M", "STANDARD_M"]
    for method in ("mc_approx", "standard"):
        rows = by_config(made, method, 2, 20)
        for phase in PHASES:
            mean, std = expected_stat([r[f"{phase}_seconds"] / EPOCHS for r in rows])
            stat = table.get(paper_label(method, 20), phase)
            assert stat is not None
            assert stat.mean == pytest.approx(mean, rel=1e-12)
            assert stat.std == pytest.approx(std, rel=1e-9)
        mean, _ = expected_stat([r["train_seconds"] / EPOCHS for r in rows])
        assert table.get(paper_label(method, 20), "total").mean == pytest.approx(mean)
    ratio = table.get("MC-APPROX_M", "total / STANDARD")
    mc = statistics.fmean(r["seconds_per_epoch"] for r in by_config(made, "mc_approx", 2, 20))
    std = statistics.fmean(r["seconds_per_epoch"] for r in by_config(made, "standard", 2, 20))
    assert ratio is not None and ratio.mean == pytest.approx(mc / std)

    # Figs. 9 / 10 in numbers: total training time by depth.
    time_table = next(t for t in analysis.depth if t.title.startswith("Total training time"))
    assert time_table.columns == ["1", "2", "3"]
    for depth in (1, 2, 3):
        mean, std = expected_stat(
            [r["train_seconds"] for r in by_config(made, "alsh_approx", depth, 1)]
        )
        stat = time_table.get("ALSH-APPROX_S", str(depth))
        assert (
            stat is not None and stat.mean == pytest.approx(mean) and stat.std == pytest.approx(std)
        )

    # Per-epoch curves: validation accuracy per epoch, mean over seeds.
    curves = analysis.curves
    rows = by_config(made, "standard", 3, 1)
    mine = curves[(curves["label"] == "STANDARD_S") & (curves["depth"] == 3)].set_index("epoch")
    for epoch in range(1, EPOCHS + 1):
        values = [r["history"][epoch - 1]["cumulative_train_seconds"] for r in rows]
        mean, std = expected_stat(values)
        assert mine.loc[epoch, "cumulative_train_seconds"] == pytest.approx(mean)
        assert mine.loc[epoch, "cumulative_train_seconds_std"] == pytest.approx(std)

    # Confusion matrices summed over seeds, and the predicted-label shares of Fig. 15.
    config = analysis.summary[
        (analysis.summary["label"] == "ALSH-APPROX_S") & (analysis.summary["depth"] == 2)
    ]["config"].iloc[0]
    summed = sum(np.array(r["confusion_matrix"]) for r in by_config(made, "alsh_approx", 2, 1))
    assert (analysis.confusion[config] == summed).all()
    assert prediction_shares(analysis.confusion[config]) == pytest.approx(
        summed.sum(axis=0) / summed.sum()
    )


def test_probe_table_and_theorem2_fit(full: tuple[Fabricated, Any]) -> None:
    made, report = full
    (table,) = report.analysis.probe_tables  # only ALSH reports the probe here
    assert table.rows == ["ALSH-APPROX_S"]
    k, errors = [], []
    for depth in (1, 2, 3):
        last = [
            r["history"][-1]["stats"][
                [s["name"] for s in r["history"][-1]["stats"]].index(
                    f"probe_rel_error.layer{depth}"
                )
            ]["value"]
            for r in by_config(made, "alsh_approx", depth, 1)
        ]
        mean, std = expected_stat(last)
        stat = table.get("ALSH-APPROX_S", str(depth))
        assert (
            stat is not None and stat.mean == pytest.approx(mean) and stat.std == pytest.approx(std)
        )
        k += [depth] * len(last)
        errors += last
    fit = fit_theorem2(np.array(k), np.array(errors))
    assert fit is not None and fit.points == 9
    fitted = table.get("ALSH-APPROX_S", "fitted c")
    assert fitted is not None and fitted.mean == pytest.approx(fit.c)
    assert fit.c == pytest.approx(TRUE_C, rel=0.1)  # the fabricated noise is small


def test_theorem2_fit_recovers_c_exactly() -> None:
    k = np.arange(1, 8)
    for c in (0.5, 5.0, 40.0):
        fit = fit_theorem2(k, 1.0 - (c / (c + 1.0)) ** k)
        assert fit is not None
        assert fit.c == pytest.approx(c, rel=1e-6) and fit.rms < 1e-9
        # The theorem's own form, error relative to the estimate.
        assert fit.theorem_curve(np.array([1, 2])) == pytest.approx(
            [(c + 1) / c - 1, ((c + 1) / c) ** 2 - 1]
        )
    paper = fit_theorem2(np.arange(1, 7), 1.0 - (5.0 / 6.0) ** np.arange(1, 7))
    assert paper is not None  # the paper's §7 table for c = 5
    assert paper.theorem_curve(np.arange(1, 7)) == pytest.approx(
        [0.2, 0.44, 0.728, 1.0736, 1.48832, 1.985984]
    )
    assert fit_theorem2(np.array([]), np.array([])) is None
    # Errors that no c explains (at or above 1, or none at all) get no fit, not c = 1e-12.
    assert fit_theorem2(np.array([1, 2]), np.array([1.2, 1.5])) is None
    assert fit_theorem2(np.array([1, 2, 3]), np.zeros(3)) is None


def test_every_figure_is_a_nonempty_png_referenced_by_the_page(
    full: tuple[Fabricated, Any],
) -> None:
    _, report = full
    names = sorted(f.path.name for f in report.figures)
    assert names == sorted(
        f"{kind}_mnist.png"
        for kind in (
            "depth",
            "val_accuracy",
            "cumulative_time",
            "val_accuracy_by_depth",
            "confusion",
            "predictions",
            "probe",
        )
    )
    page = report.page_path.read_text(encoding="utf-8")
    for figure in report.figures:
        data = figure.path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
        assert f"](figures/{figure.path.name})" in page
    # Provenance: the job file, versions, CPU, threads, nodes.
    assert 'name = "fabricated"' in page
    assert "Fabricated CPU 9000 (45 cells)" in page
    assert "torch threads observed**: 1 (45 cells)" in page
    assert "node-a (30 cells), node-b (15 cells)" in page
    assert f"alsh_approx v{METHODS['alsh_approx'].version}" in page and "2.99.0" in page
    assert "The job file expands to 45 cells: 45 done, 0 failed, 0 missing" in page


def test_compare_paper_puts_published_beside_ours(
    full: tuple[Fabricated, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    made, report = full
    comparison = report.comparison.set_index(["source", "metric", "paper_label", "depth"])
    ours = 100 * statistics.fmean(r["test_accuracy"] for r in by_config(made, "alsh_approx", 3, 1))
    row = comparison.loc[("Table 3 (§10.1)", "test_accuracy", "ALSH-APPROX", 3)]
    assert row["published"] == 94.15
    assert row["ours"] == pytest.approx(ours)
    assert row["difference"] == pytest.approx(ours - 94.15)
    assert "ours: 3 epochs (paper: 50)" in row["note"]
    # The fabricated job trains ALSH-APPROX with SGD and MC-APPROX_S at lr 1e-3: said.
    assert "ours: sgd (paper: adam)" in row["note"]
    mc_s = comparison.loc[("Table 3 (§10.1)", "test_accuracy", "MC-APPROX_S", 3)]
    assert "ours: lr 0.001 (paper: 0.0001)" in mc_s["note"]
    standard = comparison.loc[("Table 3 (§10.1)", "test_accuracy", "STANDARD_S", 3)]
    assert "lr" not in standard["note"] and "adam" not in standard["note"]
    ours_fwd = statistics.fmean(
        r["forward_seconds"] / EPOCHS for r in by_config(made, "standard", 3, 20)
    )
    row = comparison.loc[("Table 5 (§10.2)", "forward_seconds_per_epoch", "STANDARD_M", 3)]
    assert row["published"] == 2.202 and row["ours"] == pytest.approx(ours_fwd)
    assert row["ratio"] == pytest.approx(ours_fwd / 2.202)
    # The full 55000-example MNIST training set: nothing to scale, and no size note.
    assert row["ours_train_size"] == 55000 and row["ours_measured"] == row["ours"]
    assert row["compared_as"] == "s per epoch of 55000 examples"
    assert "training examples" not in row["note"]
    assert "ours: 1 torch thread(s) (paper: PyTorch's default, all cores)" in row["note"]
    assert "ours: on Fabricated CPU 9000 (paper: Intel Core i9-9920X, §9.1)" in row["note"]
    assert "ours: 3 epochs (paper: 50)" in row["note"]
    assert "torch thread" not in standard["note"] and "CPU" not in standard["note"]
    # Figure 9's supplementary values cover depths 1 and 2 too.
    assert ("Figure 9 (§10.1; supplementary values)", "test_accuracy", "MC-APPROX_M", 1) in (
        comparison.index
    )
    page = report.page_path.read_text(encoding="utf-8")
    assert "## Comparison with the paper" in page and "94.15" in page

    assert main(["report", str(made.root), "--out", str(tmp_path / "r"), "--compare-paper"]) == 0
    out = capsys.readouterr().out
    assert "Published (paper) vs ours" in out
    assert f"{ours:.2f}" in out and f"{ours - 94.15:+.2f}" in out


def test_compare_paper_puts_a_train_limit_sweeps_times_on_the_papers_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sweep of 11917 MNIST examples is not set beside the paper's 55000-example epochs as
    it is: ours is scaled per example to the paper's epoch, and the page and the terminal
    say so."""
    job = textwrap.dedent(
        """
        name = "subset"
        [grid]
        seed = [0, 1]
        batch_size = [1, 20]
        [params]
        method = "standard"
        dataset = "mnist"
        epochs = 3
        train_limit = 11917
        """
    )
    made = fabricate(tmp_path / "results", job)
    report = build_report(made.root, compare_paper=True)
    rows = report.comparison.set_index(["source", "metric"])
    row = rows.loc[("Table 5 (§10.2)", "seconds_per_epoch")]
    measured = statistics.fmean(
        r["seconds_per_epoch"] for r in made.rows.values() if r["batch_size"] == 20
    )
    assert row["ours_train_size"] == 11917 and row["paper_train_size"] == 55000
    assert row["ours_measured"] == pytest.approx(measured)
    assert row["ours"] == pytest.approx(measured / 11917 * 55000)
    assert row["published"] == 20.16  # as printed
    assert row["ratio"] == pytest.approx((measured / 11917) / (20.16 / 55000))
    assert row["difference"] == pytest.approx(measured / 11917 * 55000 - 20.16)
    assert (
        "ours: 11917 training examples per epoch, train_limit 11917 (paper: 55000" in (row["note"])
    )
    accuracy = rows.loc[("Table 3 (§10.1)", "test_accuracy")]
    assert "ours: trained on 11917 examples, train_limit 11917 (paper: 55000" in (accuracy["note"])
    page = report.page_path.read_text(encoding="utf-8")
    assert "| compared as | published (as printed) |" in page
    assert "| s per epoch of 55000 examples | 20.16 ± 0.12 |" in page
    assert f"{measured:.4g} ± " in page and " s per epoch of 11917 examples |" in page

    assert main(["report", str(made.root), "--out", str(tmp_path / "r"), "--compare-paper"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{measured / 11917 * 55000:.4g}" in out
    assert "scaled" in out and "11917" in out


def test_partial_sweep_reports_what_it_has_and_lists_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only depth 1 finished; depth 2 failed for STANDARD; a corrupt file; the rest not run.
    def keep(cell: Cell) -> bool:
        return cell.values["depth"] == 1

    made = fabricate(tmp_path / "results", keep=keep)
    store = ResultsStore(made.root)
    failed = [c for c in made.cells if c.values["depth"] == 2 and c.method == "standard"]
    for cell in failed:
        store.write_failure(
            {
                "cell_key": cell.key,
                "label": cell.label(),
                "error_class": "out_of_memory",
                "error_type": "OutOfMemoryError",
                "message": "the worker ran out of memory",
            }
        )
    (store.cells_dir / "deadbeefdeadbeef.parquet").write_bytes(b"PAR1 truncated")
    missing = [
        c
        for c in made.cells
        if c.values["depth"] == 3 or (c.values["depth"] == 2 and c.method != "standard")
    ]

    assert main(["report", str(made.root)]) == 0
    captured = capsys.readouterr()
    assert "45 cells in the job file: 15 done, 6 failed, 24 missing" in captured.out
    assert "deadbeefdeadbeef.parquet" in captured.err
    page = (made.root / "report" / "report.md").read_text(encoding="utf-8")
    assert "The job file expands to 45 cells: 15 done, 6 failed, 24 missing" in page
    assert f"{len(missing)} cell(s) of the job file have not run" in page
    for cell in missing:
        assert f"| {cell.label()} | {cell.key} |" in page
    for cell in failed:
        assert f"| {cell.label()} | out_of_memory | OutOfMemoryError: the worker ran out" in page
    assert "deadbeefdeadbeef.parquet" in page
    # What did finish is still tabulated and drawn (one depth: no curve over depth).
    cells = pd.read_parquet(made.root / "report" / "cells.parquet")
    assert len(cells) == 15 and set(cells["depth"]) == {1}
    figures = sorted(p.name for p in (made.root / "report" / "figures").glob("*.png"))
    assert "depth_mnist.png" not in figures and "confusion_mnist.png" in figures
    assert "Test accuracy (%), 1 hidden layer(s)" in page


def test_a_job_file_this_code_cannot_expand_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = fabricate(tmp_path / "results", keep=lambda c: c.values["depth"] == 1)
    (made.root / "job.toml").write_text(JOB.replace('"mnist"', '"no_such_dataset"'))
    assert main(["report", str(made.root)]) == 0
    captured = capsys.readouterr()
    assert "the job file does not expand with this version of the code" in captured.err
    assert "no_such_dataset" in captured.err
    page = (made.root / "report" / "report.md").read_text(encoding="utf-8")
    assert "Missing cells cannot be listed" in page
    assert len(pd.read_parquet(made.root / "report" / "cells.parquet")) == 15


def test_an_empty_results_folder_reports_every_cell_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    made = fabricate(tmp_path / "results", keep=lambda c: False)
    assert main(["report", str(made.root)]) == 0
    out = capsys.readouterr().out
    assert "0 done, 0 failed, 45 missing" in out and "No finished cells" in out
    page = (made.root / "report" / "report.md").read_text(encoding="utf-8")
    assert "45 cell(s) of the job file have not run" in page
    assert not (made.root / "report" / "cells.parquet").exists()


def test_a_missing_results_folder_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "is not a results folder" in err and "Traceback" not in err


# --- the published numbers ----------------------------------------------------------------------

PAPER_DATASETS = {"mnist", "fashion_mnist", "kmnist", "emnist_letters", "norb", "cifar10"}


def test_published_numbers_are_complete_and_sourced() -> None:
    numbers = load_published()
    by_source = {}
    for n in numbers:
        by_source.setdefault(n.source.split(" (")[0], []).append(n)
        assert n.method in METHODS and n.dataset in PAPER_DATASETS
        assert n.label.startswith(paper_label(n.method, n.batch_size).split("_")[0])
        assert (n.depth is None) == (n.arch == "cnn")
    assert {k: len(v) for k, v in by_source.items()} == {
        "Table 3": 36,  # 6 datasets x 6 method columns
        "Table 4": 15,  # 5 methods x total / feedforward / backpropagation
        "Table 5": 12,  # 4 methods x 3
        "Figure 9": 14,  # ALSH and MC-APPROX_M at depth 1..7
    }
    norb = [n for n in numbers if n.dataset == "norb"]
    assert len(norb) == 6 and all("not a test accuracy" in n.note for n in norb)
    # Spot checks against methods.md's MNIST summary (an independent copy of the numbers).
    table3 = {
        (n.method, n.batch_size): n.value for n in by_source["Table 3"] if n.dataset == "mnist"
    }
    assert table3 == {
        ("alsh_approx", 1): 94.15,
        ("mc_approx", 20): 98.10,
        ("mc_approx", 1): 98.38,
        ("dropout", 1): 90.21,
        ("adaptive_dropout", 1): 98.06,
        ("standard", 1): 96.46,
    }


def test_a_malformed_published_file_names_the_file_and_row(tmp_path: Path) -> None:
    good = load_published.__defaults__[0].read_text(encoding="utf-8")  # type: ignore[index]
    bad = tmp_path / "numbers.csv"
    bad.write_text(good.replace("94.15,,", "ninety,,", 1), encoding="utf-8")
    with pytest.raises(PublishedDataError, match=r"numbers.csv data row 1 value: 'ninety'"):
        load_published(bad)
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(PublishedDataError, match="the header must be"):
        load_published(bad)


def test_labels_tell_apart_only_configurations_drawn_in_the_same_place() -> None:
    from runner.report.configs import annotate

    job = """
    name = "labels"
    [grid]
    dataset = ["digits", "mnist"]
    lr = [0.1, 0.01]
    [params]
    method = "standard"
    [[exclude]]
    dataset = "digits"
    lr = 0.01
    """
    rng = np.random.default_rng(1)
    rows = []
    for cell in expand(parse_spec(job)).cells:
        row = fabricate_row(cell, rng)
        row["dataset_version"] = 7 if cell.dataset == "digits" else 1  # differs by dataset only
        rows.append({k: v for k, v in row.items() if k not in ("history", "confusion_matrix")})
    labels = annotate(pd.DataFrame(rows)).set_index(["dataset", "lr"])["label"]
    assert labels.to_dict() == {
        ("digits", 0.1): "STANDARD_S lr=0.1",
        ("mnist", 0.1): "STANDARD_S lr=0.1",
        ("mnist", 0.01): "STANDARD_S lr=0.01",
    }


def test_table3_puts_the_cnn_row_beside_the_mlps_at_depth_3(tmp_path: Path) -> None:
    """As the paper's Table 3: CIFAR-10's row is the CNN (classifier depth 1), the other rows
    3-hidden-layer MLPs; without a depth-3 table the CNN gets a table of its own."""
    job = """
        name = "t3"
        [grid]
        method = ["standard", "mc_approx"]
        dataset = ["mnist", "cifar10"]
        [params]
        depth = 3
        epochs = 3
        [[override]]
        where = { dataset = "cifar10" }
        set = { arch = "cnn", depth = 1 }
    """
    made = fabricate(tmp_path / "t3", textwrap.dedent(job))
    (table,) = build_report(made.root).analysis.accuracy
    assert table.title == "Test accuracy (%), 3 hidden layer(s) (paper Table 3 style)"
    assert table.rows == ["cifar10 (cnn)", "mnist"]
    cnn = next(r for r in made.rows.values() if r["arch"] == "cnn" and r["method"] == "standard")
    stat = table.get("cifar10 (cnn)", "STANDARD_S")
    assert stat is not None and stat.mean == pytest.approx(100 * cnn["test_accuracy"])
    assert "CNN rows: ResNet-18 + a classifier of 1 hidden FC layer(s)" in table.note

    alone = fabricate(tmp_path / "cnn", textwrap.dedent(job).replace("depth = 3", "depth = 2"))
    titles = [t.title for t in build_report(alone.root).analysis.accuracy]
    assert titles == [
        "Test accuracy (%), 2 hidden layer(s) (paper Table 3 style)",
        "Test accuracy (%), CNN: ResNet-18 + 1 hidden FC layer(s) (paper Table 3 style)",
    ]
