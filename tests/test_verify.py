"""`verify`: finished cells re-run from their recorded content reproduce their rows bit for
bit; a row rewritten afterwards (consistently, through the store's own writer, so the store
still reads it as whole) is found, and only that one; nothing is written into the folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runner
from runner.api.verify import CellVerified, VerifyPlanned, choose_cells
from runner.cli.main import main
from runner.job.cells import Cell, canonical_json
from runner.results.compare import differences, same
from runner.results.store import ResultsStore
from tests.conftest import REPO

JOB: dict[str, Any] = {
    "name": "verify-digits",
    "grid": {"method": ["standard", "alsh_approx"], "depth": [1, 2]},
    "params": {
        "dataset": "digits",
        "width": 32,
        "epochs": 2,
        "batch_size": 20,
        "lr": 0.05,
        "train_limit": 300,
        "seed": 0,
    },
    "resources": {"memory_gb": 0.5},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 4 finished cells on the bundled digits (made once, copied per test)."""
    results = tmp_path_factory.mktemp("verify") / "results"
    assert runner.submit(JOB, results, executor="serial").exit_code == 0
    return results


@pytest.fixture
def folder(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "results"))


def rows(root: Path) -> dict[str, dict[str, Any]]:
    tables, unreadable = ResultsStore(root).read_tables()
    assert not unreadable
    return {path.stem: table.to_pylist()[0] for path, table in tables.items()}


def key_of(root: Path, method: str, depth: int) -> str:
    [key] = [k for k, r in rows(root).items() if r["method"] == method and r["depth"] == depth]
    return key


