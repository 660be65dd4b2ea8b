"""Helpers shared by the fault-injection tests (tests/test_faults_*.py).

- `digits_job`: a small real sweep on the bundled digits, written as a job file;
- `assert_complete`: the final state of a results folder after any fault: every expected cell
  exactly once, each result readable and about its own cell, no temporary file anywhere, no
  failure record or checkpoint left for a finished cell;
- `Driver` / `run_cli`: `python -m runner` as a user runs it, in a process group of its own so
  that whatever Ray leaves behind a killed driver is cleaned up by the test;
- `stop_after_checkpoint`, `running_checkpoint`, `assert_bit_identical`: stopping a cell
  right after a checkpoint, finding a running cell's checkpoint, and checking that a resumed
  cell ended exactly as an uninterrupted run of it does;
- `inject`: a `sitecustomize` module on PYTHONPATH that every Python process of a sweep
  imports, Ray workers included: how a test makes a cell fail inside a real worker without
  any test hook in the runner itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from runner.job.grid import expand
from runner.job.spec import load_spec
from runner.run.checkpoint import CellCheckpoints
from tests.conftest import REPO, write_job

DEADLINE = 240  # seconds for anything to happen on a loaded 2-core machine


def digits_job(
    path: Path,
    name: str,
    seeds: Iterable[int] = (0, 1),
    *,
    epochs: int = 2,
    width: int = 32,
    batch_size: int = 20,
    train_limit: int = 400,
    extra: str = "",
) -> Path:
    """A sweep of `standard` on the bundled digits, one cell per seed."""
    return write_job(
        path,
        f"""
        name = "{name}"
        [grid]
        seed = {list(seeds)}
        [params]
        method = "standard"
        dataset = "digits"
        depth = 2
        width = {width}
        epochs = {epochs}
        batch_size = {batch_size}
        lr = 0.01
        train_limit = {train_limit}
        [resources]
        memory_gb = 0.5
        """
        + textwrap.dedent(extra),
    )


def job_keys(job: Path) -> set[str]:
    return {cell.key for cell in expand(load_spec(job)).cells}


def result_keys(results: Path) -> list[str]:
    return sorted(p.stem for p in (results / "cells").glob("*.parquet"))


def assert_complete(results: Path, expected: set[str]) -> None:
    """Every expected cell done exactly once and nothing else left over."""
    files = sorted((results / "cells").glob("*.parquet"))
    assert sorted(p.stem for p in files) == sorted(expected), "lost or extra cells"
    for path in files:  # each file is a whole, readable row about its own cell
        keys = pq.read_table(path, columns=["cell_key"]).column("cell_key").to_pylist()
        assert keys == [path.stem], path
    leftovers = [p for p in results.rglob("*") if p.name.endswith(".cpusweep-tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    failed = {p.stem for p in (results / "failed").glob("*.json")}
    assert not failed & expected, "a finished cell still has a failure record"
    checkpoints = {p.stem for p in (results / "checkpoints").glob("*.pt")}
    assert not checkpoints & expected, "a finished cell still has a checkpoint"


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


class Driver:
    """`python -m runner ARGS` in a session of its own, output to a log file."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        log: Path,
        runner: list[str] | None = None,
    ):
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed by finish()/kill()
        self.process = subprocess.Popen(
            [*(runner or [sys.executable, "-m", "runner"]), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the driver alone (no clean-up of any kind), then whatever it left."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reap()

    def finish(self, timeout: float = DEADLINE) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self._reap()
        return code, self.log.read_text()

    def _reap(self) -> None:
        # Ray processes that outlive a killed driver (its dashboard and runtime-env agents
        # do) keep the driver's process group: end them so tests do not pile them up.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if not self._out.closed:
            self._out.close()


def run_cli(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = DEADLINE,
    runner: list[str] | None = None,
) -> tuple[int, str]:
    """Run `python -m runner ARGS` (or `runner ARGS`) to its end; (exit code, stdout and
    stderr together)."""
    log = cwd / f"cli-{time.monotonic_ns()}.log"
    return Driver(args, cwd, env or cli_env(), log, runner).finish(timeout)


def wait_for(condition, what: str, driver: Driver | None = None, timeout: float = DEADLINE):  # type: ignore[no-untyped-def]
    """Poll `condition()` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if driver is not None and not driver.alive():
            raise AssertionError(f"the driver ended before {what}:\n{driver.log.read_text()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def inject(folder: Path, code: str) -> str:
    """Write `code` as a sitecustomize module in `folder`; returns the PYTHONPATH that makes
    every Python process started with it (drivers, Ray workers) run it at start-up."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(code), encoding="utf-8")
    return f"{folder}{os.pathsep}{REPO}"


# Makes `methods.build` fail for cells of given widths, in whatever process builds them (Ray
# workers included): CPUSWEEP_TEST_FAULTS="17:raise,18:kill" raises at width 17 (an error in
# the training code, as a bug in a method would raise it) and SIGKILLs its own process at width
# 18 (as a crash in native code would end it). With CPUSWEEP_TEST_FAULTS_LOG set, each fault
# appends "width what pid" to that file first: how many times a cell was tried.
FAULTY_BUILD = """
    import importlib.abc, importlib.machinery, os, signal, sys

    FAULTS = {
        int(width): what
        for width, what in (
            item.split(":") for item in os.environ.get("CPUSWEEP_TEST_FAULTS", "").split(",")
            if item
        )
    }

    class _Wrap(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "methods":
                return None
            sys.meta_path.remove(self)
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                real_build = module.build

                def build(name, arch, *args, **kwargs):
                    fault = FAULTS.get(arch.width)
                    if fault and os.environ.get("CPUSWEEP_TEST_FAULTS_LOG"):
                        with open(os.environ["CPUSWEEP_TEST_FAULTS_LOG"], "a") as log:
                            log.write(f"{arch.width} {fault} {os.getpid()}\\n")
                    if fault == "raise":
                        raise ValueError(f"injected bug at width {arch.width} [/not markup]")
                    if fault == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real_build(name, arch, *args, **kwargs)

                module.build = build

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Wrap())
"""


def stop_after_checkpoint(
    monkeypatch: pytest.MonkeyPatch, epoch: int, stop: type[BaseException]
) -> None:
    """Make a cell raise `stop` right after saving its checkpoint of `epoch` (KeyboardInterrupt:
    Ctrl-C; an exception the runner does not catch: the process dying)."""
    real_save = CellCheckpoints.save

    def save_then_stop(self: CellCheckpoints, state: Any) -> None:
        real_save(self, state)
        if state.epoch == epoch:
            raise stop

    monkeypatch.setattr(CellCheckpoints, "save", save_then_stop)


def running_checkpoint(results: Path, min_epoch: int) -> dict[str, Any] | None:
    """A checkpoint of a cell that is not done, at `min_epoch` or later (with its key)."""
    import torch

    done = set(result_keys(results))
    for path in sorted((results / "checkpoints").glob("*.pt")):
        if path.stem in done:
            continue
        try:
            saved = torch.load(path, weights_only=True)
        except (OSError, RuntimeError, EOFError):
            continue  # replaced or deleted while read: look again
        if saved["epoch"] >= min_epoch:
            return dict(saved, key=path.stem)
    return None


def assert_bit_identical(job: Path, key: str, row: pd.Series) -> None:
    """The finished row of cell `key` equals an uninterrupted run of it in this process."""
    from runner.run.cellrun import run_cell

    [cell] = [c for c in expand(load_spec(job)).cells if c.key == key]
    reference = run_cell(cell.to_payload())["row"]
    assert row["weights_sha256"] == reference["weights_sha256"]
    assert row["test_accuracy"] == reference["test_accuracy"]
    assert list(row["confusion_matrix"][0]) == reference["confusion_matrix"][0]
    for name in ("train_loss", "val_accuracy", "val_loss"):
        assert [h[name] for h in row["history"]] == [h[name] for h in reference["history"]], name
