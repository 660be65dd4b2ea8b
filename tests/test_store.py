"""The results ledger: atomic writes, integrity checks, the submit lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.errors import ResultsError
from runner.results.schema import EPOCH_FIELDS, MEASURED_FIELDS
from runner.results.store import ResultsStore


def fake_row(key: str, **extra: object) -> dict[str, object]:
    # Each column a value of its type (strings null): the writer refuses a 0 for a string.
    row: dict[str, object] = {
        name: False if pa.types.is_boolean(t) else None if pa.types.is_string(t) else 0
        for name, t in MEASURED_FIELDS
    }
    epoch = {name: 0.0 for name, _ in EPOCH_FIELDS}
    epoch.update(epoch=1, stats=[{"name": "probe_rel_error.layer1", "value": 0.25}])
    row.update(
        cell_key=key,
        status="ok",
        method="standard",
        confusion_matrix=[[3, 1], [0, 4]],
        history=[epoch],
        test_accuracy=0.875,
    )
    row.update(extra)
    return row


def test_result_round_trip_and_done_means_file_exists(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    store.write_failure({"cell_key": "abc", "error_class": "application", "message": "boom"})
    assert store.scan().failed.keys() == {"abc"}
    path = store.write_result(fake_row("abc", depth=3))
    ledger = store.scan()
    assert ledger.done == {"abc"} and not ledger.failed  # the old failure record is gone
    table = pq.read_table(path)
    assert table.column("depth").to_pylist() == [3]
    assert table.column("confusion_matrix").to_pylist() == [[[3, 1], [0, 4]]]
    assert table.column("history").to_pylist()[0][0]["stats"][0]["value"] == 0.25
    assert not list((tmp_path / "r" / "cells").glob(".*tmp"))  # no temp file left behind


def test_rows_from_different_methods_concatenate(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    store.write_result(fake_row("a", **{"dropout.keep": 0.05}, train_limit=None))
    store.write_result(fake_row("b", **{"mc_approx.k": 10}, train_limit=100))
    table, unreadable = store.read_results()
    assert table is not None and not unreadable
    frame = table.to_pandas().set_index("cell_key")
    assert frame.loc["a", "dropout.keep"] == 0.05 and frame.loc["b", "mc_approx.k"] == 10
    assert frame.loc["b", "train_limit"] == 100


def test_a_row_outside_the_schema_is_refused(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    row = fake_row("a")
    del row["test_accuracy"]
    with pytest.raises(ValueError, match="test_accuracy"):
        store.write_result(row)
    row = fake_row("a")
    row["history"][0]["surprise"] = 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="surprise"):
        store.write_result(row)


def test_truncated_result_is_never_counted_as_done(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    good = store.write_result(fake_row("good"))
    bad = store.write_result(fake_row("bad"))
    bad.write_bytes(bad.read_bytes()[:-20])
    ledger = store.scan()
    assert ledger.done == {"good"} and list(ledger.corrupt) == [bad]
    moved = store.quarantine(ledger.corrupt)
    assert not bad.exists() and moved[0].exists() and good.exists()


def test_unwritable_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ResultsError, match=r"is a file, so .* cannot be a results folder"):
        ResultsStore(blocker / "results").prepare()


def test_second_submit_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    holder = textwrap.dedent(f"""
        import sys, time
        from runner.results.store import ResultsStore
        with ResultsStore({str(tmp_path / "r")!r}).lock():
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsError, match=r"in use by another submit \(pid"), store.lock():
            pass
    finally:
        proc.communicate("\n", timeout=30)
    with store.lock():  # released when the holder exits
        pass
