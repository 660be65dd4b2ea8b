"""Sweeps on a real SLURM cluster: two nodes on loopback (tests/slurm_cluster.py), jobs
submitted with `python -m runner slurm ... --submit` as a user would.

- a sweep runs on both SLURM nodes, every cell exactly once, each row naming its job and node,
  and the job's Ray nodes are gone when it ends;
- the pre-limit signal mid-sweep stops the driver as Ctrl-C does, leaving checkpoints; the job
  requeues itself and its next allocation finishes the sweep, the interrupted cells ending
  bit-identical to an uninterrupted run;
- requests the cluster can never satisfy are refused at once with sbatch's reason and the fix.

Run with `python -m pytest -m slurm` (as root, with slurm-wlm and munge installed).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.faults import (
    assert_bit_identical,
    assert_complete,
    cli_env,
    digits_job,
    job_keys,
    run_cli,
    running_checkpoint,
)
from tests.slurm_cluster import (
    NODES,
    SlurmCluster,
    SlurmUnavailable,
    is_loopback,
    listening_addresses,
    process_name,
)

pytestmark = pytest.mark.slurm

JOB_DEADLINE = 300  # seconds for a job to finish on a loaded 2-core machine


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        try:
            cluster.start()
        except SlurmUnavailable as exc:
            pytest.fail(str(exc))
        daemons = listening_addresses(p.pid for p in cluster.processes.values())
        outside = {pid: a for pid, a in daemons.items() if not all(map(is_loopback, a))}
        assert not outside, f"SLURM daemons listening beyond loopback: {outside}"
        yield cluster
    finally:
        killed = cluster.stop()
    assert not killed, f"processes of the SLURM cluster were left running: {killed}"


def submit(slurm: SlurmCluster, job: Path, results: Path, *args: str) -> tuple[str, str]:
    """`runner slurm JOB --nodes 2 --submit`; (job id, output)."""
    code, output = run_cli(
        ["slurm", str(job), "--nodes", "2", "--results", str(results), "--submit", *args],
        cwd=job.parent,
        env=slurm.env(cli_env()),
    )
    assert code == 0, output
    match = re.search(r"Submitted batch job (\d+)", output)
    assert match, output
    return match.group(1), output


def job_output(results: Path, job_id: str) -> str:
    path = results / "slurm" / f"slurm-{job_id}.out"
    return path.read_text() if path.exists() else ""


def rows(results: Path) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(p) for p in sorted((results / "cells").glob("*.parquet"))],
        ignore_index=True,
    ).set_index("cell_key")


def finish(slurm: SlurmCluster, job_id: str, results: Path) -> str:
    """Wait for the job to complete; its output."""
    job = slurm.wait_for_job(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, JOB_DEADLINE)
    output = job_output(results, job_id)
    assert (job.state, job.exit_code) == ("COMPLETED", "0:0"), f"{job}\n{output}"
    return output


def assert_ray_gone(slurm: SlurmCluster, job_id: str) -> None:
    """Nothing of the job runs any more: it stopped its own Ray nodes."""
    deadline = time.monotonic() + 30
    while left := slurm.job_processes(job_id):
        assert time.monotonic() < deadline, [process_name(p) for p in left]
        time.sleep(0.5)


def test_sweep_runs_on_both_nodes_each_cell_once(slurm: SlurmCluster, tmp_path: Path) -> None:
    job = digits_job(tmp_path / "two.toml", "two-nodes", seeds=(0, 1, 2, 3))
    results = tmp_path / "two"
    job_id, said = submit(slurm, job, results, "--mem-per-cpu", "1500")
    script = results / "slurm" / "two-nodes.sbatch"
    assert f"Wrote {script}" in said and script.is_file()

    output = finish(slurm, job_id, results)
    assert "Ray cluster at 127.0.0.1:" in output and "2 node(s), CPUs 1 1" in output
    assert "Running on Ray cluster at 127.0.0.1:" in output and "2 CPUs, 2 cell slot(s)" in output
    assert "4 cell(s) finished, 0 failed" in output
    assert_complete(results, job_keys(job))  # every cell exactly once, nothing left over
    table = rows(results)
    assert set(table["slurm_job_id"]) == {job_id}
    assert set(table["slurm_node"]) == set(NODES)  # cells ran on both SLURM nodes
    assert_ray_gone(slurm, job_id)
    for node in NODES:  # each Ray node offered what SLURM gave it, and stopped itself
        log = (results / "slurm" / f"{job_id}-0" / f"ray-{node}.log").read_text()
        assert f"up on {node} (127.0.0.1, 1 CPUs, 1500 MiB from SLURM)" in log, log
        assert "the sweep is over: stopping the Ray node" in log, log

    code, status = run_cli(["status", str(results)], cwd=tmp_path)
    assert code == 0 and "4 cells: 4 done, 0 failed, 0 to run" in status, status


@pytest.mark.timeout(900)
def test_prelimit_signal_requeues_and_the_next_allocation_resumes_bit_identical(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    # Cells of 6 epochs of ~0.3-1 s each, a checkpoint after every epoch.
    job = digits_job(
        tmp_path / "long.toml",
        "prelimit",
        seeds=(0, 1, 2, 3),
        epochs=6,
        width=64,
        batch_size=1,
        train_limit=900,
        extra="checkpoint_every = 1\n",
    )
    results = tmp_path / "long"
    job_id, _ = submit(slurm, job, results)

    deadline = time.monotonic() + JOB_DEADLINE
    while (saved := running_checkpoint(results, min_epoch=2)) is None:
        state = slurm.job(job_id)
        assert state.state in ("PENDING", "RUNNING"), f"{state}\n{job_output(results, job_id)}"
        assert time.monotonic() < deadline, "no running cell reached its epoch-2 checkpoint"
        time.sleep(0.1)
    # Mid-sweep, every process of the job (Ray's servers, workers, the driver) and of the
    # cluster listens on loopback only.
    listening = listening_addresses(slurm.job_processes(job_id))
    assert listening, "found no Ray server of the job"
    outside = {process_name(p): a for p, a in listening.items() if not all(map(is_loopback, a))}
    assert not outside, f"listening beyond loopback: {outside}"

    # What SLURM sends before the time limit (--signal=B:USR1@...), now.
    slurm.run("scancel", "--signal=USR1", "--batch", job_id)
    requeued = slurm.wait_for_job(job_id, {"PENDING", "COMPLETED", "FAILED"}, JOB_DEADLINE)
    first = job_output(results, job_id)
    assert (requeued.state, requeued.restarts) == ("PENDING", 1), f"{requeued}\n{first}"
    assert "USR1: stopping the sweep" in first
    assert "Interrupted. Every finished cell is saved." in first
    assert f"requeued job {job_id}" in first
    assert_ray_gone(slurm, job_id)
    done_before = {p.stem for p in (results / "cells").glob("*.parquet")}
    left = {p.stem for p in (results / "checkpoints").glob("*.pt")}
    assert saved["key"] in left and not left & done_before  # checkpoints of unfinished cells
    assert not (results / "failed").exists() or not list((results / "failed").iterdir())

    # A requeued job waits a while before it is eligible again; let it run soon, not at once:
    # slurmd refuses a credential issued in the same second as the old allocation's kill
    # ("Killing non-startable batch JobId=N: Job credential revoked", seen here under load).
    slurm.run("scontrol", "update", f"JobId={job_id}", "StartTime=now+3")
    output = finish(slurm, job_id, results)
    second = output[len(first) :]
    todo = 4 - len(done_before)
    assert f"4 cells: {len(done_before)} done, 0 failed, {todo} to run" in second
    assert f"{todo} cell(s) finished, 0 failed" in second  # nothing ran twice
    assert "resumed from its checkpoint" in second
    assert_complete(results, job_keys(job))
    table = rows(results)
    assert set(table["slurm_job_id"]) == {job_id}
    resumed = table.loc[saved["key"]]
    assert resumed["resumed_from_epoch"] >= saved["epoch"] and resumed["resumes"] == 1
    assert_bit_identical(job, saved["key"], resumed)  # weights_sha256, losses, accuracies
    for key in left - {saved["key"]}:  # any other interrupted cell, too
        assert table.loc[key]["resumes"] == 1
        assert_bit_identical(job, key, table.loc[key])
    assert_ray_gone(slurm, job_id)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--nodes", "3"],
            [
                "Requested node configuration is not available",
                "partition debug cannot give 3 node(s); it has 2 node(s)",
                "lower --nodes",
            ],
        ),
        (
            ["--nodes", "2", "--cpus-per-node", "4"],
            ["cannot give 2 node(s) with 4 CPUs each", "with 1 CPUs and 2000 MB"],
        ),
        (
            ["--partition", "nowhere"],
            ["Invalid partition", "no partition 'nowhere'", "(partitions: debug)"],
        ),
    ],
)
def test_a_request_the_cluster_cannot_satisfy_is_refused_at_once(
    slurm: SlurmCluster, tmp_path: Path, args: list[str], expected: list[str]
) -> None:
    job = digits_job(tmp_path / "bad.toml", "bad-request")
    results = tmp_path / "bad"
    queued = slurm.run("squeue", "--noheader").stdout
    code, output = run_cli(
        ["slurm", str(job), "--results", str(results), "--submit", *args],
        cwd=tmp_path,
        env=slurm.env(cli_env()),
    )
    assert code == 2, output
    flat = " ".join(output.split())  # the console folds long lines
    assert "SLURM refused the job" in flat
    for text in expected:
        assert text in flat, output
    script = results / "slurm" / "bad-request.sbatch"
    assert f"Nothing was submitted; the script is kept at {script}" in flat
    assert script.is_file()
    assert slurm.run("squeue", "--noheader").stdout == queued  # nothing queued
