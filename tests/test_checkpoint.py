"""Mid-cell checkpoints, in one process: a cell stopped after epoch 2 continues from its
checkpoint and ends bit-identical to an uninterrupted run; foreign, corrupt and malicious
checkpoints are refused; the driver deletes them at the right moments."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from methods.base import MethodModel, TrainSettings, init_linear_
from methods.registry import METHODS
from runner.cli.main import main
from runner.datasets.loading import load_splits
from runner.job.cells import Cell
from runner.job.spec import SHARED_PARAMS, parse_spec
from runner.results.store import ResultsStore
from runner.run.cellrun import run_cell
from runner.run.checkpoint import (
    _STATE_FIELDS,
    TOKEN_FILE,
    CheckpointPolicy,
    checkpoint_path,
    prepare_checkpoints,
)
from runner.run.executors import Executor, Result
from runner.run.sweep import make_plan, run_sweep
from runner.run.trainer import LoopState, train
from tests.conftest import write_job
from tests.faults import stop_after_checkpoint

TIMING_KEYS = {
    "train_seconds",
    "cumulative_train_seconds",
    "data_seconds",
    "forward_seconds",
    "backward_seconds",
    "step_seconds",
    "upkeep_seconds",
    "eval_seconds",
}


class Crash(BaseException):
    """Stands for the process dying: run_cell does not catch it, nothing is cleaned up."""


def digits_cell(**values: object) -> Cell:
    base = {p.name: p.default for p in SHARED_PARAMS}
    base.update(
        method="standard",
        dataset="digits",
        width=32,
        depth=2,
        epochs=4,
        batch_size=20,
        lr=0.05,
        train_limit=400,
    )
    base.update(values)
    return Cell(values=base, torch_threads=1)


def without_timings(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history with every measured time left out (times differ from run to run), method
    instrumentation included (e.g. `rebuild_seconds`)."""
    return [
        {
            **{k: v for k, v in h.items() if k not in TIMING_KEYS | {"stats"}},
            "stats": [s for s in h["stats"] if not s["name"].endswith("_seconds")],
        }
        for h in history
    ]


@pytest.fixture
def policy(tmp_path: Path) -> CheckpointPolicy:
    made = prepare_checkpoints(tmp_path / "results", every=1)
    assert made is not None
    return made


