"""The README's Python example runs as printed (in a fresh folder, on the bundled digits), and
the Python API page's example names only what the API has."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import runner
import runner.api
from tests.conftest import REPO


def python_blocks(path: Path, section: str | None = None) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if section is not None:
        start = text.index(f"\n## {section}\n")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_example_runs_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example's code exactly as printed, in a fresh folder whose jobs/quickstart.toml is
    the real quickstart with its grid cut to two cells of two epochs (the whole quickstart
    takes minutes; the container test runs it in full)."""
    [example] = python_blocks(REPO / "README.md", "From Python")
    assert len(example.strip().splitlines()) < 10  # "in under ten lines"
    quickstart = tomllib.loads((REPO / "jobs" / "quickstart.toml").read_text(encoding="utf-8"))
    quickstart["grid"] = {"method": ["standard", "alsh_approx"], "depth": [1]}
    quickstart["params"].update(epochs=2, width=64, batch_size=20)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "quickstart.toml").write_text(tomli_w.dumps(quickstart))
    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README.md (From Python)", "exec"), scope)
    cells, epochs, result = scope["cells"], scope["epochs"], scope["result"]
    assert isinstance(result, runner.api.SweepResult) and result.exit_code == 0
    assert result.results == Path("results/quickstart")  # under the current folder
    assert len(cells) == 2 and set(cells["method"]) == {"standard", "alsh_approx"}
    # Every column, a method's own ones too (null in the other method's row).
    assert cells["alsh_approx.hash_bias"].isna().sum() == 1
    assert cells["test_accuracy"].notna().all() and len(epochs) == 2 * 2
    lines = printed.getvalue().splitlines()
    assert lines[0] == "2 cells: 0 done, 0 failed, 2 to run"  # what the comment says, scaled
    assert "alsh_approx" in printed.getvalue() and "depth" in printed.getvalue()
    # Run again: nothing recomputed.
    again = runner.submit(scope["job"], executor="serial")
    assert not again.ran and again.finished == []


def test_the_api_page_example_uses_only_what_the_api_has() -> None:
    [example] = python_blocks(REPO / "docs" / "python-api.md")
    tree = ast.parse(example)
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "runner.api"
        for alias in node.names
    }
    assert imported and imported <= set(runner.api.__all__)
    attributes = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "runner"
    }
    assert attributes <= set(runner.__all__) | {"api"}
    page = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    for name in ("load_job", "plan", "submit", "status", "load", "overview", "report", "export"):
        assert f"`{name}(" in page and name in runner.__all__, name
