"""`runner export` to a real local MLflow store and to TensorBoard event files, read back with
each tool's own reader (mlflow.search_runs and MlflowClient; TensorBoard's EventAccumulator).

A real small sweep on the bundled digits (serial executor): three methods at depth 1 first,
then depth 2 joins with one cell failing (injected), then that cell is retried. Expected values
come from the result files themselves (pyarrow), not from runner/export/.

Marker `export`: needs the extras (`pip install -e '.[mlflow,tensorboard]'`); .ci/run runs
these with `python -m pytest -m export`. Offline: every test runs with the network guard, and
one runs the CLI in a subprocess outside pytest (where MLflow's telemetry would otherwise be
on) recording every connection attempt."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import methods
from runner.cli.main import main
from tests.conftest import REPO, write_job
from tests.test_report import fabricate

pytestmark = [pytest.mark.export, pytest.mark.usefixtures("no_network")]

JOB = """
name = "export-test"
description = "three methods on the digits, for the export tests"
[grid]
method = ["standard", "alsh_approx", "mc_approx"]
depth = {depths}
[params]
dataset = "digits"
width = 32
epochs = 2
batch_size = 20
lr = 0.05
train_limit = 200
[resources]
memory_gb = 0.5
"""
FAILING = ("mc_approx", 2)  # method and depth of the cell that fails in stage 2


@dataclass
class Stages:
    depth1: Path  # 3 finished cells (depth 1)
    depth2: Path  # + 2 finished at depth 2, and FAILING failed
    job2: Path  # the job file of stage 2 (for the retry)


def _submit(job: Path, results: Path, *extra: str) -> int:
    return main(["submit", str(job), "--executor", "serial", "--results", str(results), *extra])


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> Stages:
    base = tmp_path_factory.mktemp("sweep")
    job1 = write_job(base / "depth1.toml", JOB.format(depths="[1]"))
    job2 = write_job(base / "depth2.toml", JOB.format(depths="[1, 2]"))
    live = base / "live"
    assert _submit(job1, live) == 0
    depth1 = base / "depth1"
    shutil.copytree(live, depth1)
    real_build = methods.build

    def flaky_build(name, arch, *args, **kwargs):  # type: ignore[no-untyped-def]
        if (name, arch.depth) == FAILING:
            raise RuntimeError("injected failure for the export test")
        return real_build(name, arch, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(methods, "build", flaky_build)
        assert _submit(job2, live) == 1
    depth2 = base / "depth2"
    shutil.copytree(live, depth2)
    assert len(list((depth2 / "cells").glob("*.parquet"))) == 5
    assert len(list((depth2 / "failed").glob("*.json"))) == 1
    return Stages(depth1, depth2, job2)


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "results"
    shutil.copytree(source, target)
    return target


def _rows(results: Path) -> dict[str, dict[str, Any]]:
    """Every finished cell's row, read straight from its Parquet file."""
    rows = {}
    for path in (results / "cells").glob("*.parquet"):
        row = pq.read_table(path).to_pylist()[0]
        rows[row["cell_key"]] = row
    return rows


def _failures(results: Path) -> dict[str, dict[str, Any]]:
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8"))
        for p in (results / "failed").glob("*.json")
    }


# --- MLflow ------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_module() -> Iterator[Any]:
    import mlflow

    yield mlflow
    mlflow.set_tracking_uri(None)


def _uri(results: Path) -> str:
    return f"sqlite:///{(results / 'mlflow' / 'mlflow.db').resolve()}"


