"""The runner's invariants, each pinned by a test of its own (issue 15).

A mutation check (one plausible bug planted at a time) found invariants that no test caught, or
that only a test about something else caught by accident. Each test here states one of them
and fails when the bug next to it is planted (tests/mutants/run_runner_mutants.py plants them):

1. a float parameter enters the cell key exactly (lr 1e-4 and 2e-4 are two cells);
2. an `[[override]]`'s `where` is matched against the cell before any override;
3. `[[exclude]]`s are matched against the final cell, after every override;
4. a checkpoint written by another torch version or checkpoint format is refused;
5. every cell runs with its own torch thread count, also in a reused process;
6. no more than `max_in_flight` cells (default: twice the slots) are handed out at once;
7. a results file is written atomically: the old content or the new, never a mix;
8. a failed cell runs again only with `--retry-failed` (`retry_failed=True`), and then it does.

Fast: pure logic, the serial executor, or (5) three tiny real cells in this process. Cells
are "run" by a stand-in for `run_cell` where what they compute does not matter.
"""

from __future__ import annotations

import errno
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runner
import runner.run.cellrun
import runner.run.checkpoint
from runner.errors import ResultsError
from runner.job.cells import Cell
from runner.job.grid import expand
from runner.job.spec import SHARED_PARAMS, parse_spec
from runner.results.failures import failure_record
from runner.results.store import TEMP_SUFFIX, Ledger, ResultsStore, atomic_write
from runner.run.checkpoint import CellCheckpoints, prepare_checkpoints
from runner.run.executors import Executor, Result, SerialExecutor
from runner.run.sweep import make_plan, run_sweep
from tests.test_store import fake_row


def job(text: str) -> list[Cell]:
    return expand(parse_spec(textwrap.dedent(text), "job.toml")).cells


def cell(torch_threads: int = 1, **values: Any) -> Cell:
    base = {p.name: p.default for p in SHARED_PARAMS}
    base.update(method="standard", dataset="digits")
    base.update(values)
    return Cell(values=base, torch_threads=torch_threads)


# --- (1) float parameters enter the key exactly ---------------------------------------------


def test_float_parameters_enter_the_cell_key_exactly() -> None:
    cells = job("""
        name = "floats"
        [grid]
        lr = [1e-4, 2e-4, 1.5e-4, 0.00010000000000001]
        "dropout.keep" = [0.05, 0.051]
        [params]
        method = "dropout"
        dataset = "digits"
    """)
    assert len(cells) == 8  # none merged as "identical"
    assert len({c.key for c in cells}) == 8
    assert sorted({c.values["lr"] for c in cells}) == [1e-4, 0.00010000000000001, 1.5e-4, 2e-4]
    assert {c.values["dropout.keep"] for c in cells} == {0.05, 0.051}
    # The key a worker recomputes from the payload is the driver's: no rounding in transit.
    for c in cells:
        assert Cell.from_payload(c.to_payload()).key == c.key


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    st.floats(min_value=1e-9, max_value=10.0, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-9, max_value=10.0, allow_nan=False, allow_infinity=False),
)
def test_two_different_learning_rates_are_two_keys(a: float, b: float) -> None:
    if a == b:
        assert cell(lr=a).key == cell(lr=b).key
    else:
        assert cell(lr=a).key != cell(lr=b).key


# --- (2) and (3): the order of overrides and excludes ----------------------------------------


