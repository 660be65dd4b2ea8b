"""The results ledger: atomic writes, integrity checks, the submit lock."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.errors import ResultsError
from runner.results.schema import EPOCH_FIELDS, MEASURED_FIELDS
from runner.results.store import TEMP_SUFFIX, ResultsStore, atomic_write_bytes


def fake_row(key: str, **extra: object) -> dict[str, object]:
    # Each column a value of its type (strings null): the writer refuses a 0 for a string.
    row: dict[str, object] = {
        name: False if pa.types.is_boolean(t) else None if pa.types.is_string(t) else 0
        for name, t in MEASURED_FIELDS
    }
    epoch: dict[str, object] = {name: 0.0 for name, _ in EPOCH_FIELDS}
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


# --- what the mutation run (docs/testing.md) found untested here ------------------------------


def test_tidy_removes_only_what_an_interrupted_submit_leaves(tmp_path: Path) -> None:
    """A killed driver's temporary files and write probes go, and failure records of cells
    that are done; a user's own files, and failure records of cells not done, stay."""
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    store.write_result(fake_row("done"))
    ours = [
        store.root / f".job.toml.123{TEMP_SUFFIX}",
        store.cells_dir / f".done.parquet.123{TEMP_SUFFIX}",
        store.failed_dir / f".x.json.9{TEMP_SUFFIX}",
        store.root / "jobs" / f".abc.toml.9{TEMP_SUFFIX}",
        store.root / ".cpusweep-write-test.4242",
        store.failure_path("done"),
    ]
    theirs = [
        store.root / ".notes",
        store.root / f"visible{TEMP_SUFFIX}",  # not a hidden name: never one of ours
        store.cells_dir / ".hidden.parquet",
        store.failure_path("other"),
    ]
    for path in ours + theirs:
        path.write_text("x")
    removed = store.tidy(store.scan())
    assert sorted(removed) == sorted(ours)
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    assert store.tidy(store.scan()) == []


def test_the_job_file_is_kept_as_submitted_and_every_version_of_it(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    assert store.job_text() is None
    store.save_job('name = "a"\n')
    store.save_job('name = "a"  # é, edited\n')
    assert store.job_text() == 'name = "a"  # é, edited\n'
    kept = sorted(p.read_text(encoding="utf-8") for p in (store.root / "jobs").glob("*.toml"))
    assert kept == ['name = "a"\n', 'name = "a"  # é, edited\n']
    assert all(len(p.stem) == 12 for p in (store.root / "jobs").glob("*.toml"))
    (store.root / "job.toml").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ResultsError, match="cannot be read as the job file"):
        store.job_text()


def test_a_folder_to_read_must_be_a_results_folder(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="it does not exist"):
        ResultsStore(tmp_path / "missing").check_readable_folder()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="is a file, not a results folder"):
        ResultsStore(tmp_path / "file").check_readable_folder()
    (tmp_path / "other").mkdir()
    with pytest.raises(ResultsError, match=r"holds none of job\.toml"):
        ResultsStore(tmp_path / "other").check_readable_folder()
    for marker in ("job.toml", "cells", "failed", "checkpoints"):
        folder = tmp_path / f"with-{marker}"
        folder.mkdir()
        if marker == "job.toml":
            (folder / marker).write_text("")
        else:
            (folder / marker).mkdir()
        ResultsStore(folder).check_readable_folder()


