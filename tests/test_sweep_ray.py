"""End to end through a real local Ray (2 CPUs, loopback only)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from runner.cli.main import main
from tests.conftest import REPO, write_job

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def read_cells(results: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in sorted((results / "cells").glob("*.parquet"))],
        ignore_index=True,
    )


def test_ray_sweep_matches_serial_bit_for_bit(
    digits_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ray_dir, serial_dir = tmp_path / "ray", tmp_path / "serial"
    assert main(["submit", str(digits_job), "--results", str(ray_dir), "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "local Ray (loopback only), 2 CPUs, 2 cell slot(s)" in out
    assert main(["submit", str(digits_job), "--results", str(ray_dir), "--cpus", "2"]) == 0
    assert "Nothing to run" in capsys.readouterr().out

    assert (
        main(["submit", str(digits_job), "--results", str(serial_dir), "--executor", "serial"]) == 0
    )
    ray_rows = read_cells(ray_dir).set_index("cell_key").sort_index()
    serial_rows = read_cells(serial_dir).set_index("cell_key").sort_index()
    assert len(ray_rows) == 4
    assert list(ray_rows["weights_sha256"]) == list(serial_rows["weights_sha256"])
    assert list(ray_rows["test_accuracy"]) == list(serial_rows["test_accuracy"])
    # The constrained-CPU claim, observed inside each Ray task.
    assert (ray_rows["torch_threads"] == 1).all()
    assert (ray_rows["omp_num_threads"] == "1").all()
    # And the steady allocator (runner/run/allocator.py), in the workers as in this process.
    steady = "glibc mmap 32 MiB, trim 256 MiB"
    assert (ray_rows["allocator"] == steady).all() and (serial_rows["allocator"] == steady).all()
    assert ray_rows["node"].str.contains(":").all()  # host:ray-node-id
    assert (ray_rows["pid"] != os.getpid()).all()


def test_driver_killed_mid_sweep_is_resumed_by_the_same_command(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "kill.toml",
        """
        name = "kill"
        [grid]
        seed = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        [params]
        method = "standard"
        dataset = "digits"
        depth = 2
        width = 64
        epochs = 4
        batch_size = 1
        [resources]
        memory_gb = 0.5
    """,
    )
    results = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "runner",
        "submit",
        str(job),
        "--results",
        str(results),
        "--cpus",
        "2",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list((results / "cells").glob("*.parquet"))) < 2:
            assert driver.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)  # the driver process only, no clean-up at all
        driver.wait(timeout=30)
    finally:
        time.sleep(1)
        # Ray's helper processes that outlive a killed driver: clean up after the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    done_before = {p.stem for p in (results / "cells").glob("*.parquet")}
    assert 2 <= len(done_before) < 10, "the kill should land mid-sweep"

    resumed = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(done_before)} done, 0 failed, {10 - len(done_before)} to run" in resumed.stdout
    assert f"{10 - len(done_before)} cell(s) finished" in resumed.stdout
    rows = read_cells(results)
    assert len(rows) == 10 and rows["cell_key"].is_unique  # none lost, none twice
    assert sorted(rows["seed"]) == list(range(10))
    assert not list(results.rglob("*.tmp"))
    # Cells finished before the kill were not touched by the resume.
    for key in done_before:
        assert (results / "cells" / f"{key}.parquet").exists()


def test_every_method_and_the_cnn_run_through_ray(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "methods.toml",
        """
        name = "methods"
        [grid]
        method = ["standard", "dropout", "adaptive_dropout", "mc_approx", "alsh_approx"]
        [params]
        dataset = "digits"
        depth = 2
        width = 64
        epochs = 1
        batch_size = 20
        lr = 0.05
        train_limit = 300
        [[override]]
        where = { method = "mc_approx" }
        set = { arch = "cnn", depth = 1, train_limit = 60 }
        [resources]
        memory_gb = 1.0
    """,
    )
    results = tmp_path / "results"
    assert main(["submit", str(job), "--results", str(results), "--cpus", "2"]) == 0
    rows = read_cells(results).set_index("method")
    assert sorted(rows.index) == sorted(
        ["standard", "dropout", "adaptive_dropout", "mc_approx", "alsh_approx"]
    )
    assert rows.loc["mc_approx", "arch"] == "cnn"
    assert (rows["torch_threads"] == 1).all()
    stats = {
        method: {s["name"] for s in history[-1]["stats"]}
        for method, history in rows["history"].items()
    }
    assert "active_units.layer1" in stats["dropout"]
    assert {"rebuilds", "rebuild_seconds", "probe_rel_error.layer2"} <= stats["alsh_approx"]
    assert "keep_rate.layer2" in stats["adaptive_dropout"]
    assert any(name.startswith("sampled_pairs.grad_weight.conv") for name in stats["mc_approx"])