def test_override_where_is_matched_against_the_cell_before_any_override() -> None:
    """docs/job-files.md: overrides are matched against a cell before any override and
    applied in file order (later ones win)."""
    spec = parse_spec(
        textwrap.dedent("""
        name = "overrides"
        [grid]
        depth = [1, 2]
        [params]
        method = "standard"
        dataset = "digits"
        [[override]]
        where = { depth = 1 }
        set = { lr = 0.01 }
        [[override]]                    # lr 0.01 only after override[0]: matches no cell
        where = { lr = 0.01 }
        set = { epochs = 7 }
        [[override]]                    # lr 1e-3 before any override: every cell
        where = { lr = 1e-3 }
        set = { momentum = 0.5 }
        [[override]]                    # later wins
        where = { depth = 1 }
        set = { lr = 0.02 }
    """),
        "job.toml",
    )
    expansion = expand(spec)
    got = {c.values["depth"]: c.values for c in expansion.cells}
    assert (got[1]["lr"], got[1]["epochs"], got[1]["momentum"]) == (0.02, 50, 0.5)
    assert (got[2]["lr"], got[2]["epochs"], got[2]["momentum"]) == (1e-3, 50, 0.5)
    assert any(w.startswith("override[1] matches no cell") for w in expansion.warnings)


def test_excludes_are_matched_against_the_final_cell() -> None:
    """docs/job-files.md: excludes are matched against the final cell (after overrides)."""
    cells = job("""
        name = "excludes"
        [grid]
        depth = [1, 2]
        seed = [0, 1]
        [params]
        method = "standard"
        dataset = "digits"
        [[override]]
        where = { depth = 1 }
        set = { lr = 0.01 }
        [[exclude]]                     # the overridden value: depth 1, seed 1
        lr = 0.01
        seed = 1
        [[exclude]]                     # the value before the override: depth 2, seed 0 only
        lr = 1e-3
        seed = 0
    """)
    assert sorted((c.values["depth"], c.values["seed"]) for c in cells) == [(1, 0), (2, 1)]
    assert {c.values["depth"]: c.values["lr"] for c in cells} == {1: 0.01, 2: 1e-3}


# --- (4) a checkpoint of another torch version or format is refused --------------------------


def _loop_state(epoch: int = 1) -> Any:
    import torch

    from runner.run.trainer import LoopState

    return LoopState(
        epoch=epoch,
        step=3,
        examples_seen=60,
        history=[{"epoch": e + 1} for e in range(epoch)],
        model={"weight": torch.arange(4.0)},
        optimizer={"state": {}, "param_groups": []},
        shuffle_rng=torch.Generator().get_state(),
        global_rng={},
    )


