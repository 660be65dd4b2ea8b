"""`runner export` without its extras installed (the default run): the error names the extra.

The exports themselves are tested in tests/test_export_trackers.py (marker `export`, with the
mlflow and tensorboard extras installed)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from runner.cli.main import main
from runner.results.store import ResultsStore
from tests.test_report import fabricate

JOB = """
name = "fabricated-export"
[grid]
method = ["standard"]
depth = [1]
[params]
dataset = "mnist"
epochs = 3
"""


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A real results folder (one fabricated finished cell), so that only the extra is amiss."""
    made = fabricate(tmp_path / "results", JOB, seed=1)
    assert len(ResultsStore(made.root).scan().done) == 1
    return made.root


@pytest.mark.parametrize(
    ("target", "module"), [("mlflow", "mlflow"), ("tensorboard", "tensorboard")]
)
def test_a_missing_extra_is_named_with_the_command_that_installs_it(
    results: Path,
    target: str,
    module: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now fails
    assert main(["export", str(results), "--to", target]) == 2
    err = capsys.readouterr().err
    assert f"optional `{target}` extra" in err
    assert f"pip install -e '.[{target}]'" in err
    assert not (results / "mlflow").exists() and not (results / "tensorboard").exists()


def test_mlflow_without_sqlalchemy_cannot_use_its_sqlite_store_and_says_which_extra(
    results: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """mlflow-skinny alone (no SQLAlchemy) cannot open the default SQLite store."""
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    assert main(["export", str(results), "--to", "mlflow"]) == 2
    err = capsys.readouterr().err
    assert "pip install -e '.[mlflow]'" in err and "sqlalchemy" in err


@pytest.mark.parametrize(
    "args",
    [
        ["--to", "mlflow", "--out", "somewhere"],
        ["--to", "tensorboard", "--tracking-uri", "sqlite:///x.db"],
        ["--to", "tensorboard", "--experiment", "x"],
    ],
)
def test_an_option_of_the_other_target_is_refused(
    results: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(results), *args]) == 2
    err = capsys.readouterr().err
    assert "for --to" in err and "takes" in err
