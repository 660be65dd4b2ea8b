"""The README's Python example runs as printed (in a fresh folder, on the bundled digits), and
the Python API page's example names only what the API has."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

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
    [example] = python_blocks(REPO / "README.md", "From Python")
    assert len(example.strip().splitlines()) <= 12  # short enough to read at a glance
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README.md (From Python)", "exec"), scope)
    cells, epochs = scope["cells"], scope["epochs"]
    result = scope["result"]
    assert isinstance(result, runner.api.SweepResult) and result.exit_code == 0
    assert result.results == Path("results/notebook")  # under the current folder
    assert len(cells) == 4 and set(cells["method"]) == {"standard", "mc_approx"}  # type: ignore[index]
    # Every column, also a method's own ones (null for the other method's rows).
    assert "mc_approx.sample_ratio" in cells.columns  # type: ignore[attr-defined]
    assert cells["mc_approx.sample_ratio"].isna().sum() == 2  # type: ignore[index]
    assert len(epochs) == 4 * 2  # type: ignore[arg-type]
    table = printed.getvalue()
    assert "standard" in table and "mc_approx" in table and "depth" in table
    # Run again: nothing recomputed, as the README says.
    again = runner.submit(runner.load_job(scope["job"]), executor="serial")  # type: ignore[arg-type]
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