@pytest.mark.parametrize("written_by", ["this-code", "another-torch", "another-format"])
def test_checkpoint_of_another_torch_version_or_format_is_refused(
    written_by: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    policy = prepare_checkpoints(tmp_path / "results", every=1)
    assert policy is not None
    the_cell = cell(epochs=3)
    with monkeypatch.context() as patch:
        if written_by == "another-torch":
            patch.setattr(torch, "__version__", "1.13.1+other")
        if written_by == "another-format":
            patch.setattr(
                runner.run.checkpoint, "FORMAT_VERSION", runner.run.checkpoint.FORMAT_VERSION + 1
            )
        CellCheckpoints(policy, the_cell, "writer", []).save(_loop_state())
    warnings: list[str] = []
    resumed = CellCheckpoints(policy, the_cell, "reader", warnings).load()
    if written_by == "this-code":  # the control: the same file from this code is resumed
        assert resumed is not None and resumed.state.epoch == 1, warnings
        return
    assert resumed is None
    [warning] = warnings
    differs = "torch_version" if written_by == "another-torch" else "format"
    assert "ignored the checkpoint" in warning and f"differs in: {differs})" in warning


# --- (5) every cell gets its own thread count, also in a reused process -----------------------


def test_every_cell_in_a_reused_process_runs_with_its_own_thread_count() -> None:
    """One process runs cells asking for 1, 2, then 1 torch threads (as a reused Ray worker
    does): each runs with, and records, the count it asked for."""
    import torch

    before = torch.get_num_threads()
    tiny = dict(width=8, depth=1, epochs=1, batch_size=50, lr=0.05, train_limit=100)
    try:
        observed = []
        for threads in (1, 2, 1):
            result = runner.run.cellrun.run_cell(cell(threads, **tiny).to_payload())
            assert result["status"] == "ok", result.get("failure")
            row = result["row"]
            observed.append((row["requested_torch_threads"], row["torch_threads"]))
            assert row["omp_num_threads"] == str(threads)
        assert observed == [(1, 1), (2, 2), (1, 1)]
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_is_part_of_the_key() -> None:
    """A cell finished on 1 thread does not count as done for a job that asks for 2."""
    one, two = cell(1), cell(2)
    assert one.values == two.values and one.key != two.key
    assert Cell.from_payload(two.to_payload()).torch_threads == 2


# --- a stand-in for run_cell, for sweeps whose cells' results do not matter ------------------


class FakeCells:
    """Replaces `run_cell`: returns a valid row at once (or a failure for the cells in
    `failing`), and remembers which cells it was asked to run."""

    def __init__(self, failing: Callable[[Cell], bool] = lambda c: False):
        self.failing = failing
        self.ran: list[str] = []

    def __call__(self, payload: dict[str, Any], *args: Any, **kwargs: Any) -> Result:
        c = Cell.from_payload(payload)
        self.ran.append(c.key)
        if self.failing(c):
            exc = RuntimeError(f"planted failure of {c.label()}")
            return {"status": "failed", "failure": failure_record(c, "application", exc)}
        row = fake_row(c.key, **c.values, learning_flag="", requested_torch_threads=1)
        return {"status": "ok", "row": row, "warnings": []}


def digits_job(seeds: int, max_in_flight: int = 0) -> dict[str, Any]:
    return {
        "name": "invariants",
        "grid": {"seed": list(range(seeds))},
        "params": {"method": "standard", "dataset": "digits"},
        "resources": {"max_in_flight": max_in_flight, "checkpoint_every": 0},
    }


# --- (6) the in-flight bound ------------------------------------------------------------------


class CountingExecutor(Executor):
    """Finishes the oldest handed-out cell at each wait; counts how many are out at once."""

    def __init__(self, slots: int, cells: FakeCells):
        self.slots = slots
        self.cells = cells
        self.out: dict[int, dict[str, Any]] = {}
        self.most_out = 0
        self.order: list[str] = []
        self._next = 0

    def submit(self, payload: dict[str, Any]) -> int:
        self._next += 1
        self.out[self._next] = payload
        self.order.append(str(payload["key"]))
        self.most_out = max(self.most_out, len(self.out))
        return self._next

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, Result]]:
        oldest = min(handles)
        return [(oldest, self.cells(self.out.pop(oldest)))]

    def describe(self) -> str:
        return "counting executor"


@pytest.mark.parametrize(("max_in_flight", "slots", "bound"), [(3, 2, 3), (0, 2, 4), (1, 4, 1)])
def test_no_more_cells_are_handed_out_at_once_than_the_in_flight_bound(
    max_in_flight: int, slots: int, bound: int, tmp_path: Path
) -> None:
    cells = job("""
        name = "bound"
        [grid]
        seed = [0, 1, 2, 3, 4, 5, 6, 7, 8]
        [params]
        method = "standard"
        dataset = "digits"
    """)
    store = ResultsStore(tmp_path / "results")
    store.prepare()
    executor = CountingExecutor(slots, FakeCells())
    plan = make_plan(cells, store.scan(), retry_failed=False)
    summary = run_sweep(plan, store, executor, max_in_flight=max_in_flight)
    assert executor.most_out == bound
    assert executor.order == [c.key for c in cells]  # each once, in the job's order
    assert sorted(summary.finished) == sorted(c.key for c in cells) == sorted(store.scan().done)


