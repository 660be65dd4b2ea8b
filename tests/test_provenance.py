"""Every row says which code made it (issue 15): the project's version, the git commit and a
dirty work tree, the library versions, and the version guard's hashes of the trainer's and the
method's code; `status` and `report` say when a folder mixes rows from different code."""

from __future__ import annotations

import importlib
import importlib.metadata
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import runner
from runner.results import store as store_module
from runner.results.code_versions import code_versions, mix_lines, mixes_code
from runner.results.store import ResultsStore
from runner.run import provenance
from tests.conftest import REPO
from tests.source_versions import current
from tests.test_api import DIGITS
from tests.test_results_frames import old_row_to_table

JOB: dict[str, Any] = {
    **DIGITS,
    "name": "provenance-digits",
    "grid": {"method": ["standard", "alsh_approx"], "depth": [1]},
    "params": {**DIGITS["params"], "epochs": 1},
}
PROVENANCE = (
    "cpusweep_version",
    "git_commit",
    "git_dirty",
    *(f"{p}_version" for p in provenance.PACKAGES),
    "trainer_sha256",
    "method_sha256",
)


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
    ).stdout


def _clear_caches() -> None:
    provenance.git_state.cache_clear()
    provenance._process_columns.cache_clear()
    provenance.trainer_hash.cache_clear()
    provenance.method_hash.cache_clear()


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real serial sweep of two cells (standard and ALSH-APPROX) on the bundled digits."""
    _clear_caches()  # gathered by this sweep, not by an earlier test of the session
    results = tmp_path_factory.mktemp("provenance") / "results"
    assert runner.submit(JOB, results, executor="serial").exit_code == 0
    return results


def _rows(results: Path) -> list[dict[str, Any]]:
    table, unreadable = ResultsStore(results).read_results()
    assert table is not None and not unreadable
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def _copy(results: Path, tmp_path: Path) -> Path:
    target = tmp_path / "results"
    shutil.copytree(results, target)
    return target


def _rewrite(results: Path, method: str, **changes: Any) -> None:
    """Change a row of `method` through the real writer (digest and all)."""
    store = ResultsStore(results)
    [row] = [r for r in _rows(results) if r["method"] == method]
    store.write_result({**row, **changes})


def test_a_real_sweep_records_the_code_and_libraries_it_ran_with(swept: Path) -> None:
    rows = _rows(swept)
    assert {r["method"] for r in rows} == {"standard", "alsh_approx"}
    guard = current()  # the version guard's hashes of the code in this checkout
    head = _git("rev-parse", "HEAD").strip()
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    for row in rows:
        assert row["git_commit"] == head
        assert row["git_dirty"] is dirty
        assert row["cpusweep_version"] == importlib.metadata.version("cpusweep")
        for name in provenance.PACKAGES:
            module = importlib.import_module(name)
            # The installed distribution's version: the module's own, without a local build
            # label (torchvision's "+cpu"; torch's full version is `torch_version`).
            assert row[f"{name}_version"] == module.__version__.split("+")[0], name
            assert row[f"{name}_version"] == importlib.metadata.version(name)
        assert row["trainer_sha256"] == guard["trainer"]["sha256"]
        assert row["method_sha256"] == guard[f"method:{row['method']}"]["sha256"]
    standard, alsh = sorted(rows, key=lambda r: str(r["method"]) != "standard")
    assert standard["method_sha256"] != alsh["method_sha256"]
    # The key does not hold any of it: the same cell whatever the commit.
    assert all(name not in str(r["cell_json"]) for r in rows for name in PROVENANCE)

    cells, _ = runner.load(swept)
    assert cells["git_dirty"].dtype.name == "bool[pyarrow]"
    assert str(cells["trainer_sha256"].dtype) == "string[pyarrow]"


def test_a_folder_of_one_code_shows_no_mix(swept: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.cli.main import main

    folder = runner.status(swept)
    [version] = folder.code_versions
    assert version.rows == 2 and not version.unknown and not folder.mixes_code
    assert {m for m, _, _ in version.methods} == {"standard", "alsh_approx"}
    assert main(["status", str(swept)]) == 0
    assert "mixes rows" not in capsys.readouterr().out


def test_a_row_of_other_trainer_code_is_reported_by_status_and_report(
    swept: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli.main import main

    results = _copy(swept, tmp_path)
    _rewrite(
        results,
        "alsh_approx",
        trainer_sha256="f" * 64,
        git_commit="0123456789ab" * 3,
        git_dirty=False,
    )
    folder = runner.status(results)
    assert folder.mixes_code and len(folder.code_versions) == 2
    assert sorted(v.rows for v in folder.code_versions) == [1, 1]
    assert {v.trainer_sha256 for v in folder.code_versions} == {
        "f" * 64,
        current()["trainer"]["sha256"],
    }

    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "this folder mixes rows from different code: 2 rows from 2 code version(s)" in out
    assert "trainer's or a method's code differs" in out
    assert "commit 0123456789ab, trainer ffffffffffff: 1 row(s)" in out
    assert f"trainer {current()['trainer']['sha256'][:12]}: 1 row(s)" in out

    assert main(["report", str(results)]) == 0
    out = capsys.readouterr().out
    assert "this folder mixes rows from different code" in out
    assert "commit 0123456789ab, trainer ffffffffffff: 1 row(s)" in out
    page = (results / "report" / "report.md").read_text(encoding="utf-8")
    assert "**This folder mixes rows from different code: 2 rows" in page
    assert "  - commit 0123456789ab, trainer ffffffffffff: 1 row(s)" in page


def test_a_method_with_two_code_hashes_is_a_mix_even_in_one_commit(
    swept: Path, tmp_path: Path
) -> None:
    results = _copy(swept, tmp_path)
    _rewrite(results, "alsh_approx", method_sha256="e" * 64)
    assert not runner.status(results).mixes_code  # one hash per method: one code
    rows = _rows(results)
    twin = {**next(r for r in rows if r["method"] == "alsh_approx"), "method_sha256": "d" * 64}
    versions = code_versions([*rows, twin])
    assert len(versions) == 1 and mixes_code(versions)
    assert "alsh_approx dddddddddddd (1), alsh_approx eeeeeeeeeeee (1)" in mix_lines(versions)[2]


def test_another_commit_of_the_same_code_is_named_as_such(swept: Path, tmp_path: Path) -> None:
    results = _copy(swept, tmp_path)
    _rewrite(results, "standard", git_commit="a" * 40, git_dirty=False)
    folder = runner.status(results)
    assert folder.mixes_code
    lines = mix_lines(folder.code_versions)
    assert "only the commit differs" in lines[1]
    assert any(line.startswith("commit aaaaaaaaaaaa, trainer") for line in lines[2:])


def test_old_rows_without_provenance_read_whole_and_count_as_unknown_code(
    swept: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli.main import main

    results = _copy(swept, tmp_path)
    [row] = [r for r in _rows(results) if r["method"] == "standard"]
    old = {k: v for k, v in row.items() if k not in PROVENANCE}
    with monkeypatch.context() as m:  # the writer of before these columns
        m.setattr(store_module, "row_to_table", old_row_to_table)
        path = ResultsStore(results).write_result(old)
    assert "git_commit" not in pq.read_schema(path).names

    cells, _ = runner.load(results)
    old_cell = cells[cells["method"] == "standard"].iloc[0]
    assert old_cell["git_commit"] is None or str(old_cell["git_commit"]) == "<NA>"
    folder = runner.status(results)
    assert row["cell_key"] in folder.done and folder.mixes_code
    unknown = [v for v in folder.code_versions if v.unknown]
    assert [v.rows for v in unknown] == [1]
    assert main(["status", str(results)]) == 0
    assert "unknown code (rows written before they recorded it): 1 row(s)" in (
        capsys.readouterr().out
    )

    # A folder of old rows only: one (unknown) code, no mix.
    only_old = [v for v in code_versions([{"method": "standard"}] * 3)]
    assert len(only_old) == 1 and only_old[0].unknown and not mixes_code(only_old)


def test_git_state_reads_a_checkout_clean_or_dirty_and_nothing_outside_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = (tmp_path / "checkout").resolve()
    (checkout / "runner").mkdir(parents=True)
    (checkout / "runner" / "a.py").write_text("x = 1\n", encoding="utf-8")
    _git("init", "-q", cwd=checkout)
    _git("add", "runner/a.py", cwd=checkout)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one", cwd=checkout)
    head = _git("rev-parse", "HEAD", cwd=checkout).strip()

    def state(repo: Path) -> tuple[str | None, bool | None]:
        monkeypatch.setattr(provenance, "REPO", repo)
        provenance.git_state.cache_clear()
        return provenance.git_state()

    try:
        assert state(checkout) == (head, False)
        (checkout / "untracked.txt").write_text("not code\n", encoding="utf-8")
        assert state(checkout) == (head, False)  # untracked files do not count
        (checkout / "runner" / "a.py").write_text("x = 2\n", encoding="utf-8")
        assert state(checkout) == (head, True)
        # An installed copy inside some other repository is not that repository's code.
        assert state(checkout / "runner") == (None, None)
        outside = tmp_path / "image" / "opt"  # the Docker image: sources without .git
        outside.mkdir(parents=True)
        assert state(outside.resolve()) == (None, None)
        monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
        assert state(checkout) == (None, None)  # no git at all: null, never a failure
    finally:
        monkeypatch.undo()
        _clear_caches()


def test_the_hash_is_gathered_once_per_file_version_and_sees_a_change(tmp_path: Path) -> None:
    root = tmp_path
    (root / "methods").mkdir()
    (root / "methods" / "helper.py").write_text("def f():\n    return 1\n", encoding="utf-8")
    (root / "methods" / "m.py").write_text("from methods import helper\n", encoding="utf-8")
    files = provenance.closure(("methods/m.py",), root)
    assert files == ["methods/helper.py", "methods/m.py"]
    before = provenance.combined_hash(files, root)
    assert provenance.combined_hash(files, root) == before
    (root / "methods" / "helper.py").write_text("def f():\n    return 22\n", encoding="utf-8")
    assert provenance.combined_hash(files, root) != before
