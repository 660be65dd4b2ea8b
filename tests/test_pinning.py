"""Core pinning: every thread of a cell on a core of its own, released afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.run.pinning import LOCK_DIR_ENV, pinned_cores

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")


def thread_affinities() -> set[frozenset[int]]:
    return {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    return tmp_path / "locks"


def test_every_thread_is_pinned_then_restored(lock_dir: Path) -> None:
    import torch

    torch.set_num_threads(1)
    torch.ones(10).sum()  # make sure torch's threads exist before pinning
    original = os.sched_getaffinity(0)
    with pinned_cores(1) as cores:
        assert len(cores) == 1 and cores[0] in original
        assert thread_affinities() == {frozenset(cores)}
    assert thread_affinities() == {frozenset(original)}


def test_a_core_held_by_another_cell_is_not_shared(lock_dir: Path, tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    holder = textwrap.dedent("""
        import sys
        from runner.run.pinning import pinned_cores
        with pinned_cores(1) as cores:
            print(cores[0], flush=True)
            sys.stdin.readline()
    """)
    env = dict(os.environ, **{LOCK_DIR_ENV: str(lock_dir)})
    proc = subprocess.Popen(
        [sys.executable, "-c", holder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        theirs = int(proc.stdout.readline())
        with pinned_cores(1) as mine:
            assert mine and mine[0] != theirs
        free = len(os.sched_getaffinity(0)) - 1
        with pinned_cores(free + 1) as too_many:
            assert too_many == []  # not enough free cores: unpinned, never shared
    finally:
        proc.communicate("\n", timeout=30)


def test_a_pinned_cell_records_its_core(lock_dir: Path) -> None:
    from runner.run.cellrun import run_cell
    from tests.test_learning import digits_cell

    original = os.sched_getaffinity(0)
    result = run_cell(digits_cell(epochs=1, batch_size=20, lr=0.1).to_payload(), pin_cores=1)
    assert result["status"] == "ok", result.get("failure")
    row = result["row"]
    assert row["pinned_cores"] != "" and row["cpu_affinity"] == row["pinned_cores"]
    assert os.sched_getaffinity(0) == original  # released for the next cell of this worker
    unpinned = run_cell(digits_cell(epochs=1, batch_size=20, lr=0.1).to_payload())
    assert unpinned["row"]["pinned_cores"] == ""