def test_submit_hands_out_at_most_the_jobs_max_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[resources] max_in_flight reaches the sweep loop (here 3, above the serial executor's
    default of 2 x 1 slot)."""
    monkeypatch.setattr(runner.run.cellrun, "run_cell", FakeCells())
    most = {"out": 0}
    real_submit = SerialExecutor.submit

    def counting_submit(self: SerialExecutor, payload: dict[str, Any]) -> int:
        handle = real_submit(self, payload)
        most["out"] = max(most["out"], len(self._pending))
        return handle

    monkeypatch.setattr(SerialExecutor, "submit", counting_submit)
    result = runner.submit(digits_job(7, max_in_flight=3), tmp_path / "r", executor="serial")
    assert len(result.finished) == 7 and result.exit_code == 0
    assert most["out"] == 3


# --- (7) atomic writes -------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


@pytest.mark.parametrize("stop", [OSError(errno.ENOSPC, "No space left"), KeyboardInterrupt()])
def test_a_write_that_stops_half_way_leaves_the_old_file_whole(
    stop: BaseException, tmp_path: Path
) -> None:
    path = tmp_path / "result.parquet"
    old = b"the old content " * 1000
    path.write_bytes(old)
    seen_meanwhile = []

    def half_then_stop(f: BinaryIO) -> None:
        f.write(b"the new content " * 500)
        f.flush()
        seen_meanwhile.append(path.read_bytes())
        raise stop

    with pytest.raises(type(stop)):
        atomic_write(path, half_then_stop)
    assert seen_meanwhile == [old]  # the file's name never pointed at half a file
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []

    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and _leftovers(tmp_path) == []


def test_the_new_content_is_on_disk_before_it_takes_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"replace {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "x.json", lambda f: f.write(b"{}"))
    [temp] = {e.split()[1] for e in events if e.startswith("replace")}
    assert events[:2] == [f"fsync {temp}", f"replace {temp} -> x.json"]


def test_a_failed_store_write_keeps_the_stored_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the store: a result rewritten while the disk fails (here at the flush to disk,
    after every byte was written) keeps the old, whole row, and leaves no temporary file."""
    import os

    store = ResultsStore(tmp_path / "results")
    store.prepare()
    path = store.write_result(fake_row("k", test_accuracy=0.5))
    old = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(ResultsError, match="Input/output error"):
        store.write_result(fake_row("k", test_accuracy=0.75))
    monkeypatch.undo()
    assert path.read_bytes() == old and _leftovers(store.cells_dir) == []
    assert ResultsStore(store.root).scan().done == {"k"}


# --- (8) --retry-failed --------------------------------------------------------------------


def test_the_plan_reruns_failed_cells_only_when_asked() -> None:
    cells = [cell(seed=s) for s in range(4)]
    done, failed = cells[0].key, cells[1].key
    ledger = Ledger(done={done}, failed={failed: {"error_class": "application"}})
    plain = make_plan(cells, ledger, retry_failed=False)
    assert [c.key for c in plain.done] == [done]
    assert [c.key for c in plain.failed] == [failed]
    assert [c.key for c in plain.todo] == [cells[2].key, cells[3].key]
    retry = make_plan(cells, ledger, retry_failed=True)
    assert [c.key for c in retry.failed] == [failed]
    assert [c.key for c in retry.todo] == [failed, cells[2].key, cells[3].key]  # job order
    assert plain.counts() == "4 cells: 1 done, 1 failed, 2 to run"


def test_submit_runs_a_failed_cell_again_only_with_retry_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "r"
    first = FakeCells(failing=lambda c: c.values["seed"] == 1)
    monkeypatch.setattr(runner.run.cellrun, "run_cell", first)
    result = runner.submit(digits_job(3), results, executor="serial")
    assert result.exit_code == 1 and len(first.ran) == 3
    [failed] = result.failed

    again = FakeCells()  # the cause is fixed; a plain re-run still leaves the cell alone
    monkeypatch.setattr(runner.run.cellrun, "run_cell", again)
    result = runner.submit(digits_job(3), results, executor="serial")
    assert again.ran == [] and result.exit_code == 1
    assert [c.key for c in result.plan.failed] == [failed] and not result.plan.todo

    result = runner.submit(digits_job(3), results, executor="serial", retry_failed=True)
    assert again.ran == [failed]  # that cell, and no finished one
    assert result.exit_code == 0 and result.finished == [failed]
    ledger = ResultsStore(results).scan()
    assert len(ledger.done) == 3 and not ledger.failed
