"""Damaged files: a result or checkpoint file that is truncated, garbled with its ends intact,
zeroed in the middle or misplaced is detected and reported by name, never counted as done
and never resumed from; the cell runs again and ends bit-identical to its first run."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from runner.cli.main import main
from runner.run.checkpoint import checkpoint_path
from tests.faults import assert_complete, digits_job, job_keys, stop_after_checkpoint


def flip_middle(path: Path) -> None:
    """Garble bytes in the middle of the column data; the Parquet magic bytes at both ends
    and the footer stay intact. Not the middle of the file: in a one-row file with every
    column the footer is most of it, and holds bytes a reader ignores (each column chunk
    repeats its column's name), so a flip there can leave the content whole, digest and all."""
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    middle = (4 + footer_start) // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def zero_block(path: Path) -> None:
    """What a crash can leave on some filesystems: a run of zeros where data was."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    data[start : start + 256] = bytes(256)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_results_are_reported_moved_aside_and_recomputed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = digits_job(tmp_path / "j.toml", "damaged", seeds=range(5))
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    assert main(args) == 0
    first = pd.read_parquet(results / "cells").set_index("cell_key")
    intact, *victims = sorted(job_keys(job))
    paths = {key: results / "cells" / f"{key}.parquet" for key in job_keys(job)}
    truncate(paths[victims[0]])
    flip_middle(paths[victims[1]])
    zero_block(paths[victims[2]])
    paths[victims[3]].write_bytes(paths[intact].read_bytes())  # another cell's result
    damaged = {key: paths[key].read_bytes() for key in victims}
    intact_mtime = paths[intact].stat().st_mtime_ns
    capsys.readouterr()

    # status and plan say what is wrong with which file, and count those cells as not done.
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "5 cells: 1 done, 0 failed, 4 to run" in out
    for key in victims:
        assert f"unreadable result file {paths[key]}" in out
    assert "not a Parquet file" in out and "damaged" in out
    assert f"holds the result of another cell ({intact})" in out
    assert main(["plan", str(job), "--results", str(results)]) == 0
    assert "5 cells: 1 done, 0 failed, 4 to run" in capsys.readouterr().out

    # submit moves them aside (never deletes them), says so, and runs those cells again.
    assert main(args) == 0
    err = capsys.readouterr().err
    for key in victims:
        assert f"{paths[key]} is unreadable" in err.replace("\n", "")
    assert err.count("that cell will run again") == 4
    assert_complete(results, job_keys(job))
    quarantined = sorted(p.read_bytes() for p in (results / "quarantine").iterdir())
    assert quarantined == sorted(damaged.values())
    assert paths[intact].stat().st_mtime_ns == intact_mtime  # untouched
    again = pd.read_parquet(results / "cells").set_index("cell_key")
    assert list(again.loc[victims, "weights_sha256"]) == list(first.loc[victims, "weights_sha256"])


def test_a_valid_file_with_a_wrong_digest_is_not_done(tmp_path: Path) -> None:
    """The stored digest is checked: a result edited after it was written (any value, even
    with a well-formed Parquet file around it) does not count."""
    import pyarrow.parquet as pq

    from runner.results.store import ResultsStore

    job = digits_job(tmp_path / "j.toml", "edited", seeds=[0])
    results = tmp_path / "results"
    assert main(["submit", str(job), "--results", str(results), "--executor", "serial"]) == 0
    [path] = (results / "cells").glob("*.parquet")
    table = pq.read_table(path)
    edited = table.set_column(table.column_names.index("test_accuracy"), "test_accuracy", [[0.999]])
    pq.write_table(edited, path)  # keeps the schema metadata, digest included
    ledger = ResultsStore(results).scan()
    assert not ledger.done
    assert "does not match the digest" in ledger.corrupt[path]


def _record_offset(path: Path, suffix: str) -> int:
    """Where the bytes of the zip record whose name ends with `suffix` start in the file."""
    with zipfile.ZipFile(path) as archive:
        [info] = [i for i in archive.infolist() if i.filename.endswith(suffix)]
        content = archive.read(info)
    offset = path.read_bytes().index(content)
    assert offset > 0
    return offset


@pytest.mark.parametrize("damage", ["tensor byte", "truncated"])
def test_a_damaged_checkpoint_is_never_resumed_from(
    damage: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A checkpoint whose weights were damaged still loads with torch.load (it checks no
    CRC): without the check, the cell would continue from wrong weights and be stored as
    done. It is reported and the cell starts again from scratch."""
    job = digits_job(tmp_path / "j.toml", "ckpt", seeds=[0], epochs=4, width=64)
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    with monkeypatch.context() as patch:
        stop_after_checkpoint(patch, epoch=2, stop=KeyboardInterrupt)
        assert main(args) == 130
    [key] = job_keys(job)
    path = checkpoint_path(results, key)
    if damage == "truncated":
        truncate(path)
    else:
        data = bytearray(path.read_bytes())
        # The first hidden layer's weights (64 x 64 floats): the largest tensor record.
        with zipfile.ZipFile(path) as archive:
            biggest = max(archive.infolist(), key=lambda i: i.file_size)
        offset = _record_offset(path, biggest.filename)
        data[offset + 100] ^= 0x40
        path.write_bytes(bytes(data))
    caplog.clear()

    assert main(args) == 0
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"ignored the unreadable checkpoint {path}" in warning
    assert ("fails its CRC check" if damage != "truncated" else "not a whole checkpoint") in warning
    [row] = pd.read_parquet(results / "cells").to_dict("records")
    assert row["resumed_from_epoch"] == 0 and row["resumes"] == 0
    reference = tmp_path / "reference"
    assert main(["submit", str(job), "--results", str(reference), "--executor", "serial"]) == 0
    [clean] = pd.read_parquet(reference / "cells").to_dict("records")
    assert row["weights_sha256"] == clean["weights_sha256"]
    assert_complete(results, {key})


def test_status_survives_a_job_file_that_no_longer_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A results folder whose job.toml names something this code no longer has (a dataset
    renamed, say): status says so and still shows what the folder holds."""
    job = digits_job(tmp_path / "j.toml", "renamed", seeds=[0])
    results = tmp_path / "results"
    assert main(["submit", str(job), "--results", str(results), "--executor", "serial"]) == 0
    saved = results / "job.toml"
    saved.write_text(saved.read_text().replace('"digits"', '"digits_v0"'))
    capsys.readouterr()
    assert main(["status", str(results)]) == 0
    captured = capsys.readouterr()
    assert "does not expand with this version of the code" in captured.err
    assert "'digits_v0' is not one of the valid choices" in captured.err.replace("\n", "")
    assert "1 done, 0 failed" in captured.out
