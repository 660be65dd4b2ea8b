"""End to end in-process (serial executor): run, resume, failures, bit-identical recompute."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import methods
from runner.cli.main import main
from runner.job.grid import expand
from runner.job.spec import load_spec
from runner.results.store import ResultsStore
from runner.run.cellrun import run_cell
from runner.run.sweep import make_plan, run_sweep
from tests.conftest import write_job

REQUIRED_REPORT_COLUMNS = (
    "method",
    "dataset",
    "depth",
    "width",
    "batch_size",
    "seed",
    "lr",
    "optimizer",
    "epochs",
    "train_limit",
    "status",
    "test_accuracy",
    "val_accuracy",
    "epochs_done",
    "train_seconds",
    "seconds_per_epoch",
    "torch_threads",
    "node",
    "cell_key",
)


def result_files(results: Path) -> dict[str, float]:
    return {p.stem: p.stat().st_mtime_ns for p in (results / "cells").glob("*.parquet")}


def test_sweep_runs_then_the_same_command_computes_nothing(
    digits_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    args = ["submit", str(digits_job), "--executor", "serial", "--results", str(results)]
    assert main(args) == 0
    first = result_files(results)
    assert len(first) == 4
    capsys.readouterr()
    assert main(args) == 0
    assert "Nothing to run" in capsys.readouterr().out
    assert result_files(results) == first  # not a single file rewritten

    assert main(["report", str(results)]) == 0
    cells = pd.read_parquet(results / "report" / "cells.parquet")
    assert len(cells) == 4 and cells["cell_key"].is_unique
    for column in REQUIRED_REPORT_COLUMNS:
        assert column in cells.columns, column
    assert (cells["status"] == "ok").all() and (cells["epochs_done"] == 2).all()
    assert cells["test_accuracy"].between(0, 1).all()
    assert (cells["torch_threads"] == 1).all()
    assert sorted(cells["depth"]) == [1, 1, 2, 2]
    epochs = pd.read_parquet(results / "report" / "epochs.parquet")
    assert len(epochs) == 8 and set(epochs["epoch"]) == {1, 2}
    status_out = capsys.readouterr().out
    assert "4 finished cell(s)" in status_out


def test_failed_cell_is_recorded_and_the_sweep_goes_on(
    digits_job: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_build = methods.build

    def flaky_build(name, arch, *args, **kwargs):  # type: ignore[no-untyped-def]
        if arch.depth == 2:
            raise RuntimeError("injected failure at depth 2")
        return real_build(name, arch, *args, **kwargs)

    monkeypatch.setattr(methods, "build", flaky_build)
    results = tmp_path / "results"
    args = ["submit", str(digits_job), "--executor", "serial", "--results", str(results)]
    assert main(args) == 1
    store = ResultsStore(results)
    ledger = store.scan()
    assert len(ledger.done) == 2 and len(ledger.failed) == 2
    failure = next(iter(ledger.failed.values()))
    assert failure["error_class"] == "application"
    assert "injected failure at depth 2" in failure["traceback"]
    assert "flaky_build" in failure["traceback"]

    capsys.readouterr()
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 done, 2 failed, 0 to run" in out and "application 2" in out

    assert main(args) == 1  # failed cells are not re-run by default...
    assert "--retry-failed" in capsys.readouterr().out
    monkeypatch.setattr(methods, "build", real_build)
    assert main([*args, "--retry-failed"]) == 0  # ...only when asked
    ledger = store.scan()
    assert len(ledger.done) == 4 and not ledger.failed


def test_recomputed_cell_is_bit_identical(digits_job: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = ["submit", str(digits_job), "--executor", "serial", "--results", str(results)]
    assert main(args) == 0
    victim = sorted((results / "cells").glob("*.parquet"))[0]
    before = pd.read_parquet(victim)
    victim.unlink()
    assert main(args) == 0
    after = pd.read_parquet(victim)
    assert after.loc[0, "weights_sha256"] == before.loc[0, "weights_sha256"]
    assert after.loc[0, "test_accuracy"] == before.loc[0, "test_accuracy"]
    assert [h["val_loss"] for h in after.loc[0, "history"]] == [
        h["val_loss"] for h in before.loc[0, "history"]
    ]


def test_a_cell_does_not_depend_on_what_ran_before_it(tmp_path: Path) -> None:
    """Same process, different predecessors (including one with more threads): same bits."""
    job = write_job(
        tmp_path / "j.toml",
        """
        name = "order"
        [grid]
        seed = [0, 1]
        [params]
        method = "standard"
        dataset = "digits"
        width = 16
        depth = 2
        epochs = 1
        batch_size = 1
        train_limit = 200
        [resources]
        torch_threads = 1
    """,
    )
    cells = expand(load_spec(job)).cells
    two_threads = dict(cells[1].to_payload(), torch_threads=2)
    two_threads.pop("key")
    first = run_cell(cells[0].to_payload())
    run_cell(two_threads)  # leaves 2 torch threads and a consumed global RNG behind
    again = run_cell(cells[0].to_payload())
    assert first["status"] == again["status"] == "ok"
    assert again["row"]["weights_sha256"] == first["row"]["weights_sha256"]
    assert again["row"]["torch_threads"] == 1


def test_interrupt_keeps_finished_rows(
    digits_job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during the third cell: two rows saved, the rest runs on the next submit."""
    from runner.run.executors import SerialExecutor

    spec = load_spec(digits_job)
    store = ResultsStore(tmp_path / "results")
    store.prepare()
    plan = make_plan(expand(spec).cells, store.scan(), retry_failed=False)
    calls = {"n": 0}
    real_build = methods.build

    def interrupting_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_build(*args, **kwargs)

    monkeypatch.setattr(methods, "build", interrupting_build)
    summary = run_sweep(plan, store, SerialExecutor(None, False, 1))
    assert summary.interrupted and len(summary.finished) == 2
    assert len(store.scan().done) == 2 and not store.scan().failed
    monkeypatch.setattr(methods, "build", real_build)
    plan = make_plan(expand(spec).cells, store.scan(), retry_failed=False)
    assert len(plan.todo) == 2
    assert len(run_sweep(plan, store, SerialExecutor(None, False, 1)).finished) == 2


def test_signal_handling_survives_a_replaced_handler_and_the_outermost_restores() -> None:
    """Ray's start-up (inside an inner context) installs its own SIGTERM handler: once that
    context ends, the sweep's handling is back (the summary is still to be printed); only the
    outermost context restores, or installs what it was told to (SIG_IGN for `python -m
    runner`, whose output is all said by then). A second signal while stopping is only
    acknowledged."""
    import signal

    from runner.run.sweep import _on_signal, interrupt_handling

    def ray_like(signum: int, frame: object) -> None:
        raise AssertionError("Ray's handler ran")

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with interrupt_handling():
            with interrupt_handling():
                signal.signal(signal.SIGTERM, ray_like)
            assert signal.getsignal(signal.SIGTERM) is _on_signal
            assert signal.getsignal(signal.SIGINT) is _on_signal
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)  # acknowledged, not raised
        assert {s: signal.getsignal(s) for s in before} == before
        with interrupt_handling(afterwards=signal.SIG_IGN):
            pass
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
