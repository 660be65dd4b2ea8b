"""What a user sees when something is wrong: a plain message and exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import main
from tests.conftest import write_job


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=120,
    )


def test_bad_job_file_lists_every_problem_without_traceback(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "bad.toml",
        """
        name = "bad"
        [grid]
        method = ["standard", "sgd-fast"]
        [params]
        dataset = "cifar100"
    """,
    )
    result = run_cli("submit", str(job), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bad.toml: 2 problems" in result.stderr
    assert "'sgd-fast' is not one of the valid choices: 'standard'" in result.stderr
    assert "'cifar100' is not one of the valid choices: 'digits', 'mnist', " in result.stderr
    assert not (tmp_path / "results").exists()  # nothing was created


def test_missing_dataset_stops_before_any_cell_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPUSWEEP_OFFLINE", "1")
    job = write_job(
        tmp_path / "mnist.toml",
        """
        name = "m"
        [params]
        method = "standard"
        dataset = "mnist"
    """,
    )
    code = main(
        [
            "submit",
            str(job),
            "--results",
            str(tmp_path / "r"),
            "--data-root",
            str(tmp_path / "data"),
            "--executor",
            "serial",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path / "data" / "MNIST" / "raw") in err
    assert not list((tmp_path / "r" / "cells").glob("*"))
    assert not list((tmp_path / "r" / "failed").glob("*"))


def test_plan_shows_cells_and_states_without_running(
    digits_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "r"
    assert main(["plan", str(digits_job), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 0 done, 0 failed, 4 to run" in out
    assert "standard/digits d1 b20 s0" in out
    assert not results.exists()  # planning writes nothing


def test_status_of_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "not a results folder" in capsys.readouterr().err
