"""Which code produced a row: the project's version, the git commit and whether the work tree
was dirty (when run from a checkout), the versions of the libraries a result depends on, and
a hash of the source of the trainer and of the method that ran.

The source hash is the version guard's (tests/test_version_guard.py, tests/source_versions.py
import it from here): sha256 of each module's AST without docstrings, over the module and the
`methods/` modules it imports, directly or not. So a row's `trainer_sha256` equals the guard's
recorded hash of the trainer when the row was made by the code the table records.

Everything is gathered once per process (cached) and never fails a cell: what cannot be known
(no checkout, as in the Docker image; git missing or slow; a package not installed) is None.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

# The folder holding the `runner` and `methods` packages: the checkout, or site-packages.
REPO = Path(__file__).resolve().parents[2]
TRAINER_FILES = ("runner/run/trainer.py",)
# Libraries whose versions a row records (torch's is `torch_version`, with its build label).
PACKAGES = ("numpy", "ray", "torchvision", "pyarrow", "pandas", "numba")
GIT_TIMEOUT_SECONDS = 5.0


def code_hash(source: str) -> str:
    """sha256 of the module's AST with docstrings dropped: a change of comments, docstrings
    or layout leaves it; a change of code does not."""
    return _tree_hash(ast.parse(source))


def _tree_hash(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def _imported_names(tree: ast.Module) -> set[str]:
    """Every module a module imports (anywhere in it, lazily or not), `from methods import
    cnn` as methods.cnn."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "methods":
            names.update(f"methods.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@functools.cache
def _facts(path: Path, stamp: tuple[int, int]) -> tuple[frozenset[str], str]:
    """(the modules a file imports, its code hash), parsed once per version of the file
    (`stamp`: its modification time and size): methods share base.py, cnn.py, ..."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = frozenset(_imported_names(tree))  # before the docstrings go (imports stay)
    return names, _tree_hash(tree)


def _file_facts(path: Path) -> tuple[frozenset[str], str]:
    stat = path.stat()
    return _facts(path, (stat.st_mtime_ns, stat.st_size))


def _methods_imports(path: Path, root: Path) -> set[str]:
    """Files of methods/ that a module imports."""
    files = (name.replace(".", "/") + ".py" for name in _file_facts(path)[0])
    return {f for f in files if f.startswith("methods/") and (root / f).is_file()}


def closure(files: tuple[str, ...], root: Path = REPO) -> list[str]:
    """The files and every methods/ module they import, transitively (paths under `root`)."""
    seen: set[str] = set()
    todo = list(files)
    while todo:
        file = todo.pop()
        if file in seen or not (root / file).is_file():
            continue
        seen.add(file)
        todo.extend(_methods_imports(root / file, root) - seen)
    # The registry declares versions and defaults (defaults enter keys by value already).
    return sorted(seen - {"methods/registry.py"})


def combined_hash(files: list[str], root: Path = REPO) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.encode() + b"\0")
        digest.update(_file_facts(root / file)[1].encode())
    return digest.hexdigest()


def method_files(module: str) -> tuple[str, ...]:
    """What a method's code hash covers besides its imports: its module, and
    methods/__init__.py, which builds every method's model (and the CNN path)."""
    return (module.replace(".", "/") + ".py", "methods/__init__.py")


def _hash_of(files: tuple[str, ...]) -> str | None:
    if not all((REPO / f).is_file() for f in files):
        return None  # the sources are not beside the package (cannot happen when installed)
    try:
        return combined_hash(closure(files))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


@functools.cache
def trainer_hash() -> str | None:
    return _hash_of(TRAINER_FILES)


@functools.cache
def method_hash(method: str) -> str | None:
    from methods.registry import METHODS

    return _hash_of(method_files(METHODS[method].module))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or too slow
        return None
    return done.stdout if done.returncode == 0 else None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the running code comes from; (None, None) outside one
    (an installed copy, even one that happens to sit inside some other repository)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top.strip()).resolve() != REPO:
        return None, None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def _version(distribution: str) -> str | None:
    """The installed distribution's version, read from its metadata: cheap, and it imports
    nothing (a cell that never imports pandas does not pay for it)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _process_columns() -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "cpusweep_version": _version("cpusweep"),
        "git_commit": commit,
        "git_dirty": dirty,
        **{f"{name}_version": _version(name) for name in PACKAGES},
        "trainer_sha256": trainer_hash(),
    }


def provenance_columns(method: str) -> dict[str, Any]:
    """The provenance columns of a row of `method` (runner/results/schema.py)."""
    return {**_process_columns(), "method_sha256": method_hash(method)}
