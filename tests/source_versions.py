"""The version guard's table: for the shared training loop and for each method, the version
that enters cell keys and a hash of the code behind it (tests/source_versions.json).

A cell's key holds `TRAINER_VERSION` (runner/job/cells.py) and its method's `version`
(methods/registry.py), bumped by hand when the code changes in a way that changes results.
A forgotten bump would mix old and new results in one folder under the same keys;
tests/test_version_guard.py fails instead, until the table is re-recorded in the commit that
bumps the version (or that decides the change cannot change results):

    python -m tests.source_versions --update

Hashes cover the code, not its comments, docstrings or formatting (the hash of the AST), of
each module and the modules of `methods/` it imports, directly or not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# One definition of the hash for this guard and for the rows' `trainer_sha256` and
# `method_sha256` columns: runner/run/provenance.py.
from runner.run.provenance import TRAINER_FILES, code_hash, method_files
from runner.run.provenance import closure as _closure
from runner.run.provenance import combined_hash as _combined_hash

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "tests" / "source_versions.json"
__all__ = [
    "TRAINER_FILES",
    "closure",
    "code_hash",
    "combined_hash",
    "current",
    "problems",
    "recorded",
]


def closure(files: tuple[str, ...]) -> list[str]:
    """The files and every methods/ module they import, transitively, in this checkout."""
    return _closure(files, REPO)


def combined_hash(files: list[str]) -> str:
    return _combined_hash(files, REPO)


def current() -> dict[str, dict[str, object]]:
    """What the table would record now: {"trainer": {...}, "method:<name>": {...}}."""
    sys.path.insert(0, str(REPO))
    from methods.registry import METHODS
    from runner.job.cells import TRAINER_VERSION

    entries: dict[str, dict[str, object]] = {}
    files = closure(TRAINER_FILES)
    entries["trainer"] = {
        "version": TRAINER_VERSION,
        "bump": "TRAINER_VERSION in runner/job/cells.py",
        "files": files,
        "sha256": combined_hash(files),
    }
    for name, info in sorted(METHODS.items()):
        # methods/__init__.py builds every method's model (and the CNN path, methods/cnn.py).
        files = closure(method_files(info.module))
        entries[f"method:{name}"] = {
            "version": info.version,
            "bump": f"version of {name!r} in methods/registry.py",
            "files": files,
            "sha256": combined_hash(files),
        }
    return entries


def recorded() -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, object]] = json.loads(TABLE.read_text(encoding="utf-8"))
    return data


def problems(now: dict[str, dict[str, object]], table: dict[str, dict[str, object]]) -> list[str]:
    """What is wrong between the code now and the recorded table, as messages that say
    what to do."""
    update = "python -m tests.source_versions --update"
    out = []
    for name in sorted(now.keys() - table.keys()):
        out.append(f"{name} has no recorded version: record it with `{update}`")
    for name in sorted(table.keys() - now.keys()):
        out.append(f"{name} is recorded but no longer exists: re-record with `{update}`")
    for name in sorted(now.keys() & table.keys()):
        new, old = now[name], table[name]
        if new["sha256"] == old["sha256"] and new["version"] == old["version"]:
            continue
        if new["version"] == old["version"]:
            out.append(
                f"{name}: the code of {', '.join(map(str, new['files']))} changed while its "
                f"version stayed {new['version']}. If the change can change any result, bump "
                f"the {new['bump']} (new cell keys: old results stay apart) and then run "
                f"`{update}`; if it cannot (a pure refactor), run `{update}` alone and say "
                "why in the commit message."
            )
        else:
            out.append(
                f"{name}: version {old['version']} -> {new['version']} but the table still "
                f"holds version {old['version']}: run `{update}` in the same commit."
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help="re-record the table")
    args = parser.parse_args(argv)
    now = current()
    if args.update:
        TABLE.write_text(json.dumps(now, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"recorded {len(now)} entries in {TABLE.relative_to(REPO)}")
        return 0
    found = problems(now, recorded())
    print("\n".join(found) if found else "the table matches the code")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
