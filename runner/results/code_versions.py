"""Which code a folder's rows come from, and whether they mix: the rows' provenance columns
(git commit, dirty work tree, the trainer's and the method's code hashes; runner/run/
provenance.py) grouped, with the words `status` and `report` both show.

A code version is one (git commit, dirty, trainer hash) with the method code hashes of its
rows. A folder mixes code when its rows come from more than one, or when one method ran with
more than one code hash. A row without provenance (written before these columns) is of
unknown code: it counts as a version of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

PROVENANCE_KEYS = ("git_commit", "git_dirty", "trainer_sha256", "method", "method_sha256")
_SHORT = 12  # characters of a commit or hash shown


@dataclass(frozen=True)
class CodeVersion:
    git_commit: str | None
    git_dirty: bool | None
    trainer_sha256: str | None
    rows: int
    # (method, its code hash, rows) for the methods of this version's rows, by name
    methods: tuple[tuple[str, str | None, int], ...] = field(default=())

    @property
    def unknown(self) -> bool:
        """Rows written before rows recorded their code."""
        return self.git_commit is None and self.trainer_sha256 is None

    def describe(self) -> str:
        if self.unknown:
            return f"unknown code (rows written before they recorded it): {self.rows} row(s)"
        commit = (
            "no git checkout"
            if self.git_commit is None
            else f"commit {self.git_commit[:_SHORT]}"
            + (" (dirty work tree)" if self.git_dirty else "")
        )
        methods = ", ".join(f"{name} {_short(sha)} ({n})" for name, sha, n in self.methods)
        return (
            f"{commit}, trainer {_short(self.trainer_sha256)}: {self.rows} row(s); "
            f"methods {methods}"
        )


def _short(sha: str | None) -> str:
    return "unknown" if sha is None else sha[:_SHORT]


def code_versions(rows: Iterable[Mapping[str, Any]]) -> list[CodeVersion]:
    """The distinct code versions of `rows` (dicts with PROVENANCE_KEYS; missing keys count
    as unknown), most rows first."""
    by_version: dict[tuple[Any, ...], Counter[tuple[str, str | None]]] = {}
    for row in rows:
        commit, trainer = row.get("git_commit"), row.get("trainer_sha256")
        # Dirty is only meaningful with a commit.
        dirty = row.get("git_dirty") if commit is not None else None
        methods = by_version.setdefault((commit, dirty, trainer), Counter())
        methods[(str(row.get("method")), row.get("method_sha256"))] += 1
    versions = [
        CodeVersion(
            commit,
            dirty,
            trainer,
            sum(methods.values()),
            tuple((m, sha, n) for (m, sha), n in sorted(methods.items(), key=_method_order)),
        )
        for (commit, dirty, trainer), methods in by_version.items()
    ]
    return sorted(versions, key=lambda v: (-v.rows, v.describe()))


def table_code_versions(table: pa.Table | None) -> list[CodeVersion]:
    """The code versions of a folder's rows (`ResultsStore.read_results()`): files of any
    age, a column none of them has counts as unknown."""
    if table is None:
        return []
    present = [c for c in PROVENANCE_KEYS if c in table.column_names]
    return code_versions(table.select(present).to_pylist())


def _method_order(item: tuple[tuple[str, str | None], int]) -> tuple[str, str]:
    (method, sha), _ = item
    return method, sha or ""


def code_hashes_differ(versions: list[CodeVersion]) -> bool:
    """Some rows ran another trainer's or method's code than others (unknown counts)."""
    if any(v.unknown for v in versions) and len(versions) > 1:
        return True
    trainers = {v.trainer_sha256 for v in versions}
    method_hashes: dict[str, set[str | None]] = {}
    for v in versions:
        for method, sha, _ in v.methods:
            method_hashes.setdefault(method, set()).add(sha)
    return len(trainers) > 1 or any(len(s) > 1 for s in method_hashes.values())


def mixes_code(versions: list[CodeVersion]) -> bool:
    """The rows come from more than one code version, or a method from more than one hash."""
    return len(versions) > 1 or code_hashes_differ(versions)


def mix_lines(versions: list[CodeVersion]) -> list[str]:
    """What `status` and `report` say about a folder that mixes code: a headline, why it
    matters, then one line per code version. Empty when the rows come from one code."""
    if not mixes_code(versions):
        return []
    rows = sum(v.rows for v in versions)
    headline = (
        f"this folder mixes rows from different code: {rows} rows from "
        f"{len(versions)} code version(s)"
    )
    if code_hashes_differ(versions):
        why = (
            "the trainer's or a method's code differs between them (or is unknown), so their "
            "results may not be comparable: check which rows ran which code before reading "
            "them together"
        )
    else:
        why = "the trainer's and every method's code hashes agree; only the commit differs"
    return [headline, why, *(v.describe() for v in versions)]
