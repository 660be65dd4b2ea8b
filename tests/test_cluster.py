"""Sweeps on a real multi-node Ray cluster, all on loopback: cells spread over the worker
nodes, a node lost mid-sweep loses no cell and duplicates none, and a cell whose worker dies
mid-way continues from its checkpoint and ends bit-identical to an uninterrupted run.

The cluster (`ray.cluster_utils.Cluster`: a head that runs no cells and 1-CPU worker nodes)
lives in a process of its own (tests/ray_cluster_ctl.py) with token authentication on; the
driver is `python -m runner submit --address ...`, as a user would run it, presenting the token
through RAY_AUTH_MODE / RAY_AUTH_TOKEN.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from runner.job.grid import expand
from runner.job.spec import load_spec
from tests.conftest import REPO, write_job
from tests.faults import assert_bit_identical, running_checkpoint

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DEADLINE = 240  # seconds for anything to happen on a loaded 2-core machine


@dataclass
class ClusterHandle:
    process: subprocess.Popen[str]
    address: str
    head: str
    workers: list[str]
    env: dict[str, str]

    def ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return _read_answer(self.process)

    def node_for(self, short_id: str) -> str:
        [node] = [n for n in self.workers if n.startswith(short_id)]
        return node


def _read_answer(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdout is not None
    for line in process.stdout:  # skip anything that is not our JSON (Ray may log there)
        if line.startswith("{"):
            answer: dict[str, Any] = json.loads(line)
            assert "error" not in answer, answer
            return answer
    raise AssertionError(f"the cluster process ended (exit code {process.wait()})")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    # Token authentication, as Ray enables it by default for new clusters: the driver must
    # present the token to join.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), WORKERS="2")
    log = open(tmp_path_factory.mktemp("cluster") / "cluster.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.ray_cluster_ctl"],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    try:
        started = _read_answer(process)
        handle = ClusterHandle(
            process, started["address"], started["head"], list(started["workers"]), env
        )
        yield handle
        handle.ask("quit")
        process.wait(timeout=60)
    finally:
        # Whatever is left of the cluster's processes (raylets, workers, agents) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()


def ensure_two_workers(cluster: ClusterHandle) -> None:
    while len(cluster.workers) < 2:
        cluster.workers.append(cluster.ask("add")["node"])


def start_driver(cluster: ClusterHandle, job: Path, results: Path) -> subprocess.Popen[str]:
    log = open(results.parent / f"{results.name}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner",
            "submit",
            str(job),
            "--results",
            str(results),
            "--address",
            cluster.address,
        ],
        cwd=job.parent,
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(driver: subprocess.Popen[str], log: Path) -> str:
    try:
        driver.wait(timeout=DEADLINE)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    output = log.read_text()
    assert driver.returncode == 0, output
    return output


def read_rows(results: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in sorted((results / "cells").glob("*.parquet"))],
        ignore_index=True,
    )


def finished_nodes(results: Path) -> set[str]:
    return {
        pq.read_table(path, columns=["node"]).column("node")[0].as_py()
        for path in (results / "cells").glob("*.parquet")
    }


def wait_for_running_checkpoint(
    results: Path, driver: subprocess.Popen[str], min_nodes: int, min_epoch: int
) -> dict[str, Any]:
    """Poll until finished cells come from `min_nodes` distinct nodes and a running cell has a
    checkpoint of at least `min_epoch` epochs; return that checkpoint (with its key)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        assert driver.poll() is None, "the sweep ended before anything could be interrupted"
        assert time.monotonic() < deadline, "no running cell reached its checkpoint in time"
        if len(finished_nodes(results)) >= min_nodes:
            saved = running_checkpoint(results, min_epoch)
            if saved is not None:
                return saved
        time.sleep(0.05)


def long_job(tmp_path: Path, name: str, seeds: list[int]) -> Path:
    """Cells of 6 epochs of ~0.25 s each (more on a loaded machine): long enough to be caught
    mid-way after their epoch-2 checkpoint."""
    return write_job(
        tmp_path / f"{name}.toml",
        f"""
        name = "{name}"
        [grid]
        seed = {seeds}
        [params]
        method = "standard"
        dataset = "digits"
        depth = 2
        width = 64
        epochs = 6
        batch_size = 1
        lr = 0.01
        train_limit = 900
        [resources]
        memory_gb = 0.5
        checkpoint_every = 1
    """,
    )


def test_sweep_spreads_over_the_nodes_and_survives_losing_one(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    ensure_two_workers(cluster)
    job = long_job(tmp_path, "lose-node", seeds=[0, 1, 2, 3, 4, 5])
    results = tmp_path / "lose-node"
    driver = start_driver(cluster, job, results)
    try:
        # Cells finished on both worker nodes, others running: kill the node of a running
        # cell that is past its epoch-2 checkpoint.
        saved = wait_for_running_checkpoint(results, driver, min_nodes=2, min_epoch=2)
        spread = {node.split(":")[1] for node in read_rows(results)["node"]}
        victim = cluster.node_for(saved["node"].split(":")[1])
        cluster.ask(f"remove {victim}")
        cluster.workers.remove(victim)
        cluster.workers.append(cluster.ask("add")["node"])  # scale back out mid-sweep
    finally:
        output = finish(driver, tmp_path / "lose-node.log")

    assert f"Ray cluster at {cluster.address}, 2 CPUs, 2 cell slot(s)" in output
    # Cells ran on two worker nodes, never on the head (it offers no CPU).
    assert len(spread) >= 2 and cluster.head[:8] not in spread
    assert "6 cell(s) finished, 0 failed" in output  # each cell stored exactly once
    rows = read_rows(results).set_index("cell_key")
    expected = {c.key for c in expand(load_spec(job)).cells}
    assert set(rows.index) == expected and len(rows) == 6  # none lost, none twice
    assert (rows.drop(index=saved["key"])["resumed_from_epoch"] == 0).all()
    resumed = rows.loc[saved["key"]]
    assert resumed["resumed_from_epoch"] >= saved["epoch"] and resumed["resumes"] == 1
    assert not resumed["node"].endswith(victim[:8])  # finished elsewhere
    assert "resumed from its checkpoint" in output
    assert_bit_identical(job, saved["key"], resumed)
    assert not list((results / "checkpoints").glob("*.pt"))


def test_worker_killed_mid_cell_resumes_from_its_checkpoint_bit_identical(
    cluster: ClusterHandle, tmp_path: Path
) -> None:
    ensure_two_workers(cluster)
    job = long_job(tmp_path, "kill-worker", seeds=[7, 8])
    results = tmp_path / "kill-worker"
    driver = start_driver(cluster, job, results)
    try:
        saved = wait_for_running_checkpoint(results, driver, min_nodes=0, min_epoch=2)
        os.kill(saved["pid"], signal.SIGKILL)  # the Ray worker process computing the cell
    finally:
        output = finish(driver, tmp_path / "kill-worker.log")

    assert "2 cell(s) finished, 0 failed" in output
    rows = read_rows(results).set_index("cell_key")
    assert len(rows) == 2
    resumed = rows.loc[saved["key"]]
    assert resumed["resumed_from_epoch"] >= saved["epoch"] and resumed["resumes"] == 1
    assert resumed["pid"] != saved["pid"]
    assert_bit_identical(job, saved["key"], resumed)