def test_finished_rows_leave_out_the_bulky_columns_and_unreadable_files(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    assert store.finished_rows() == []  # no cells/ folder yet
    store.prepare()
    store.write_result(fake_row("b", depth=2))
    store.write_result(fake_row("a", depth=1))
    (store.cells_dir / "0garbled.parquet").write_bytes(b"PAR1 garbage PAR1")  # first
    rows = store.finished_rows()
    assert [(r["cell_key"], r["depth"]) for r in rows] == [("a", 1), ("b", 2)]
    assert not {"history", "confusion_matrix"} & set(rows[0])
    [full] = [r for r in store.finished_rows(exclude=()) if r["cell_key"] == "a"]
    assert full["confusion_matrix"] == [[3, 1], [0, 4]]


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "is full"),
        (errno.EDQUOT, "is full"),
        (errno.EACCES, "is not writable"),
        (errno.EPERM, "is not writable"),
        (errno.EROFS, "is not writable"),
        (errno.EIO, "cannot write"),
    ],
)
def test_a_failed_write_says_what_to_do(
    code: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r" / "cells" / "k.parquet"
    target.parent.mkdir(parents=True)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(ResultsError) as caught:
        atomic_write_bytes(target, b"data")
    message = str(caught.value)
    assert says in message and str(target) in message and os.strerror(code) in message
    if says == "is full":
        assert "re-run the same command" in message
    if says == "is not writable":
        assert "--results" in message
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_quarantine_moves_a_file_aside_whole(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    bad = store.cells_dir / "bad.parquet"
    bad.write_bytes(b"not parquet")
    [moved] = store.quarantine([bad])
    assert moved.parent == store.root / "quarantine" and moved.name.startswith("bad.parquet.")
    assert moved.read_bytes() == b"not parquet" and not bad.exists()
    # A second damaged file later goes into the same quarantine folder, beside the first.
    bad.write_bytes(b"damaged again")
    [again] = store.quarantine([bad])
    assert again.parent == moved.parent and again != moved and moved.exists()
    assert again.read_bytes() == b"damaged again"
    with pytest.raises(ResultsError, match="quarantine"):
        store.quarantine([store.cells_dir / "gone.parquet"])


def test_a_row_changed_after_it_was_written_is_refused(tmp_path: Path) -> None:
    """A whole, valid Parquet file whose value differs from what was written (its stored
    digest kept) does not count: the digest is written with every row and checked."""
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    path = store.write_result(fake_row("k", test_accuracy=0.5))
    table = pq.read_table(path)
    assert table.schema.metadata and b"cpusweep.row_sha256" in table.schema.metadata
    changed = table.set_column(
        table.column_names.index("test_accuracy"), "test_accuracy", pa.array([0.99])
    )
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), path)
    assert ResultsStore(store.root).scan().corrupt == {
        path: "damaged: its content does not match the digest stored in it"
    }


def test_each_way_a_result_file_can_be_wrong_is_named(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    good = store.write_result(fake_row("good"))
    cells = store.cells_dir
    (cells / "short.parquet").write_bytes(good.read_bytes()[:-20])
    (cells / "tiny.parquet").write_bytes(b"PAR1PAR1")
    (cells / "moved.parquet").write_bytes(good.read_bytes())
    two = pa.concat_tables([pq.read_table(good)] * 2).replace_schema_metadata(None)
    pq.write_table(two.set_column(0, "cell_key", pa.array(["two", "two"])), cells / "two.parquet")
    pq.write_table(pa.table({"x": [1]}), cells / "keyless.parquet")
    corrupt = {p.stem: why for p, why in store.scan().corrupt.items()}
    assert corrupt == {
        "short": "not a Parquet file: truncated, or something else",
        "tiny": "not a Parquet file: truncated, or something else",
        "moved": "it holds the result of another cell (good)",
        "two": "2 rows where one cell's result has one",
        "keyless": "it holds the result of another cell (None)",
    }


def test_the_ledger_reads_every_failure_record(tmp_path: Path) -> None:
    """Failure records of cells that are done are passed over, not the ones after them; an
    unreadable record still counts as a failure."""
    store = ResultsStore(tmp_path / "r")
    store.prepare()
    store.write_result(fake_row("done"))
    others = [f"cell{i}" for i in range(12)]
    for key in others:
        store.write_failure({"cell_key": key, "error_class": "application", "message": key})
    store.failure_path("done").write_text("{}")  # left by a driver killed before tidy()
    store.failure_path("garbled").write_text("{not json")
    ledger = store.scan()
    assert ledger.done == {"done"}
    assert sorted(ledger.failed) == sorted([*others, "garbled"])
    assert ledger.failed["cell3"]["message"] == "cell3"
    assert ledger.failed["garbled"] == {
        "error_class": "unknown",
        "message": f"unreadable failure record {store.failure_path('garbled')}",
    }


def test_prepare_makes_a_nested_folder_and_accepts_an_existing_one(tmp_path: Path) -> None:
    """Every resume prepares a folder that exists; a first submit may name a deep one."""
    store = ResultsStore(tmp_path / "a" / "b" / "results")
    store.prepare()
    store.write_result(fake_row("k"))
    store.prepare()
    assert sorted(p.name for p in store.root.iterdir()) == ["cells", "failed", "jobs"]
    assert store.scan().done == {"k"}
