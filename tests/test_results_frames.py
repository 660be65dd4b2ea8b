"""Results readable by any tool: every result file has the full schema, so plain pandas and
pyarrow.dataset read a folder whole; load_frames gives (cells, epochs) with every column, also
for old narrow files, empty folders and folders with a damaged file.

Rows are real: three tiny cells of three methods (with different hyperparameters) trained
in this process by run_cell, written by the store's writer as the driver writes them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import runner.results.store as store_module
from runner.errors import ResultsError
from runner.job.grid import expand
from runner.job.spec import load_spec
from runner.results.frames import load_frames
from runner.results.schema import (
    EPOCH_FIELDS,
    MEASURED_COLUMNS,
    NESTED_COLUMNS,
    parameter_fields,
    result_schema,
)
from runner.results.store import ResultsStore
from runner.run.cellrun import run_cell
from runner.run.sweep import make_plan
from tests.conftest import write_job

JOB = """
    name = "frames"
    [grid]
    method = ["dropout", "mc_approx", "alsh_approx"]
    [params]
    dataset = "digits"
    depth = 1
    width = 16
    epochs = 2
    batch_size = 20
    lr = 0.05
    train_limit = 200
    [methods.dropout]
    keep = 0.5
"""
EPOCH_SCALARS = [name for name, _ in EPOCH_FIELDS if name != "stats"]
PARAMS = [f.name for f in parameter_fields()]


def old_row_to_table(row: dict[str, Any]) -> pa.Table:
    """How result rows were written before every file carried the full schema: only the
    row's own columns, types inferred (a None value as a null-typed column)."""
    flat = {k: v for k, v in row.items() if k not in NESTED_COLUMNS}
    table = pa.Table.from_pylist([flat])
    for name, dtype in NESTED_COLUMNS.items():
        table = table.append_column(pa.field(name, dtype), pa.array([row[name]], type=dtype))
    return table


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A results folder with one finished cell per method, and the rows by method."""
    root = tmp_path_factory.mktemp("frames")
    job = write_job(root / "job-file.toml", JOB)
    store = ResultsStore(root / "results")
    store.prepare()
    store.save_job(job.read_text())
    rows = {}
    for cell in expand(load_spec(job)).cells:
        result = run_cell(cell.to_payload())
        assert result["status"] == "ok", result
        store.write_result(result["row"])
        rows[cell.method] = result["row"]
    return store.root, rows


def copy_of(made: tuple[Path, Any], tmp_path: Path) -> Path:
    return Path(shutil.copytree(made[0], tmp_path / "results"))


def file_of(root: Path, row: dict[str, Any]) -> Path:
    return root / "cells" / f"{row['cell_key']}.parquet"


def test_every_file_has_the_full_schema_and_plain_readers_lose_no_column(
    made: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    root, rows = made
    files = sorted((root / "cells").glob("*.parquet"))
    assert len(files) == 3
    union: set[str] = set()
    for path in files:
        schema = pq.read_schema(path)
        assert schema.remove_metadata().equals(result_schema()), path
        union |= set(schema.names)
    assert {"dropout.keep", "mc_approx.k", "alsh_approx.hash_bias"} <= union

    frame = pd.read_parquet(root / "cells")
    assert set(frame.columns) == union and len(frame) == 3
    table = ds.dataset(root / "cells", format="parquet").to_table()
    assert set(table.column_names) == union and table.num_rows == 3
    by_method = {r["method"]: r for r in table.to_pylist()}
    assert by_method["dropout"]["dropout.keep"] == 0.5
    assert by_method["mc_approx"]["mc_approx.k"] == rows["mc_approx"]["mc_approx.k"]
    assert by_method["alsh_approx"]["alsh_approx.hash_bias"] == "ignore"
    assert by_method["dropout"]["mc_approx.k"] is None  # another method's: null
    assert by_method["dropout"]["approx_test_accuracy"] is None
    assert by_method["alsh_approx"]["approx_test_accuracy"] is not None


def test_load_frames_gives_every_column_with_arrow_dtypes(
    made: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    root, rows = made
    frames = load_frames(root)
    cells, epochs = frames
    assert frames.unreadable == {}
    schema = result_schema()
    assert list(cells.columns) == schema.names and len(cells) == 3
    for f in schema:
        assert cells[f.name].dtype == pd.ArrowDtype(f.type), f.name
    cells = cells.set_index("method")
    assert cells.loc["dropout", "dropout.keep"] == 0.5
    assert pd.isna(cells.loc["dropout", "alsh_approx.K"])
    assert cells.loc["alsh_approx", "alsh_approx.K"] == rows["alsh_approx"]["alsh_approx.K"]
    assert cells.loc["mc_approx", "test_accuracy"] == rows["mc_approx"]["test_accuracy"]
    assert cells.loc["mc_approx", "train_limit"] == 200

    stats = sorted(c for c in epochs.columns if c.startswith("stat."))
    assert list(epochs.columns) == ["cell_key", *PARAMS, *EPOCH_SCALARS, *stats]
    assert any(s.startswith("stat.active_units") for s in stats)  # ALSH's instrumentation
    assert len(epochs) == 6 and epochs["cell_key"].value_counts().eq(2).all()
    for column in ["cell_key", *PARAMS, *EPOCH_SCALARS]:
        assert isinstance(epochs[column].dtype, pd.ArrowDtype), column
    mc = epochs[epochs["method"] == "mc_approx"]
    history = rows["mc_approx"]["history"]
    assert mc["epoch"].tolist() == [1, 2]
    assert mc["val_loss"].tolist() == [h["val_loss"] for h in history]
    assert (mc["mc_approx.k"] == rows["mc_approx"]["mc_approx.k"]).all()
    assert mc["dropout.keep"].isna().all()


def test_an_old_narrow_file_is_read_counted_done_and_not_rerun(
    made: tuple[Path, dict[str, dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = copy_of(made, tmp_path)
    row = made[1]["dropout"]
    store = ResultsStore(root)
    with monkeypatch.context() as m:  # the previous writer, digest and all
        m.setattr(store_module, "row_to_table", old_row_to_table)
        path = store.write_result(row)
    old_schema = pq.read_schema(path)
    assert "mc_approx.k" not in old_schema.names and "dropout.keep" in old_schema.names
    assert old_schema.field("train_limit").type == pa.int64()
    assert old_schema.field("approx_test_accuracy").type == pa.null()
    assert not ds.dataset(path).schema.equals(result_schema())

    fresh = ResultsStore(root)  # another process: checks every file whole
    ledger = fresh.scan()
    assert row["cell_key"] in ledger.done and not ledger.corrupt
    cells_of_job = expand(load_spec(root / "job.toml")).cells
    assert make_plan(cells_of_job, ledger, retry_failed=False).todo == []

    frames = load_frames(root)
    cells, epochs = frames
    assert frames.unreadable == {} and list(cells.columns) == result_schema().names
    old = cells.set_index("cell_key").loc[row["cell_key"]]
    assert old["dropout.keep"] == 0.5 and pd.isna(old["mc_approx.k"])
    assert pd.isna(old["approx_test_accuracy"]) and old["test_accuracy"] == row["test_accuracy"]
    assert cells["approx_test_accuracy"].dtype == pd.ArrowDtype(pa.float64())
    assert (epochs["cell_key"] == row["cell_key"]).sum() == 2


def test_empty_and_unfinished_folders_give_zero_rows_with_every_column(
    made: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    _, epochs_full = load_frames(made[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    job_only = ResultsStore(tmp_path / "job-only")
    job_only.prepare()
    job_only.save_job(JOB)
    for root in (empty, job_only.root):
        frames = load_frames(root)
        cells, epochs = frames
        assert len(cells) == 0 and list(cells.columns) == result_schema().names
        assert len(epochs) == 0 and list(epochs.columns) == ["cell_key", *PARAMS, *EPOCH_SCALARS]
        for column in epochs.columns:
            assert epochs[column].dtype == epochs_full[column].dtype, column
        assert frames.unreadable == {}
    with pytest.raises(ResultsError, match="does not exist"):
        load_frames(tmp_path / "missing")


def test_a_damaged_or_foreign_file_is_skipped_and_reported(
    made: tuple[Path, dict[str, dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = copy_of(made, tmp_path)
    rows = made[1]
    truncated = file_of(root, rows["dropout"])
    truncated.write_bytes(truncated.read_bytes()[:-20])
    # A file whose value cannot take the schema's type (no code wrote one; a hand-made file).
    with monkeypatch.context() as m:
        m.setattr(store_module, "row_to_table", old_row_to_table)
        misfit = ResultsStore(root).write_result({**rows["mc_approx"], "depth": "one"})
    frames = load_frames(root)
    cells, epochs = frames
    assert cells["method"].tolist() == ["alsh_approx"] and len(epochs) == 2
    assert set(frames.unreadable) == {truncated, misfit}
    assert frames.unreadable[truncated] == ResultsStore(root).scan().corrupt[truncated]
    assert "depth" in frames.unreadable[misfit]


def test_the_writer_refuses_a_value_of_another_type(
    made: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    row = made[1]["dropout"]
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    for column, value in (("learning_flag", 0), ("depth", 1.5), ("diverged", 0)):
        with pytest.raises(ValueError, match=column):
            store.write_result({**row, column: value})
    with pytest.raises(ValueError, match=r"outside the schema.*surprise"):
        store.write_result({**row, "surprise": 1})
    path = store.write_result({**row, "lr": 1})  # an integer for a float: as job files allow
    assert pq.read_table(path).column("lr").to_pylist() == [1.0]
    assert store.scan().done == {row["cell_key"]}


def test_the_schema_holds_every_declared_parameter_and_measured_column() -> None:
    schema = result_schema()
    assert set(MEASURED_COLUMNS) <= set(schema.names)
    assert schema.field("dropout.keep").type == pa.float64()
    assert schema.field("mc_approx.k").type == pa.int64()
    assert schema.field("alsh_approx.hash_bias").type == pa.string()
    assert schema.field("train_limit").type == pa.int64()
    assert len(schema.names) == len(set(schema.names)) == len(PARAMS) + len(MEASURED_COLUMNS)
