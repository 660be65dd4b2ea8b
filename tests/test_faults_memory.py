"""Cells that run out of memory, for real: recorded as `out_of_memory` (not as a bug in the
code, not retried forever), the sweep goes on, and `--retry-failed` re-runs the cell once it
is given the memory (raising `memory_gb` does not change its key).

Two real ways a cell runs out of memory:
- an allocation fails inside the cell (here: the driver's address space is capped with
  RLIMIT_AS and the cell's weights do not fit): torch raises a RuntimeError;
- Ray's memory monitor kills the worker when the node runs low (here: its threshold is set
  just above what the machine uses now, in the test's environment only).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from runner.cli.main import main
from tests.faults import assert_complete, cli_env, job_keys, run_cli, write_job

HOG_JOB = """
    name = "oom"
    [grid]
    width = [{hog}, 16]
    [params]
    method = "standard"
    dataset = "digits"
    depth = 2
    epochs = 1
    batch_size = 20
    lr = 0.01
    train_limit = 40
    [resources]
    memory_gb = {memory_gb}
"""

# Runs `python -m runner ARGS` with the address space capped at what the process has mapped
# once its libraries are loaded, plus a margin: a 16-unit cell fits, a 14000-unit one (two
# 784 MB matrices, weights and gradients) does not.
CAPPED = """
    import resource, sys
    import numpy, pyarrow.parquet, sklearn.datasets, torch  # what every run maps anyway
    import runner.cli.main, runner.run.trainer, methods

    def mapped() -> int:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))

    cap = mapped() + 1024 * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.exit(runner.cli.main.main(sys.argv[1:]))
"""


def _failure(results: Path, key: str) -> dict[str, object]:
    record: dict[str, object] = json.loads((results / "failed" / f"{key}.json").read_text())
    return record


def _keys_by_width(job: Path) -> tuple[str, str]:
    from runner.job.grid import expand
    from runner.job.spec import load_spec

    cells = expand(load_spec(job)).cells
    [hog] = [c.key for c in cells if c.values["width"] != 16]
    [small] = [c.key for c in cells if c.values["width"] == 16]
    return hog, small


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc")
def test_a_failed_allocation_is_out_of_memory_and_retried_with_more_memory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path / "oom.toml", HOG_JOB.format(hog=14000, memory_gb=0.5))
    hog, small = _keys_by_width(job)
    results = tmp_path / "results"
    (tmp_path / "capped.py").write_text(textwrap.dedent(CAPPED))
    code, output = run_cli(
        ["submit", str(job), "--results", str(results), "--executor", "serial"],
        cwd=tmp_path,
        runner=[sys.executable, str(tmp_path / "capped.py")],
    )
    assert code == 1, output  # some cells failed; the sweep itself went on
    assert "1 cell(s) finished, 1 failed" in output
    assert "out_of_memory" in output
    failure = _failure(results, hog)
    assert failure["error_class"] == "out_of_memory", failure
    assert "can't allocate memory" in str(failure["message"])
    assert_complete(results, {small})

    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "failures by class: out_of_memory 1" in out
    assert "raise [resources] memory_gb" in out

    # More memory for the cell: its key stays, so it is the same failed cell...
    write_job(tmp_path / "oom.toml", HOG_JOB.format(hog=14000, memory_gb=4.0))
    assert _keys_by_width(job) == (hog, small)
    assert main(["plan", str(job), "--results", str(results)]) == 0
    assert "2 cells: 1 done, 1 failed, 0 to run" in capsys.readouterr().out
    # ...which a plain re-run leaves alone, and --retry-failed runs, here with the memory.
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    assert main(args) == 1
    assert "Nothing to run (re-run them with --retry-failed)" in capsys.readouterr().out
    code, output = run_cli([*args, "--retry-failed"], cwd=tmp_path)
    assert code == 0, output
    assert "1 cell(s) finished, 0 failed" in output
    assert_complete(results, {hog, small})


def _used_bytes() -> tuple[int, int]:
    """(used, total) as Ray's memory monitor counts them without a cgroup limit."""
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, value = line.split(":")
            info[name] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Ray's memory monitor")
def test_a_cell_killed_by_rays_memory_monitor_is_out_of_memory_and_not_retried_forever(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node "runs low" 3 GiB above what the machine uses now: a 24000-unit cell (two
    2.3 GB matrices) crosses it, a 16-unit one does not. Ray kills the big one, retries it
    once (the runner's RAY_task_oom_retries; Ray's own default retries forever, and this test
    would time out), then the failure is recorded and the small cell still runs."""
    job = write_job(tmp_path / "oom.toml", HOG_JOB.format(hog=24000, memory_gb=0.5))
    hog, small = _keys_by_width(job)
    results = tmp_path / "results"
    used, total = _used_bytes()
    env = cli_env(
        RAY_memory_usage_threshold=f"{(used + 3 * 2**30) / total:.4f}",
        RAY_memory_monitor_refresh_ms="50",
    )
    env.pop("RAY_task_oom_retries", None)  # the runner's own setting is what is tested
    args = ["submit", str(job), "--results", str(results), "--cpus", "1"]
    code, output = run_cli(args, cwd=tmp_path, env=env, timeout=180)
    assert code == 1, output
    failure = _failure(results, hog)
    assert failure["error_class"] == "out_of_memory", failure
    assert failure["error_type"] == "OutOfMemoryError"
    assert "running low on memory" in str(failure["message"])
    killed = set(re.findall(r"Selected to kill: \(Task: .*?pid=(\d+)", output + str(failure)))
    assert len(killed) <= 2, killed  # the first try and one retry at most
    assert_complete(results, {small})
    assert main(["status", str(results)]) == 0
    assert "failures by class: out_of_memory 1" in capsys.readouterr().out
    assert job_keys(job) == {hog, small}
