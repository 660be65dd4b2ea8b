"""What a user sees when something is wrong: a plain message and exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.cli.main import main
from tests.conftest import write_job


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        text=True,
        capture_output=True,
        timeout=120,
    )


def test_bad_job_file_lists_every_problem_without_traceback(tmp_path: Path) -> None:
    job = write_job(
        tmp_path / "bad.toml",
        """
        name = "bad"
        [grid]
        method = ["standard", "sgd-fast"]
        [params]
        dataset = "cifar100"
    """,
    )
    result = run_cli("submit", str(job), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bad.toml: 2 problems" in result.stderr
    assert "'sgd-fast' is not one of the valid choices: 'standard'" in result.stderr
    assert "'cifar100' is not one of the valid choices: 'digits', 'mnist', " in result.stderr
    assert not (tmp_path / "results").exists()  # nothing was created


def test_missing_dataset_stops_before_any_cell_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPUSWEEP_OFFLINE", "1")
    job = write_job(
        tmp_path / "mnist.toml",
        """
        name = "m"
        [params]
        method = "standard"
        dataset = "mnist"
    """,
    )
    code = main(
        [
            "submit",
            str(job),
            "--results",
            str(tmp_path / "r"),
            "--data-root",
            str(tmp_path / "data"),
            "--executor",
            "serial",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and str(tmp_path / "data" / "MNIST" / "raw") in err
    assert not list((tmp_path / "r" / "cells").glob("*"))
    assert not list((tmp_path / "r" / "failed").glob("*"))


def test_plan_shows_cells_and_states_without_running(
    digits_job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "r"
    assert main(["plan", str(digits_job), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "4 cells: 0 done, 0 failed, 4 to run" in out
    assert "standard/digits d1 b20 s0" in out
    assert not results.exists()  # planning writes nothing


def test_status_of_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", str(tmp_path / "nope")]) == 2
    assert "not a results folder" in capsys.readouterr().err


def test_status_tells_resumable_checkpoints_from_orphaned_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.job.grid import expand
    from runner.job.spec import parse_spec
    from runner.results.store import ResultsStore
    from runner.run.checkpoint import checkpoint_path

    def job(depths: str) -> str:
        return f"""
            name = "ck"
            [grid]
            depth = [{depths}]
            [params]
            method = "standard"
            dataset = "digits"
        """

    store = ResultsStore(tmp_path / "results")
    store.prepare()
    old_cells = expand(parse_spec(textwrap.dedent(job("1, 2")), "ck.toml")).cells
    for cell in old_cells:  # both cells were interrupted mid-way
        path = checkpoint_path(store.root, cell.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 250_000)
    store.save_job(textwrap.dedent(job("2")))  # then depth 1 left the job file

    assert main(["status", str(store.root)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 unfinished cell(s) have a checkpoint: the next submit continues them" in out
    orphan = checkpoint_path(store.root, old_cells[0].key)
    assert "1 checkpoint(s) (0.2 MB) belong to cells no longer in the job file" in out
    assert str(orphan) in out.replace(" ", "")  # the path, however the terminal wrapped it
    assert orphan.exists()  # status deletes nothing


def test_reading_commands_refuse_what_is_not_a_results_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    for command in ("status", "report"):
        assert main([command, str(a_file)]) == 2
        assert f"{a_file} is a file, not a results folder" in capsys.readouterr().err
        assert main([command, str(unrelated)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "is not a results folder: it holds none of job.toml, cells/, failed/" in err
    assert not list(unrelated.iterdir())  # nothing written there


def test_a_results_path_through_a_file_is_refused_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(
        tmp_path / "j.toml",
        """
        name = "j"
        [params]
        method = "standard"
        dataset = "digits"
    """,
    )
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    for results in (a_file, a_file / "sub"):
        assert main(["submit", str(job), "--results", str(results), "--executor", "serial"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{a_file} is a file, so {results} cannot be a results folder" in err
    assert a_file.read_text() == "keep me"


def test_a_job_file_copy_that_is_not_text_does_not_stop_status_or_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.results.store import ResultsStore

    store = ResultsStore(tmp_path / "results")
    store.prepare()
    (store.root / "job.toml").write_bytes(b'name = "x"\n\xff\n')
    assert main(["status", str(store.root)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "job.toml cannot be read as the job file" in " ".join(captured.err.split())
    assert main(["report", str(store.root), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    said = " ".join((captured.out + captured.err).split())
    assert "job.toml cannot be read as the job file" in said
    assert (tmp_path / "out" / "report.md").is_file()


def test_a_job_with_every_cell_excluded_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(
        tmp_path / "none.toml",
        """
        name = "none"
        [grid]
        depth = [1, 2]
        [params]
        method = "standard"
        dataset = "digits"
        [[exclude]]
        depth = [1, 2]
    """,
    )
    results = tmp_path / "results"
    assert main(["submit", str(job), "--results", str(results), "--executor", "serial"]) == 2
    assert "the job has no cells" in " ".join(capsys.readouterr().err.split())
    assert not results.exists()


def test_data_prepare_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.datasets.files import digest
    from tests.conftest import MNIST_FILES, fabricate_mnist_like, fabricate_norb

    root = tmp_path / "data"
    fabricate_mnist_like(root, "MNIST", MNIST_FILES)
    fabricate_norb(root, n_train=40, n_test=10, gz=True)
    assert main(["data", "prepare", "mnist", "norb", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "mnist: 220 / 20 / 60 (train / val / test, split seed 0)" in out
    assert "norb: 37 / 3 / 10" in out
    assert str(root / "prepared" / "norb-v1-split0") in out

    assert main(["data", "list", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert f"MNIST/raw/train-images-idx3-ubyte  188.2 KB  sha256 {digest(images)}" in out
    assert "mnist (MNIST handwritten digits): 4 of 4 official files" in out
    assert "cifar10 (CIFAR-10 colour images): 0 of 7 official files" in out
    assert "missing cifar-10-batches-py/data_batch_1" in out
    assert "digits (" in out and "bundled with scikit-learn" in out
    rows = [line for line in out.splitlines() if "220 / 20 / 60" in line or "37 / 3 / 10" in line]
    assert len(rows) == 2 and all(" ok " in row for row in rows), rows

    # A damaged prepared copy is listed as such (and would be prepared again before use).
    (root / "prepared" / "norb-v1-split0" / "test_labels.npy").write_bytes(b"")
    assert main(["data", "list", "--data-root", str(root)]) == 0
    assert "damaged: test_labels.npy has 0 bytes" in capsys.readouterr().out


def test_data_prepare_of_missing_files_says_where_they_go(tmp_path: Path) -> None:
    root = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "runner", "data", "prepare", "norb", "--data-root", str(root)],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "CPUSWEEP_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "downloads are off: CPUSWEEP_OFFLINE is set" in result.stderr
    name = "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat"
    assert name in result.stderr and "(or " in result.stderr
    assert not list((root / "prepared").glob("norb-*"))  # nothing half-written


def test_data_prepare_checks_published_checksums_unless_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import fabricate_cifar10

    root = tmp_path / "data"
    fabricate_cifar10(root, per_batch=10, n_test=10)
    assert main(["data", "prepare", "cifar10", "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1 does not match its published md5" in err
    assert not (root / "prepared" / "cifar10-v1-split0").exists()

    args = ["data", "prepare", "cifar10", "--data-root", str(root), "--skip-checksums"]
    assert main([*args, "--split-seed", "3"]) == 0
    assert "cifar10: 45 / 5 / 10 (train / val / test, split seed 3)" in capsys.readouterr().out
    meta = (root / "prepared" / "cifar10-v1-split3" / "meta.json").read_text()
    assert '"published_checksums_checked": false' in meta

    # The explicit choice holds for exactly these files: the submit preflight accepts them.
    def submit(split_seed: int) -> int:
        job = write_job(
            tmp_path / f"cifar{split_seed}.toml",
            f"""
            name = "c{split_seed}"
            [params]
            method = "standard"
            dataset = "cifar10"
            width = 8
            depth = 1
            epochs = 1
            batch_size = 10
            split_seed = {split_seed}
        """,
        )
        results = str(tmp_path / f"r{split_seed}")
        args = ["submit", str(job), "--results", results, "--data-root", str(root)]
        return main([*args, "--executor", "serial"])

    assert submit(3) == 0
    assert len(list((tmp_path / "r3" / "cells").glob("*.parquet"))) == 1
    # A file replaced since is checked again.
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    os.utime(batch, ns=(batch.stat().st_atime_ns, batch.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert submit(4) == 2
    assert "data_batch_1 does not match its published md5" in capsys.readouterr().err


def test_data_prepare_rejects_unknown_names_before_fetching(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["data", "prepare", "mnist", "imagenet", "--data-root", str(tmp_path / "d")])
    assert code == 2
    assert "unknown dataset 'imagenet'; valid: digits, mnist," in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_verbose_goes_anywhere_and_cpus_must_be_positive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from runner.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["submit", "j.toml", "-v"]).verbose
    assert parser.parse_args(["-v", "submit", "j.toml"]).verbose
    assert not parser.parse_args(["submit", "j.toml"]).verbose
    assert parser.parse_args(["data", "list", "-v"]).verbose
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["submit", "j.toml", "--cpus", bad])
        assert exit_info.value.code == 2
        assert "argument --cpus" in capsys.readouterr().err
