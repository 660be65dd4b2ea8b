"""A results folder that cannot be written, and a disk that fills up: a clear error (exit code
2, the folder named, what to do) before or at the failing write, nothing already finished
damaged, no temporary file left, and the same command finishes once the disk has room.

The disk fills up for real on a tiny tmpfs where this machine allows mounting one (root on
Linux), and by a write that fails with ENOSPC half-way everywhere else."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import runner.results.store
from runner.cli.main import main
from runner.results.store import read_result
from tests.faults import assert_complete, digits_job, job_keys, result_keys


def _mount(target: Path, options: str) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
        capture_output=True,
        timeout=30,
    )
    return done.returncode == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, or a skip where mounting is not permitted."""
    target = tmp_path / "tiny"
    target.mkdir()
    if not _mount(target, "size=2m,mode=0755"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=30)


def _fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; return it (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _snapshot(results: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (results / "cells").glob("*.parquet")}


def test_disk_full_mid_sweep_keeps_every_finished_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The third result's write fails half-way with ENOSPC: exit code 2 and a message that
    names the folder, the two results before it intact, no temporary file; after space is
    freed the same command finishes, the cell that could not be stored resuming from its
    last checkpoint."""
    job = digits_job(tmp_path / "j.toml", "full", seeds=range(4), epochs=3)
    results = tmp_path / "results"
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    real_open = open
    writes = {"results": 0}

    class HalfWritten:
        """A file whose write stops half-way: the disk filled up under it."""

        def __init__(self, handle: Any):
            self.handle = handle

        def __enter__(self) -> HalfWritten:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            self.handle.write(data[: len(data) // 2])
            self.handle.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    def filling_open(path: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        handle = real_open(path, mode, *a, **k)
        name = Path(path).name
        if "w" in mode and ".parquet." in name and name.endswith(".cpusweep-tmp"):
            writes["results"] += 1
            if writes["results"] >= 3:
                return HalfWritten(handle)
        return handle

    monkeypatch.setattr(runner.results.store, "open", filling_open, raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"the disk holding {results / 'cells'}" in err and "is full" in err
    assert "re-run the same command" in err and "Traceback" not in err
    stored = _snapshot(results)
    assert len(stored) == 2
    for name in stored:
        read_result(results / "cells" / name)  # whole
    assert not [p for p in results.rglob("*") if p.name.endswith(".cpusweep-tmp")]
    assert not list((results / "failed").glob("*"))
    waiting = list((results / "checkpoints").glob("*.pt"))
    assert len(waiting) == 1  # the computed cell whose result could not be stored

    monkeypatch.undo()  # space freed
    assert main(args) == 0
    assert_complete(results, job_keys(job))
    assert {n: d for n, d in _snapshot(results).items() if n in stored} == stored
    rows = pd.read_parquet(results / "cells").set_index("cell_key")
    assert rows.loc[waiting[0].stem, "resumed_from_epoch"] == 2


def test_a_full_filesystem_stops_before_any_cell_runs(
    tiny_fs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a real filesystem with no space left: the folder's write test fails first, so no
    cell runs; nothing finished is touched; with space again the same command finishes."""
    results = tiny_fs / "results"
    job = digits_job(tmp_path / "j.toml", "tiny", seeds=[0, 1])
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    assert main(args) == 0
    before = _snapshot(results)
    digits_job(tmp_path / "j.toml", "tiny", seeds=[0, 1, 2])  # one more cell
    filler = _fill(tiny_fs)
    capsys.readouterr()

    assert main(args) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"the disk holding {results} is full (No space left on device)" in err
    assert _snapshot(results) == before
    assert not [p for p in results.rglob("*") if p.name.endswith(".cpusweep-tmp")]
    assert len(result_keys(results)) == 2

    filler.unlink()
    assert main(args) == 0
    assert_complete(results, job_keys(job))
    assert {n: d for n, d in _snapshot(results).items() if n in before} == before


def test_a_read_only_results_folder_stops_before_any_cell_runs(
    tiny_fs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Root ignores permission bits, but not a read-only mount: the error says the folder is
    not writable and what to do; `status` still reads it; once writable, the same command
    finishes."""
    results = tiny_fs / "results"
    job = digits_job(tmp_path / "j.toml", "ro", seeds=[0])
    args = ["submit", str(job), "--results", str(results), "--executor", "serial"]
    assert main(args) == 0
    assert main(["report", str(results)]) == 0
    shutil.rmtree(results / "report" / "figures")
    digits_job(tmp_path / "j.toml", "ro", seeds=[0, 1])
    before = _snapshot(results)
    if not _mount_option(tiny_fs, "remount,ro"):
        pytest.skip("cannot remount read-only here")
    try:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.replace("\n", "")
        assert f"{results} is not writable (Read-only file system)" in err
        assert "pick --results" in err
        assert main(["status", str(results)]) == 0
        assert "1 cells: 1 done, 0 failed, 0 to run" in capsys.readouterr().out  # job.toml
        assert main(["report", str(results)]) == 2
        err = capsys.readouterr().err.replace("\n", "")
        assert "Read-only file system" in err and "elsewhere with --out DIR" in err
        assert "Traceback" not in err
    finally:
        assert _mount_option(tiny_fs, "remount,rw")
    assert _snapshot(results) == before
    assert main(args) == 0
    assert_complete(results, job_keys(job))


def _mount_option(target: Path, options: str) -> bool:
    done = subprocess.run(["mount", "-o", options, str(target)], capture_output=True, timeout=30)
    return done.returncode == 0


def test_a_results_path_that_cannot_be_a_folder_stops_before_any_cell_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runner.run.cellrun

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cell ran")

    monkeypatch.setattr(runner.run.cellrun, "run_cell", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    job = digits_job(tmp_path / "j.toml", "blocked", seeds=[0])
    results = blocker / "results"
    code = main(["submit", str(job), "--results", str(results), "--executor", "serial"])
    assert code == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"{blocker} is a file, so {results} cannot be a results folder" in err
    assert "Traceback" not in err
