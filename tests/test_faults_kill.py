"""Killed processes lose nothing: a Ray worker SIGKILLed mid-cell (the cell is retried and
continues from its checkpoint, bit-identical), a driver SIGKILLed again and again at
different points (the same command finishes the sweep), and a second submit on a folder in
use (refused, with who holds it). Every driver is `python -m runner submit` as a user runs
it; the Ray ones start their local Ray themselves."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.faults import (
    Driver,
    assert_bit_identical,
    assert_complete,
    cli_env,
    digits_job,
    job_keys,
    result_keys,
    run_cli,
    running_checkpoint,
    wait_for,
)

pytestmark = [pytest.mark.slow]


def long_job(tmp_path: Path, name: str, seeds: list[int], epochs: int = 6) -> Path:
    """Cells of ~0.3 s epochs (more on a loaded machine): long enough to be caught mid-way."""
    return digits_job(
        tmp_path / f"{name}.toml",
        name,
        seeds,
        epochs=epochs,
        width=64,
        batch_size=1,
        train_limit=900,
    )


@pytest.mark.ray
def test_a_worker_killed_mid_cell_is_retried_from_its_checkpoint(tmp_path: Path) -> None:
    job = long_job(tmp_path, "kill-worker", seeds=[0, 1])
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--cpus", "2"]
    driver = Driver(args, tmp_path, cli_env(), tmp_path / "driver.log")
    try:
        saved = wait_for(lambda: running_checkpoint(results, min_epoch=2), "a checkpoint", driver)
        os.kill(saved["pid"], signal.SIGKILL)  # the Ray worker computing that cell
    finally:
        code, output = driver.finish()
    assert code == 0, output
    assert "2 cell(s) finished, 0 failed" in output
    assert "resumed from its checkpoint" in output
    assert_complete(results, job_keys(job))
    rows = pd.read_parquet(results / "cells").set_index("cell_key")
    resumed = rows.loc[saved["key"]]
    assert resumed["resumes"] == 1 and resumed["resumed_from_epoch"] >= saved["epoch"]
    assert resumed["pid"] != saved["pid"]
    assert (rows.drop(index=saved["key"])["resumes"] == 0).all()
    assert_bit_identical(job, saved["key"], resumed)


def _counts(output: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) cells: (\d+) done, (\d+) failed, (\d+) to run", output)
    assert found, output
    return int(found[2]), int(found[3]), int(found[4])


@pytest.mark.ray
def test_a_driver_killed_three_times_then_the_same_command_finishes(tmp_path: Path) -> None:
    """SIGKILL (no clean-up at all) as soon as the job is saved, then mid-cell before any
    cell finished, then with some cells done; each restart sees exactly what was stored."""
    job = long_job(tmp_path, "kill-driver", seeds=list(range(5)), epochs=3)
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--cpus", "2"]

    def moment(i: int, before: int) -> Any:
        if i == 0:
            return (results / "job.toml").exists()
        if i == 1:
            return running_checkpoint(results, min_epoch=1)
        return len(result_keys(results)) >= before + 2

    moments = ["the job is saved", "a cell is mid-way", "two more cells are done"]
    interrupted_cell = None
    for i, what in enumerate(moments):
        before = set(result_keys(results)) if results.exists() else set()
        driver = Driver(args, tmp_path, cli_env(), tmp_path / f"driver{i}.log")
        try:
            found = wait_for(functools.partial(moment, i, len(before)), what, driver)
            if isinstance(found, dict):
                interrupted_cell = found["key"]
        finally:
            driver.kill()
        output = driver.log.read_text()
        if i > 0:  # what the restart found is what was stored before it
            assert _counts(output) == (len(before), 0, 5 - len(before)), output
        assert "Traceback" not in output
    done_before = set(result_keys(results))
    assert 2 <= len(done_before) < 5, "the last kill should land mid-sweep"
    assert interrupted_cell is not None

    code, output = run_cli(args, cwd=tmp_path)
    assert code == 0, output
    assert _counts(output) == (len(done_before), 0, 5 - len(done_before))
    assert f"{5 - len(done_before)} cell(s) finished, 0 failed" in output
    assert_complete(results, job_keys(job))
    rows = pd.read_parquet(results / "cells").set_index("cell_key")
    assert rows.index.is_unique and sorted(rows["seed"]) == list(range(5))
    # The cell caught mid-way by the second kill continued from its checkpoint (in the third
    # run or this one) rather than from scratch.
    assert rows.loc[interrupted_cell, "resumes"] >= 1
    assert_bit_identical(job, interrupted_cell, rows.loc[interrupted_cell])


def test_a_second_submit_on_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    job = long_job(tmp_path, "locked", seeds=list(range(8)), epochs=6)
    other = digits_job(tmp_path / "other.toml", "other", seeds=[5])
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    first = Driver(args, tmp_path, cli_env(), tmp_path / "first.log")
    try:
        wait_for(lambda: result_keys(results), "a first result", first)
        job_saved = (results / "job.toml").stat().st_mtime_ns
        attempts = [  # at the same time: the same command, and another job on this folder
            Driver(attempt, tmp_path, cli_env(), tmp_path / f"attempt{i}.log")
            for i, attempt in enumerate([args, ["submit", str(other), "--results", str(results)]])
        ]
        for attempt in attempts:
            code, output = attempt.finish()
            assert first.alive(), "the first submit ended: the test proves nothing"
            assert code == 2, output
            assert "Traceback" not in output
            assert f"{results} is in use by another submit (pid {first.process.pid} " in output
            assert "two sweeps never share a folder" in output
        assert (results / "job.toml").stat().st_mtime_ns == job_saved
    finally:
        code, output = first.finish()
    assert code == 0, output
    assert "8 cell(s) finished, 0 failed" in output
    assert_complete(results, job_keys(job))
    assert len(list((results / "jobs").glob("*.toml"))) == 1  # the other job never got in


def test_what_a_driver_killed_mid_write_leaves_is_cleared(tmp_path: Path) -> None:
    """A driver killed between writing a temporary file and renaming it, or between storing
    a result and deleting the cell's failure record and checkpoint, leaves those behind. The
    next submit (holding the lock, so nothing else writes there) clears them."""
    from runner.cli.main import main

    job = digits_job(tmp_path / "j.toml", "leftovers", seeds=[0, 1])
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    assert main(args) == 0
    done = result_keys(results)
    key = done[0]
    leftovers = [
        results / "cells" / f".{key}.parquet.4242.cpusweep-tmp",
        results / "failed" / f".{key}.json.4242.cpusweep-tmp",
        results / ".job.toml.4242.cpusweep-tmp",
        results / "jobs" / ".0123456789ab.toml.4242.cpusweep-tmp",
        results / ".cpusweep-write-test.4242",
        results / "checkpoints" / f".{key}.pt.4242.cpusweep-tmp",
        results / "failed" / f"{key}.json",  # a failure record of a cell that is done
        results / "checkpoints" / f"{key}.pt",  # a checkpoint of a cell that is done
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    # Files of the user's own in the results folder look alike but are never touched.
    theirs = [results / ".editor-swap.tmp", results / ".write-test.1", results / "notes.tmp"]
    for path in theirs:
        path.write_bytes(b"precious")
    results_before = {k: (results / "cells" / f"{k}.parquet").read_bytes() for k in done}

    digits_job(tmp_path / "j.toml", "leftovers", seeds=[0, 1, 2])  # one more cell to run
    assert main(args) == 0
    assert not [p for p in leftovers if p.exists()]
    assert all(p.read_bytes() == b"precious" for p in theirs)
    assert_complete(results, job_keys(job))
    for k, data in results_before.items():
        assert (results / "cells" / f"{k}.parquet").read_bytes() == data


@pytest.mark.parametrize("executor", ["serial", "ray"])
def test_ctrl_c_pressed_again_while_stopping_still_stops_cleanly(
    tmp_path: Path, executor: str
) -> None:
    """An impatient user: Ctrl-C, then Ctrl-C and `kill` while the sweep cancels its cells
    and shuts down. The later ones are acknowledged, not obeyed: exit 130, the summary and
    the resume command; the same command then finishes the sweep."""
    job = long_job(tmp_path, f"impatient-{executor}", seeds=[0, 1, 2], epochs=4)
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--executor", executor]
    if executor == "ray":
        args += ["--cpus", "2"]
    driver = Driver(args, tmp_path, cli_env(), tmp_path / "driver.log")
    try:
        wait_for(lambda: list((results / "checkpoints").glob("*.pt")), "a checkpoint", driver)
        driver.process.send_signal(signal.SIGINT)
        for again in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                driver.process.send_signal(again)
    finally:
        code, output = driver.finish()
    # 130; or, when a late signal lands during the interpreter's own shutdown (after all was
    # said, once Python has put the default handlers back), death by that signal.
    assert code in (130, -signal.SIGINT, -signal.SIGTERM), output
    assert "Interrupted." in output and "Every finished cell is saved" in output, output
    assert "Resume with:" in output and "Traceback" not in output, output

    code, output = run_cli(args, cwd=tmp_path)
    assert code == 0, output
    assert_complete(results, job_keys(job))