def tamper(root: Path, key: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite one row the way a careless or dishonest writer would: with the store's own
    writer, so that its digest is consistent and the store counts it as done."""
    store = ResultsStore(root)
    row = rows(root)[key]
    change(row)
    store.write_result(row)
    ledger = ResultsStore(root).scan()
    assert key in ledger.done and not ledger.corrupt


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_verify_finds_exactly_the_row_whose_test_accuracy_was_changed(folder: Path) -> None:
    key = key_of(folder, "alsh_approx", 2)
    original = rows(folder)[key]["test_accuracy"]
    # The re-run's timing stat differs (it always does): never compared.
    stats = {s["name"] for s in rows(folder)[key]["history"][0]["stats"]}
    assert "rebuild_seconds" in stats and "rebuilds" in stats
    tamper(folder, key, lambda row: row.update(test_accuracy=original + 1 / 360))
    before = snapshot(folder)
    events: list[Any] = []

    report = runner.verify(folder, executor="serial", on_event=events.append)

    assert snapshot(folder) == before  # no rows, no failure records, no checkpoints
    assert report.finished == 4 and sorted(report.chosen) == sorted(rows(folder))
    assert [c.key for c in report.mismatched] == [key]
    [bad] = report.mismatched
    assert bad.failure is None
    assert [(d.field, d.recorded, d.rerun) for d in bad.differences] == [
        ("test_accuracy", original + 1 / 360, original)
    ]
    assert all(c.matches for c in report.checks if c.key != key)
    assert all(c.code_notes == () for c in report.checks)  # the same code made the rows
    assert report.exit_code == 1
    planned = [e for e in events if isinstance(e, VerifyPlanned)]
    assert len(planned) == 1 and set(planned[0].chosen) == set(report.chosen)
    assert sorted(e.check.key for e in events if isinstance(e, CellVerified)) == report.chosen


def test_the_command_line_names_the_tampered_epoch_and_exits_1(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = key_of(folder, "standard", 1)
    recorded = rows(folder)[key]["history"][1]["val_accuracy"]

    def change(row: dict[str, Any]) -> None:
        row["history"][1]["val_accuracy"] = recorded - 0.05

    tamper(folder, key, change)
    assert main(["verify", str(folder), "--executor", "serial"]) == 1
    out = capsys.readouterr().out
    assert "Verifying all 4 finished cell(s)" in out
    assert out.count("✗") == 1 and out.count("✓") == 3
    [line] = [line for line in out.splitlines() if "✗" in line]
    assert key in line and "MISMATCH" in line and "epoch 2 val_accuracy" in line
    assert f"epoch 2 val_accuracy: {recorded - 0.05!r} → {recorded!r}" in out
    assert "1 mismatch" in out and str(folder / "cells" / f"{key}.parquet") in out


def test_a_sample_is_chosen_by_its_seed_and_printed(finished: Path) -> None:
    """In a subprocess, as a second person would run it: exit 0, the chosen cell named."""
    keys = sorted(rows(finished))
    [chosen] = choose_cells(keys, 1, seed=5)
    args = ["verify", str(finished), "--sample", "1", "--seed", "5", "--executor", "serial"]
    done = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "CPUSWEEP_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "Verifying 1 of 4 finished cell(s)" in done.stdout and "--seed 5" in done.stdout
    assert chosen in done.stdout and all(k not in done.stdout for k in keys if k != chosen)
    assert "1 match, 0 mismatch" in done.stdout


def test_choose_cells_is_deterministic_given_the_seed() -> None:
    keys = [f"{i:016x}" for i in range(20)]
    assert choose_cells(keys, 5, 3) == choose_cells(list(reversed(keys)), 5, 3)
    picks = {tuple(choose_cells(keys, 5, seed)) for seed in range(10)}
    assert len(picks) > 5  # the seed decides
    assert all(len(set(p)) == 5 and set(p) <= set(keys) for p in picks)
    assert choose_cells(keys, None, 0) == choose_cells(keys, 20, 0) == choose_cells(keys, 99, 1)
    assert choose_cells(keys, None, 0) == sorted(keys)


def test_same_is_bit_for_bit_with_nan_equal_to_nan() -> None:
    assert same(math.nan, math.nan) and same([1.5, [math.nan]], [1.5, [math.nan]])
    assert not same(0.1 + 0.2, 0.3) and not same(0.0, -0.0) and not same(1.0, math.nan)
    assert not same(True, 1) and not same(1, 1.0) and same(None, None) and not same(None, 0)


def test_times_nodes_and_provenance_are_never_compared() -> None:
    epoch = {"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.9, "val_loss": 0.3}
    stats = [{"name": "rebuilds", "value": 2.0}, {"name": "rebuild_seconds", "value": 0.1}]
    recorded = {
        "test_accuracy": 0.9,
        "wall_seconds": 1.0,
        "node": "a",
        "pid": 1,
        "git_commit": "x",
        "finished_at": "then",
        "history": [{**epoch, "train_seconds": 1.0, "stats": stats}],
    }
    slower = [{"name": "rebuilds", "value": 2.0}, {"name": "rebuild_seconds", "value": 9.0}]
    rerun = {
        **recorded,
        "wall_seconds": 9.0,
        "node": "b",
        "pid": 2,
        "git_commit": "y",
        "finished_at": "now",
        "history": [{**epoch, "train_seconds": 9.0, "stats": slower}],
    }
    assert differences(recorded, rerun) == []
    rerun["history"][0]["stats"][0] = {"name": "rebuilds", "value": 3.0}
    assert [d.field for d in differences(recorded, rerun)] == ["epoch 1 stat rebuilds"]
    # stop_reason: only when both rows have it
    assert differences({**recorded, "stop_reason": "completed"}, recorded) == []
    both = differences({**recorded, "stop_reason": "completed"}, {**rerun, "stop_reason": "x"})
    assert "stop_reason" in [d.field for d in both]


def _one_row_folder(source: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> str:
    """A results folder holding one row of `source`, changed and written by the store."""
    row = rows(source)[key_of(source, "standard", 1)]
    change(row)
    store = ResultsStore(tmp_path / "one")
    store.prepare()
    store.write_result(row)
    return str(row["cell_key"])


def _as_time_budget_row(row: dict[str, Any]) -> None:
    """A 3-epoch cell that a wall-clock budget stopped after its 2 epochs: the row it leaves."""
    content = json.loads(row["cell_json"])
    cell = Cell({**content["values"], "epochs": 3}, content["torch_threads"])
    row.update(
        cell_key=cell.key,
        epochs=3,
        cell_json=canonical_json(cell.content()),
        stop_reason="time_budget",
    )


def test_a_row_stopped_by_its_time_budget_is_re_run_to_its_epoch(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.results.schema import result_schema

    if "stop_reason" not in result_schema().names:
        pytest.skip("rows have no stop_reason column in this version of the code")
    key = _one_row_folder(finished, tmp_path, _as_time_budget_row)
    report = runner.verify(tmp_path / "one", executor="serial")
    [check] = report.checks
    assert check.key == key and check.matches and check.epochs_capped == 2
    assert report.exit_code == 0
    assert main(["verify", str(tmp_path / "one"), "--executor", "serial"]) == 0
    assert "stopped by its time budget: re-run to epoch 2" in capsys.readouterr().out

    # The same row claiming to have completed: its 3 epochs are re-run, and do not match.
    ResultsStore(tmp_path / "one").write_result(
        {**rows(tmp_path / "one")[key], "stop_reason": "completed"}
    )
    [check] = runner.verify(tmp_path / "one", executor="serial").checks
    fields = [d.field for d in check.differences]
    assert check.epochs_capped is None and "epochs_done" in fields and "history" in fields


def test_a_parameter_column_that_contradicts_the_cell_is_a_mismatch(
    finished: Path, tmp_path: Path
) -> None:
    key = _one_row_folder(finished, tmp_path, lambda row: row.update(lr=0.01))
    [check] = runner.verify(tmp_path / "one", executor="serial").checks
    assert check.key == key
    assert [(d.field, d.recorded, d.rerun) for d in check.differences] == [
        ("lr (parameter column)", 0.01, 0.05)
    ]


def test_a_re_run_that_fails_is_a_mismatch(
    folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runner.run.cellrun

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("the loss function is gone")

    monkeypatch.setattr(runner.run.cellrun, "_train_cell", broken)
    assert main(["verify", str(folder), "--sample", "1", "--executor", "serial"]) == 1
    out = capsys.readouterr().out
    assert "failed: application: the loss function is gone" in out
    assert not (folder / "failed").exists() or not list((folder / "failed").iterdir())


def test_a_folder_without_finished_cells_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ResultsStore(tmp_path / "empty")
    store.prepare()
    assert main(["verify", str(store.root), "--executor", "serial"]) == 2
    assert "has no finished cells to verify" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope"), "--executor", "serial"]) == 2
    assert "not a results folder" in capsys.readouterr().err


def test_missing_data_is_exit_2_naming_the_data_root(
    mnist_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CPUSWEEP_OFFLINE", "1")
    job = {
        "name": "verify-mnist",
        "params": {"method": "standard", "dataset": "mnist", "width": 16, "epochs": 1},
        "resources": {"memory_gb": 0.5},
    }
    results = tmp_path / "r"
    assert runner.submit(job, results, executor="serial", data_root=mnist_root).exit_code == 0
    empty = tmp_path / "elsewhere"
    args = ["verify", str(results), "--executor", "serial", "--data-root"]
    assert main([*args, str(empty)]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "train-images-idx3-ubyte" in err
    assert main([*args, str(mnist_root)]) == 0


@pytest.mark.ray
@pytest.mark.slow
def test_verify_on_a_local_ray(folder: Path) -> None:
    key = key_of(folder, "standard", 2)
    tamper(folder, key, lambda row: row.update(weights_sha256="0" * 64))
    keys = sorted(rows(folder))
    seed = next(s for s in range(100) if key in choose_cells(keys, 2, s))
    before = snapshot(folder)
    report = runner.verify(folder, sample=2, seed=seed, executor="ray", cpus=2)
    assert "local Ray (loopback only)" in report.executor
    assert report.chosen == choose_cells(keys, 2, seed)
    assert len(report.checks) == 2
    for check in report.checks:
        assert check.matches == (check.key != key), check
        if check.key == key:
            assert [d.field for d in check.differences] == ["weights_sha256"]
    assert snapshot(folder) == before