@pytest.mark.parametrize(
    "settings",
    [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adam", lr=1e-3)],
    ids=["sgd-momentum", "adam"],
)
def test_cell_resumed_after_epoch_2_is_bit_identical(
    settings: dict[str, Any],
    policy: CheckpointPolicy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cell = digits_cell(**settings)
    reference = run_cell(cell.to_payload())["row"]

    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, epoch=2, stop=Crash)
        with pytest.raises(Crash):
            run_cell(cell.to_payload(), checkpoints=policy)
    path = checkpoint_path(tmp_path / "results", cell.key)
    assert path.exists()
    # Whatever the dead run left in the process's global generators must not matter.
    torch.manual_seed(12345), np.random.seed(6789), random.seed(42)

    result = run_cell(cell.to_payload(), checkpoints=policy)
    assert result["status"] == "ok", result.get("failure")
    row = result["row"]
    assert row["resumed_from_epoch"] == 2 and row["resumes"] == 1
    assert any("resumed from its checkpoint after epoch 2" in w for w in result["warnings"])
    assert row["weights_sha256"] == reference["weights_sha256"]
    assert row["test_accuracy"] == reference["test_accuracy"]
    assert row["test_loss"] == reference["test_loss"]
    assert row["confusion_matrix"] == reference["confusion_matrix"]
    assert row["steps"] == reference["steps"]
    assert without_timings(row["history"]) == without_timings(reference["history"])
    # Honest timing: the epochs computed before the crash keep their own times.
    assert row["train_seconds"] == pytest.approx(sum(h["train_seconds"] for h in row["history"]))
    assert row["history"][-1]["cumulative_train_seconds"] == pytest.approx(row["train_seconds"])
    assert reference["resumed_from_epoch"] == 0 and reference["resumes"] == 0
    assert reference["checkpoint_seconds"] == 0.0 and row["checkpoint_seconds"] > 0
    # The cell leaves its checkpoint for the driver to delete once the row is stored.
    assert path.exists()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_resumes_bit_identical(
    method: str, policy: CheckpointPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract of methods/base.py, checked for every registered method: whatever a
    method needs to continue (its sampling generator, counters, tables) is in its state_dict,
    and that loads with weights_only."""
    if importlib.util.find_spec(METHODS[method].module) is None:
        pytest.skip(f"{METHODS[method].module} is not written yet")
    spec = parse_spec(
        f'name = "m"\n[params]\nmethod = "{method}"\ndataset = "digits"\nwidth = 64\n'
        "depth = 2\nepochs = 4\nbatch_size = 10\ntrain_limit = 300\nlr = 0.01\n"
    )
    from runner.job.grid import expand

    [cell] = expand(spec).cells
    reference = run_cell(cell.to_payload())
    assert reference["status"] == "ok", reference.get("failure")
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, epoch=2, stop=Crash)
        with pytest.raises(Crash):
            run_cell(cell.to_payload(), checkpoints=policy)
    result = run_cell(cell.to_payload(), checkpoints=policy)
    assert result["status"] == "ok", result.get("failure")
    row, ref = result["row"], reference["row"]
    assert row["resumed_from_epoch"] == 2, result["warnings"]
    assert row["weights_sha256"] == ref["weights_sha256"]
    assert without_timings(row["history"]) == without_timings(ref["history"])
    assert row["confusion_matrix"] == ref["confusion_matrix"]


class NoisyMLP(MethodModel):
    """A test method whose training uses every kind of randomness and state a real sampling
    method might: its sampling generator (masks), the global torch, numpy and random
    generators, and the step / example counters passed to upkeep."""

    def __init__(self, generator: torch.Generator, sampling_generator: torch.Generator):
        super().__init__(sampling_generator)
        self.hidden = nn.Linear(64, 24)
        self.out = nn.Linear(24, 10)
        init_linear_(self.hidden, generator)
        init_linear_(self.out, generator)
        self.register_buffer("upkeep_mark", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.hidden(x))
        if self.training:
            mask = torch.bernoulli(torch.full_like(h, 0.8), generator=self.sampling_generator)
            jitter = 1 + 0.01 * float(np.random.rand()) + 0.01 * random.random()
            h = h * mask * jitter + 0.01 * torch.randn_like(h)
        return torch.log_softmax(self.out(h), dim=1)

    def upkeep(self, step: int, examples_seen: int) -> None:
        if step % 7 == 0:  # a schedule, like a hash-table rebuild
            with torch.no_grad():
                self.hidden.bias.add_(1e-4 * (examples_seen % 13))
                self.upkeep_mark.fill_(examples_seen)


def test_trainer_restores_every_generator_and_counter(tmp_path: Path) -> None:
    splits = load_splits("digits", tmp_path, split_seed=0, download=False)
    settings = TrainSettings(lr=0.05, optimizer="sgd", momentum=0.5, batch_size=16)

    def fresh() -> tuple[NoisyMLP, torch.Generator]:
        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        model = NoisyMLP(torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
        return model, torch.Generator().manual_seed(3)

    model, shuffle = fresh()
    reference = train(model, splits, settings, epochs=4, shuffle_generator=shuffle)
    reference_state = {k: v.clone() for k, v in model.state_dict().items() if "extra" not in k}
    reference_sampling = model.get_extra_state()["sampling_rng"]

    saved: list[bytes] = []

    def keep(state: LoopState) -> None:
        buffer = io.BytesIO()
        torch.save(dataclasses.asdict(state), buffer)
        saved.append(buffer.getvalue())
        if state.epoch == 2:
            raise Crash

    model, shuffle = fresh()
    with pytest.raises(Crash):
        train(model, splits, settings, 4, shuffle, on_checkpoint=keep, checkpoint_every=1)
    assert len(saved) == 2

    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # a different process, say
    model, shuffle = fresh()
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    state = torch.load(io.BytesIO(saved[-1]), weights_only=True)
    resumed = train(model, splits, settings, 4, shuffle, resume_state=LoopState(**state))
    for name, tensor in model.state_dict().items():
        if "extra" not in name:
            assert torch.equal(tensor, reference_state[name]), name
    assert torch.equal(model.get_extra_state()["sampling_rng"], reference_sampling)
    assert without_timings(resumed.history) == without_timings(reference.history)
    assert resumed.steps == reference.steps
    assert resumed.test is not None and reference.test is not None
    assert resumed.test.confusion == reference.test.confusion


def test_checkpoint_fields_match_the_loop_state() -> None:
    assert tuple(f.name for f in dataclasses.fields(LoopState)) == _STATE_FIELDS


def test_checkpoint_of_another_cell_is_ignored(
    policy: CheckpointPolicy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, other = digits_cell(seed=0), digits_cell(seed=1)
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, epoch=2, stop=Crash)
        with pytest.raises(Crash):
            run_cell(other.to_payload(), checkpoints=policy)
    results = tmp_path / "results"
    shutil.copy(checkpoint_path(results, other.key), checkpoint_path(results, mine.key))

    result = run_cell(mine.to_payload(), checkpoints=policy)
    assert result["status"] == "ok"
    assert result["row"]["resumed_from_epoch"] == 0
    [warning] = result["warnings"]
    assert "belongs to another cell or code version" in warning and "cell_key" in warning
    assert result["row"]["weights_sha256"] == run_cell(mine.to_payload())["row"]["weights_sha256"]


def test_unreadable_checkpoint_is_ignored(policy: CheckpointPolicy, tmp_path: Path) -> None:
    cell = digits_cell(epochs=2)
    path = checkpoint_path(tmp_path / "results", cell.key)
    path.write_bytes(b"PK\x03\x04 not really a zip file")
    result = run_cell(cell.to_payload(), checkpoints=policy)
    assert result["status"] == "ok" and result["row"]["resumed_from_epoch"] == 0
    [warning] = result["warnings"]
    assert "ignored the unreadable checkpoint" in warning and str(path) in warning


class _Payload:
    """Unpickling this would create a file: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_code_in_it_is_never_unpickled(
    policy: CheckpointPolicy, tmp_path: Path
) -> None:
    cell = digits_cell(epochs=2)
    marker = tmp_path / "code-ran"
    torch.save({"identity": _Payload(marker)}, checkpoint_path(tmp_path / "results", cell.key))
    result = run_cell(cell.to_payload(), checkpoints=policy)
    assert not marker.exists()
    assert result["status"] == "ok" and result["row"]["resumed_from_epoch"] == 0
    assert "ignored the unreadable checkpoint" in result["warnings"][0]


def test_worker_without_the_shared_results_folder_fails_the_cell_clearly(
    policy: CheckpointPolicy, tmp_path: Path
) -> None:
    cell = digits_cell(epochs=2)
    elsewhere = CheckpointPolicy(str(tmp_path / "not-mounted" / "checkpoints"), 1, policy.token)
    result = run_cell(cell.to_payload(), checkpoints=elsewhere)
    assert result["status"] == "failed"
    failure = result["failure"]
    assert failure["error_class"] == "storage"
    assert "does not exist here" in failure["message"]
    assert "same path" in failure["message"] and "checkpoint_every = 0" in failure["message"]

    # Same path, but a folder of its own (a volume that is not shared): another token.
    (tmp_path / "results" / "checkpoints" / TOKEN_FILE).write_text("from another submit")
    failure = run_cell(cell.to_payload(), checkpoints=policy)["failure"]
    assert failure["error_class"] == "storage" and "another submit" in failure["message"]


def test_checkpoint_every_is_a_resource_not_part_of_the_key() -> None:
    base = 'name = "j"\n[params]\nmethod = "standard"\ndataset = "digits"\n'
    assert parse_spec(base).resources.checkpoint_every == 1
    spec = parse_spec(base + "[resources]\ncheckpoint_every = 0\n")
    assert spec.resources.checkpoint_every == 0
    with pytest.raises(Exception, match="checkpoint_every"):
        parse_spec(base + "[resources]\ncheckpoint_every = -1\n")
    from runner.job.grid import expand

    assert [c.key for c in expand(spec).cells] == [c.key for c in expand(parse_spec(base)).cells]


def test_sweep_leaves_no_checkpoint_behind(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "j.toml",
        """
        name = "ckpt"
        [grid]
        seed = [0, 1]
        [params]
        method = "standard"
        dataset = "digits"
        width = 16
        depth = 1
        epochs = 3
        batch_size = 20
        train_limit = 200
        [resources]
        checkpoint_every = 1
    """,
    )
    results = tmp_path / "results"
    assert main(["submit", str(job), "--executor", "serial", "--results", str(results)]) == 0
    assert len(list((results / "cells").glob("*.parquet"))) == 2
    assert (results / "checkpoints" / TOKEN_FILE).exists()
    assert not list((results / "checkpoints").glob("*.pt"))
    assert not list((results / "checkpoints").glob(".*.cpusweep-tmp"))


class CannedExecutor(Executor):
    """Hands back one prepared result per cell, in order: tests the driver's bookkeeping."""

    def __init__(self, results: list[Result]):
        self.results = results

    def submit(self, payload: dict[str, Any]) -> Any:
        return payload["key"]

    def wait(self, handles: Any, timeout: float) -> list[tuple[Any, Result]]:
        return [(handles[0], self.results.pop(0))]

    def describe(self) -> str:
        return "canned"


def test_driver_deletes_checkpoints_of_finished_and_application_failed_cells_only(
    tmp_path: Path,
) -> None:
    spec = parse_spec(
        'name = "j"\n[grid]\nseed = [0, 1, 2, 3]\n'
        '[params]\nmethod = "standard"\ndataset = "digits"\nepochs = 2\nwidth = 16\n'
        "depth = 1\nbatch_size = 20\ntrain_limit = 100\n"
    )
    from runner.job.grid import expand

    cells = expand(spec).cells
    store = ResultsStore(tmp_path / "results")
    store.prepare()
    prepare_checkpoints(store.root, every=1)
    for cell in cells:
        checkpoint_path(store.root, cell.key).write_bytes(b"state")
    ok = run_cell(cells[0].to_payload())
    assert ok["status"] == "ok"

    def failed(cell: Cell, error_class: str) -> Result:
        return {
            "status": "failed",
            "failure": {"cell_key": cell.key, "error_class": error_class, "message": "x"},
            "warnings": [],
        }

    executor = CannedExecutor(
        [
            ok,
            failed(cells[1], "application"),
            failed(cells[2], "worker_crash"),
            failed(cells[3], "cancelled"),
        ]
    )
    plan = make_plan(cells, store.scan(), retry_failed=False)
    run_sweep(plan, store, executor, max_in_flight=1)
    left = {p.stem for p in (store.root / "checkpoints").glob("*.pt")}
    assert left == {cells[2].key, cells[3].key}  # what a resume will continue from


def test_ctrl_c_mid_cell_then_the_same_command_continues_the_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = write_job(
        tmp_path / "j.toml",
        """
        name = "ctrl-c"
        [params]
        method = "standard"
        dataset = "digits"
        width = 16
        depth = 1
        epochs = 4
        batch_size = 20
        train_limit = 200
    """,
    )
    results = tmp_path / "results"
    args = ["submit", str(job), "--executor", "serial", "--results", str(results)]
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, epoch=2, stop=KeyboardInterrupt)
        assert main(args) == 130
    assert len(list((results / "checkpoints").glob("*.pt"))) == 1
    assert not list((results / "cells").glob("*.parquet"))

    assert main(args) == 0
    [row] = pd.read_parquet(results / "cells").to_dict("records")
    assert row["resumed_from_epoch"] == 2 and row["epochs_done"] == 4
    assert not list((results / "checkpoints").glob("*.pt"))
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "resumed from its checkpoint after epoch 2" in warning.getMessage()
