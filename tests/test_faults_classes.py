"""Failure classes, from real failures in real Ray workers, as `status` and the report show
them: a cell whose training code raises (application: recorded with its traceback, not
retried), a cell whose worker process dies on every try (worker_crash, after Ray's retries),
and cells stopped by the user (not failures at all: left to do, checkpoint kept). The other
Ray outcomes (out of memory, cancelled from outside) are classified by the same function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli.main import main
from runner.results.store import ResultsStore
from tests.faults import (
    FAULTY_BUILD,
    Driver,
    cli_env,
    inject,
    job_keys,
    result_keys,
    wait_for,
    write_job,
)

JOB = """
    name = "classes"
    [grid]
    width = [18, 17, 40, 16]  # the crashing cell first: its retries take longest
    [params]
    method = "standard"
    dataset = "digits"
    depth = 2
    epochs = 2
    batch_size = 20
    lr = 0.01
    train_limit = 400
    [[override]]
    where = {{ width = 40 }}
    set = {{ epochs = 200, batch_size = 1, train_limit = 900 }}  # stopped long before
    [resources]
    memory_gb = 0.5
"""


def _records(results: Path) -> dict[int, dict[str, object]]:
    records = [json.loads(p.read_text()) for p in (results / "failed").glob("*.json")]
    return {int(r["values"]["width"]): r for r in records}


@pytest.mark.ray
@pytest.mark.slow
def test_failure_classes_from_real_workers_in_status_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path / "classes.toml", JOB.format())
    results = tmp_path / "results"
    env = cli_env(PYTHONPATH=inject(tmp_path / "inject", FAULTY_BUILD))
    env["CPUSWEEP_TEST_FAULTS"] = "17:raise,18:kill"
    env["CPUSWEEP_TEST_FAULTS_LOG"] = str(tmp_path / "faults.log")
    args = ["submit", str(job), "--results", str(results), "--cpus", "2"]
    driver = Driver(args, tmp_path, env, tmp_path / "driver.log")
    try:
        # Both failures recorded, the long cell (width 40) running with a checkpoint: stop.
        wait_for(lambda: len(_records(results)) == 2, "two failure records", driver)
        wait_for(lambda: list((results / "checkpoints").glob("*.pt")), "a checkpoint", driver)
        driver.process.terminate()
    finally:
        code, output = driver.finish()
    assert code == 130, output
    assert "were stopped, not failed" in output
    records = _records(results)
    assert sorted(records) == [17, 18]  # the stopped cell is not a failure

    application = records[17]
    assert application["error_class"] == "application"
    assert application["error_type"] == "ValueError"
    assert "injected bug at width 17" in str(application["traceback"])
    assert "in build" in str(application["traceback"])  # where it was raised
    crash = records[18]
    assert crash["error_class"] == "worker_crash", crash
    assert crash["error_type"] == "WorkerCrashedError"
    # Tries, each by a process of its own: the raising cell once (an error in the code is a
    # result, not retried), the crashing one 1 + Ray's 3 retries.
    tries = [line.split() for line in (tmp_path / "faults.log").read_text().splitlines()]
    assert len([t for t in tries if t[0] == "17"]) == 1
    crashes = [t for t in tries if t[0] == "18"]
    assert len(crashes) == 4 and len({pid for _, _, pid in crashes}) == 4
    # The message reached the terminal literally, markup-like text included.
    assert "injected bug at width 17 [/not markup]" in output.replace("\n", "")

    assert len(result_keys(results)) == 1  # width 16
    [checkpoint] = (results / "checkpoints").glob("*.pt")
    assert checkpoint.stem in job_keys(job) and checkpoint.stem not in result_keys(results)
    capsys.readouterr()

    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 1 done, 2 failed, 1 to run" in out
    assert "failures by class: application 1, worker_crash 1" in out
    assert "application: an error in the training code" in out
    assert "worker_crash: the process running the cell died" in out
    assert "1 unfinished cell(s) have a checkpoint" in out

    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert "failures by class: application 1, worker_crash 1" in out
    page = (results / "report" / "report.md").read_text()
    assert "- **application** (1): an error in the training code" in page
    assert "- **worker_crash** (1): the process running the cell died" in page
    assert "| ValueError: injected bug at width 17 [/not markup] |" in page


def test_every_ray_outcome_has_its_class_and_a_hint_in_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The executor's classification of what `ray.get` raises, on Ray's own exception types
    (no cluster needed), and each class as `status` shows it."""
    import ray.exceptions as rex

    from runner.job.cells import Cell
    from runner.job.spec import SHARED_PARAMS
    from runner.run.executors import _classify_ray_error, _failure_result

    outcomes = {
        "out_of_memory": rex.OutOfMemoryError("1 worker(s) were killed due to the node ..."),
        "cancelled": rex.TaskCancelledError(),
        "worker_crash": rex.WorkerCrashedError(),
        "application": rex.RayTaskError("_ray_entry", "Traceback ...", ValueError("x")),
    }
    node_died = rex.NodeDiedError("node 1 died") if hasattr(rex, "NodeDiedError") else None
    if node_died is not None:
        assert _classify_ray_error(node_died) == "worker_crash"
    store = ResultsStore(tmp_path / "results")
    store.prepare()
    for seed, (expected, exc) in enumerate(outcomes.items()):
        assert _classify_ray_error(exc) == expected
        values = {p.name: p.default for p in SHARED_PARAMS}
        values.update(method="standard", dataset="digits", seed=seed)
        payload = Cell(values=values, torch_threads=1).to_payload()
        store.write_failure(_failure_result(payload, expected, exc)["failure"])
    assert main(["status", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "failures by class: application 1, out_of_memory 1, worker_crash 1, cancelled 1" in out
    assert "cancelled: the cell's task was cancelled from outside this sweep" in out
    assert "out_of_memory: the cell ran out of memory" in out and "memory_gb" in out
    # The records' path in one piece, to copy (a table column folded it mid-word).
    assert f"full records, with tracebacks: {store.failed_dir}/<key>.json" in out
