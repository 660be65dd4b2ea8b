"""The layout shows the flow: packages import only the stages below them (as each package's
docstring says), no module imports itself back through others, no module outgrows a read,
and only the command line prints. Read from the source with ast: no imports run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOTS = ("runner", "methods")
MAX_LINES = 530  # "no module over about 500 lines"
# Modules allowed over the limit, and why (none at present).
LONG_BY_DESIGN: set[str] = set()

# What each part may import (besides itself), bottom to top. The package docstrings say the
# same in words; the cli and __main__ are the only importers of runner.cli, and runner/api is
# imported only by the command line (runner/__init__.py maps names to it lazily, by string).
LOWER = {"runner.errors", "runner.datasets"}
ALLOWED: dict[str, set[str]] = {
    "runner.errors": set(),
    "runner.datasets": {"runner.errors"},
    "runner.job": {"runner.errors", "runner.datasets", "methods"},
    "methods": {"runner.job"},  # only runner.job.params: see test below
    "runner.results": {"runner.errors", "runner.job", "methods"},
    "runner.run": LOWER | {"runner.job", "runner.results", "methods"},
    "runner.report": {"runner.errors", "runner.job", "runner.results", "methods"},
    "runner.clusters": LOWER | {"runner.job", "runner.results"},
    "runner.export": {"runner.errors", "runner.job", "runner.results", "runner.report"},
    "runner.bench": LOWER
    | {"runner.job", "runner.results", "runner.run", "runner.report", "methods"},
    "runner.api": LOWER
    | {
        "runner.job",
        "runner.results",
        "runner.run",
        "runner.report",
        "runner.export",
        "runner.clusters",
        "methods",
    },
    "runner.cli": LOWER
    | {
        "runner.api",
        "runner.job",
        "runner.results",
        "runner.run",
        "runner.report",
        "runner.export",
        "runner.clusters",
        "runner.bench",
        "methods",
    },
    "runner.__main__": {"runner.cli"},
    "runner": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for root in ROOTS for p in sorted((REPO / root).rglob("*.py"))}


def part_of(module: str) -> str:
    """The layer a module belongs to: methods, a runner subpackage or top-level module."""
    parts = module.split(".")
    return "methods" if parts[0] == "methods" else ".".join(parts[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import, at module level or inside functions,
    except under `if TYPE_CHECKING:` (annotations only, never run)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _is_type_checking(node.test):
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.extend((alias.name, node.lineno) for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:  # `from runner import api` imports a module
                full = f"{source}.{alias.name}"
                found.append((full if full in MODULES else source, node.lineno))

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    for name, line in found:
        while name not in MODULES and "." in name:
            name = name.rpartition(".")[0]
        if name in MODULES:
            yield name, line


GRAPH = {module: sorted({m for m, _ in imports_of(module)} - {module}) for module in MODULES}


def test_every_part_is_known_and_documents_what_it_may_import() -> None:
    assert {part_of(m) for m in MODULES} <= set(ALLOWED), {part_of(m) for m in MODULES}
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module.count(".") == 1:  # a runner subpackage
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert "may import" in doc.lower(), f"{path}: say what the package may import"


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = []
    for module in MODULES:
        for target, line in imports_of(module):
            source_part, target_part = part_of(module), part_of(target)
            if source_part != target_part and target_part not in ALLOWED[source_part]:
                wrong.append(f"{MODULES[module].relative_to(REPO)}:{line} imports {target}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_methods_use_only_the_parameter_declarations_of_the_runner() -> None:
    used = {t for m in MODULES if part_of(m) == "methods" for t in GRAPH[m]}
    assert {t for t in used if not t.startswith("methods")} <= {"runner.job.params"}


def find_cycle() -> list[str] | None:
    """A cycle in the module import graph, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 finished
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in GRAPH[module]:
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in MODULES:
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_module_imports_itself_back_through_others() -> None:
    cycle = find_cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_planted_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = dict(GRAPH)
    planted["runner.job.params"] = [*GRAPH["runner.job.params"], "runner.report.build"]
    monkeypatch.setattr(f"{__name__}.GRAPH", planted)
    cycle = find_cycle()
    assert cycle is not None and "runner.report.build" in cycle


def test_no_module_is_over_about_five_hundred_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in MODULES.values()
        if str(path.relative_to(REPO)) not in LONG_BY_DESIGN
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these by responsibility: {long}"


def test_only_the_command_line_prints() -> None:
    printing = []
    for module, path in MODULES.items():
        if part_of(module) in ("runner.cli", "runner.__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            if is_call and node.func.id == "print":  # type: ignore[attr-defined]
                printing.append(f"{path.relative_to(REPO)}:{node.lineno}")  # type: ignore[attr-defined]
        if any(name.startswith("rich") for name in _external_imports(path)):
            printing.append(f"{path.relative_to(REPO)} imports rich")
    assert not printing, printing


def _external_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names