def _runs(mlflow: Any, uri: str, experiment: str = "export-test") -> Any:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], run_view_type=3)  # every run


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_mlflow_holds_one_parent_and_one_child_per_cell_with_params_metrics_and_tags(
    stages: Stages,
    tmp_path: Path,
    mlflow_module: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = _copy(stages.depth2, tmp_path)
    assert main(["export", str(results), "--to", "mlflow"]) == 0
    out = capsys.readouterr().out
    assert "5 cell run(s) created, 0 skipped" in out
    assert "failed cells: 1 run(s) created" in out
    assert _uri(results) in out

    mlflow = mlflow_module
    runs = _runs(mlflow, _uri(results))
    client = mlflow.MlflowClient(tracking_uri=_uri(results))
    parents = runs[runs["tags.cpusweep.role"] == "job"]
    assert len(parents) == 1
    parent = parents.iloc[0]
    assert parent["tags.mlflow.runName"] == "export-test"
    assert parent["status"] == "FAILED"  # one cell failed
    assert parent["metrics.cells_finished"] == 5 and parent["metrics.cells_failed"] == 1
    assert parent["metrics.cells_missing"] == 0
    children = runs[runs["tags.cpusweep.role"] == "cell"]
    assert len(children) == 6
    assert (children["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    assert children["tags.cpusweep.cell_key"].is_unique

    rows = _rows(results)
    assert set(children[children["status"] == "FINISHED"]["tags.cpusweep.cell_key"]) == set(rows)
    for key, row in rows.items():
        run = children[children["tags.cpusweep.cell_key"] == key].iloc[0]
        # parameters, by their job-file names, as the cell ran (cell_json)
        values = json.loads(row["cell_json"])["values"]
        params = {c[len("params.") :]: run[c] for c in runs.columns if c.startswith("params.")}
        assert {k: v for k, v in params.items() if isinstance(v, str)} == {
            k: str(v) for k, v in values.items()
        }
        assert params["depth"] == str(row["depth"]) and params["lr"] == "0.05"
        # tags
        assert run["tags.cpusweep.method_version"] == str(row["method_version"])
        assert run["tags.cpusweep.node"] == row["node"]
        flag = run["tags.cpusweep.learning_flag"]
        assert (flag if isinstance(flag, str) else "") == row["learning_flag"]
        # per-epoch metrics, step = epoch
        history = row["history"]
        for name in ("val_accuracy", "train_loss", "forward_seconds", "upkeep_seconds"):
            expected = [(h["epoch"], h[name]) for h in history]
            got = _history(client, run["run_id"], name)
            assert [s for s, _ in got] == [1, 2], name
            assert all(_same(a, b) for (_, a), (_, b) in zip(got, expected, strict=True)), name
        stat_names = {s["name"] for h in history for s in h["stats"]}
        for stat in stat_names:
            expected = [
                (h["epoch"], s["value"]) for h in history for s in h["stats"] if s["name"] == stat
            ]
            assert _history(client, run["run_id"], f"stat.{stat}") == expected, stat
        # final metrics
        assert run["metrics.test_accuracy"] == row["test_accuracy"]
        assert run["metrics.seconds_per_epoch"] == row["seconds_per_epoch"]
        if row["approx_test_accuracy"] is None:
            assert math.isnan(run["metrics.approx_test_accuracy"])  # not logged
        else:
            assert run["metrics.approx_test_accuracy"] == row["approx_test_accuracy"]
        # the confusion matrix
        confusion = mlflow.artifacts.load_dict(run["artifact_uri"] + "/confusion_matrix.json")
        assert confusion["matrix"] == row["confusion_matrix"]

    methods_seen = {r["method"] for r in rows.values()}
    assert methods_seen == {"standard", "alsh_approx", "mc_approx"}
    alsh = next(k for k, r in rows.items() if r["method"] == "alsh_approx" and r["depth"] == 2)
    alsh_run = children[children["tags.cpusweep.cell_key"] == alsh].iloc[0]
    assert len(_history(client, alsh_run["run_id"], "stat.probe_rel_error.layer2")) == 2
    assert len(_history(client, alsh_run["run_id"], "stat.active_overlap.layer2")) == 2

    (key, record), *_ = _failures(results).items()
    failed = children[children["status"] == "FAILED"].iloc[0]
    assert failed["tags.cpusweep.cell_key"] == key
    assert failed["tags.cpusweep.error_class"] == record["error_class"] == "application"
    assert failed["tags.cpusweep.error_type"] == "RuntimeError"
    assert "injected failure" in failed["tags.cpusweep.error_message"]
    assert failed["params.method"] == "mc_approx" and failed["params.depth"] == "2"
    stored = mlflow.artifacts.load_dict(failed["artifact_uri"] + "/failure.json")
    assert "injected failure" in stored["traceback"]

    artifacts = {a.path for a in client.list_artifacts(parent["run_id"])}
    assert {"job.toml", "report"} <= artifacts
    figures = [a.path for a in client.list_artifacts(parent["run_id"], "report/figures")]
    assert figures and all(p.endswith(".png") for p in figures)
    assert (results / "mlflow" / "artifacts").is_dir()


def test_exporting_again_adds_new_cells_and_never_duplicates_a_run(
    stages: Stages, tmp_path: Path, mlflow_module: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    results = _copy(stages.depth1, tmp_path)
    uri = _uri(results)
    assert main(["export", str(results), "--to", "mlflow"]) == 0
    runs = _runs(mlflow_module, uri)
    assert len(runs) == 4 and (runs["status"] == "FINISHED").all()
    assert main(["export", str(results), "--to", "mlflow"]) == 0
    assert "0 cell run(s) created, 3 skipped as already exported" in capsys.readouterr().out
    assert len(_runs(mlflow_module, uri)) == 4

    # The sweep goes on: depth 2 joins, one cell of it fails.
    shutil.copy(stages.depth2 / "job.toml", results / "job.toml")
    for folder in ("cells", "failed"):
        for path in (stages.depth2 / folder).iterdir():
            if not (results / folder / path.name).exists():
                shutil.copy(path, results / folder / path.name)
    assert main(["export", str(results), "--to", "mlflow"]) == 0
    out = capsys.readouterr().out
    assert "2 cell run(s) created, 3 skipped" in out and "failed cells: 1 run(s) created" in out
    runs = _runs(mlflow_module, uri)
    cells = runs[runs["tags.cpusweep.role"] == "cell"]
    assert len(runs[runs["tags.cpusweep.role"] == "job"]) == 1
    assert len(cells) == 6 and cells["tags.cpusweep.cell_key"].is_unique

    # The failed cell is retried and finishes: its finished run joins, the failed one stays,
    # marked superseded.
    assert _submit(stages.job2, results, "--retry-failed") == 0
    assert main(["export", str(results), "--to", "mlflow"]) == 0
    out = capsys.readouterr().out
    assert "1 cell run(s) created, 5 skipped" in out and "1 marked superseded" in out
    runs = _runs(mlflow_module, uri)
    cells = runs[runs["tags.cpusweep.role"] == "cell"]
    finished = cells[cells["status"] == "FINISHED"]
    assert len(finished) == 6 and finished["tags.cpusweep.cell_key"].is_unique
    assert set(finished["tags.cpusweep.cell_key"]) == set(_rows(results))
    failed = cells[cells["status"] == "FAILED"]
    assert len(failed) == 1 and failed.iloc[0]["tags.cpusweep.superseded"] == "true"
    assert runs[runs["tags.cpusweep.role"] == "job"].iloc[0]["status"] == "FINISHED"

    assert main(["export", str(results), "--to", "mlflow"]) == 0
    assert "0 cell run(s) created, 6 skipped" in capsys.readouterr().out
    assert len(_runs(mlflow_module, uri)) == 8  # parent, 6 finished, 1 failed: nothing more


def test_an_export_cut_short_is_completed_by_the_next_one(
    stages: Stages, tmp_path: Path, mlflow_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    results = _copy(stages.depth2, tmp_path)
    real_log_dict = MlflowClient.log_dict
    calls = []

    def dying_log_dict(self, run_id, dictionary, artifact_file):  # type: ignore[no-untyped-def]
        calls.append(run_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third cell
        return real_log_dict(self, run_id, dictionary, artifact_file)

    monkeypatch.setattr(MlflowClient, "log_dict", dying_log_dict)
    assert main(["export", str(results), "--to", "mlflow"]) == 130
    monkeypatch.setattr(MlflowClient, "log_dict", real_log_dict)
    runs = _runs(mlflow_module, _uri(results))
    assert sorted(runs[runs["tags.cpusweep.role"] == "cell"]["status"]) == [
        "FINISHED",
        "FINISHED",
        "RUNNING",
    ]
    assert main(["export", str(results), "--to", "mlflow"]) == 0
    runs = _runs(mlflow_module, _uri(results))
    cells = runs[runs["tags.cpusweep.role"] == "cell"]
    assert len(cells) == 7  # the incomplete run is still in the store, deleted
    client = mlflow_module.MlflowClient(tracking_uri=_uri(results))
    live = [r for r in cells["run_id"] if client.get_run(r).info.lifecycle_stage == "active"]
    assert len(live) == 6
    statuses = sorted(client.get_run(r).info.status for r in live)
    assert statuses == ["FAILED"] + ["FINISHED"] * 5
    keys = [client.get_run(r).data.tags["cpusweep.cell_key"] for r in live]
    assert len(set(keys)) == 6


def test_any_tracking_uri_and_experiment_work_the_same(
    stages: Stages, tmp_path: Path, mlflow_module: Any
) -> None:
    results = _copy(stages.depth2, tmp_path)
    store = tmp_path / "elsewhere" / "tracking.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    args = ["export", str(results), "--to", "mlflow", "--tracking-uri", uri]
    assert main([*args, "--experiment", "lab-shared"]) == 0
    runs = _runs(mlflow_module, uri, "lab-shared")
    assert len(runs) == 7
    assert all(u.startswith(str(store.parent / "artifacts")) for u in runs["artifact_uri"])
    assert not (results / "mlflow").exists()  # nothing in the default store


def test_a_folder_that_is_not_results_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    for target in ("mlflow", "tensorboard"):
        assert main(["export", str(tmp_path / "empty"), "--to", target]) == 2
        err = capsys.readouterr().err
        assert "empty is not a results folder" in err and "job.toml" in err
    assert not (tmp_path / "empty" / "mlflow").exists()


def test_fabricated_rows_export_with_their_own_parameters_and_a_diverged_loss(
    tmp_path: Path, mlflow_module: Any
) -> None:
    """Rows without cell_json (parameters from the columns; another method's hyperparameters
    left out) and a diverged cell whose loss is NaN: kept as NaN, flagged."""
    job = textwrap.dedent(
        """
        name = "fabricated"
        [grid]
        method = ["standard", "mc_approx"]
        [params]
        dataset = "mnist"
        depth = 2
        epochs = 3
        """
    )
    from runner.results.store import ResultsStore

    made = fabricate(tmp_path / "results", job)
    for row in made.rows.values():  # the columns' real types, and a loss gone NaN
        standard = row["method"] == "standard"
        if standard:
            row["history"][2]["train_loss"] = math.nan
            row["final_train_loss"] = math.nan
        row["diverged"] = standard
        row["learning_flag"] = "diverged" if standard else ""
        ResultsStore(made.root).write_result(row)
    from runner.export.mlflow_runs import export_mlflow

    summary = export_mlflow(made.root, attach_report=False)
    assert summary.created == 2
    runs = _runs(mlflow_module, summary.location, "fabricated")
    client = mlflow_module.MlflowClient(tracking_uri=summary.location)
    standard = runs[runs["params.method"] == "standard"].iloc[0]
    assert standard["tags.cpusweep.learning_flag"] == "diverged"
    losses = _history(client, standard["run_id"], "train_loss")
    assert [s for s, _ in losses] == [1, 2, 3] and math.isnan(losses[2][1])
    assert isinstance(standard["params.depth"], str) and standard["params.depth"] == "2"
    assert not isinstance(standard["params.mc_approx.k"], str)  # not a standard cell's param
    mc = runs[runs["params.method"] == "mc_approx"].iloc[0]
    assert mc["params.mc_approx.k"] == "10"
    assert _history(client, mc["run_id"], "stat.sampled_pairs.grad_input.layer1") == [
        (1, 11.0),
        (2, 12.0),
        (3, 13.0),
    ]


def test_the_cli_reaches_no_network_even_outside_pytest(stages: Stages, tmp_path: Path) -> None:
    """MLflow turns its usage telemetry on unless told otherwise (or it sees pytest or CI):
    run the export as a user would, with every non-loopback lookup and connection recorded."""
    results = _copy(stages.depth2, tmp_path)
    attempts = tmp_path / "attempts.txt"
    script = textwrap.dedent(
        f"""
        import ipaddress, socket, sys
        log = open({str(attempts)!r}, "a")
        def loopback(host):
            try:
                return host in (None, "localhost") or ipaddress.ip_address(
                    str(host).split("%")[0]).is_loopback
            except ValueError:
                return False
        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
        def getaddrinfo(host, *a, **k):
            if not loopback(host):
                log.write(f"lookup {{host}}\\n"); log.flush()
                raise OSError("blocked by the test")
            return real_getaddrinfo(host, *a, **k)
        def connect(self, address):
            if isinstance(address, tuple) and not loopback(address[0]):
                log.write(f"connect {{address}}\\n"); log.flush()
                raise OSError("blocked by the test")
            return real_connect(self, address)
        socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
        from runner.cli.main import main
        code = main(["export", {str(results)!r}, "--to", "mlflow"])
        code = code or main(["export", {str(results)!r}, "--to", "tensorboard"])
        sys.exit(code)
        """
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTEST_CURRENT_TEST", "CI", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
        and not k.startswith("PYTEST")
    }
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "5 cell run(s) created" in done.stdout
    assert not attempts.exists() or attempts.read_text() == ""


# --- TensorBoard --------------------------------------------------------------------------------


def _events(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(events: Any, tag: str) -> list[tuple[int, float]]:
    from tensorboard.util import tensor_util

    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]


def _float32(value: float) -> float:
    import numpy as np

    return float(np.float32(value))


def test_tensorboard_event_files_hold_each_cells_scalars_and_an_hparams_table(
    stages: Stages, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    results = _copy(stages.depth2, tmp_path)
    out = tmp_path / "tb"
    assert main(["export", str(results), "--to", "tensorboard", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 cell run(s) created, 0 skipped" in printed and "1 failed cell(s)" in printed

    rows = _rows(results)
    runs = {p.parent.name.rsplit("_", 1)[-1]: p.parent for p in out.rglob("events.out.tfevents.*")}
    assert set(runs) - {"tb"} == set(rows)  # one folder per finished cell, named by its key
    for key, row in rows.items():
        events = _events(runs[key])
        history = row["history"]
        for name in ("val_accuracy", "train_loss", "backward_seconds"):
            assert _scalars(events, f"epoch/{name}") == [
                (h["epoch"], _float32(h[name])) for h in history
            ], name
        for stat in {s["name"] for h in history for s in h["stats"]}:
            assert _scalars(events, f"stat/{stat}") == [
                (h["epoch"], _float32(s["value"]))
                for h in history
                for s in h["stats"]
                if s["name"] == stat
            ], stat
        assert _scalars(events, "final/test_accuracy") == [(2, _float32(row["test_accuracy"]))]
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert session.hparams["method"].string_value == row["method"]
        assert session.hparams["depth"].number_value == row["depth"]
        assert session.hparams["lr"].number_value == row["lr"]

    top = _events(out)
    content = top.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    infos = {h.name: h for h in experiment.hparam_infos}
    assert sorted(v.string_value for v in infos["method"].domain_discrete.values) == [
        "alsh_approx",
        "mc_approx",
        "standard",
    ]
    assert sorted(v.number_value for v in infos["depth"].domain_discrete.values) == [1, 2]
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"final/test_accuracy", "final/seconds_per_epoch", "epoch/val_accuracy"} <= metrics

    # Again, after the failed cell is retried: only it is added; one experiment summary.
    before = sorted(p for p in out.rglob("events.out.tfevents.*") if p.parent != out)
    assert _submit(stages.job2, results, "--retry-failed") == 0
    capsys.readouterr()
    assert main(["export", str(results), "--to", "tensorboard", "--out", str(out)]) == 0
    assert "1 cell run(s) created, 5 skipped" in capsys.readouterr().out
    after = sorted(p for p in out.rglob("events.out.tfevents.*") if p.parent != out)
    assert len(after) == 6 and set(before) <= set(after)
    assert len(list(out.glob("events.out.tfevents.*"))) == 1
    assert not list(out.rglob(".*.tmp"))
