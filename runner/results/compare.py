"""Comparing a re-run cell's row with the row its results folder holds, bit for bit: what
`runner verify` (runner/api/verify.py) reports. Pure (no torch, no I/O).

Compared: the columns of COMPARED_FIELDS, those of NEWER_FIELDS when both rows have them, every
epoch's values in `history` but its times (`*_seconds`), the method's instrumentation (`stats`)
but its times, and the parameter columns against the cell's recorded content. Never times,
nodes, pids, dates or provenance. Floats exactly; NaN equals NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.job.cells import Cell

# The columns a re-run must reproduce exactly; never times, nodes, pids, dates or provenance.
COMPARED_FIELDS = (
    "weights_sha256",
    "test_accuracy",
    "test_loss",
    "approx_test_accuracy",
    "val_accuracy",
    "best_val_accuracy",
    "final_train_loss",
    "confusion_matrix",
    "epochs_done",
    "steps",
    "n_parameters",
    "learning_flag",
)
# Columns newer than some rows (runner/results/stops.py): compared when both rows have them.
NEWER_FIELDS = ("stop_reason", "diverged_at_step")


@dataclass(frozen=True)
class Difference:
    """One value the re-run did not reproduce: `field` names the column, or the epoch and
    value of `history` ("epoch 2 val_accuracy", "epoch 2 stat rebuilds")."""

    field: str
    recorded: Any
    rerun: Any


def same(a: Any, b: Any) -> bool:
    """Equal bit for bit, with NaN equal to NaN (floats exactly, -0.0 apart from 0.0)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if isinstance(a, float) and isinstance(b, float):
            if math.isnan(a) or math.isnan(b):
                return math.isnan(a) and math.isnan(b)
            return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
        return type(a) is type(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def _timing(stat: str) -> bool:
    return stat.endswith("_seconds")  # e.g. ALSH-APPROX's rebuild_seconds


def _stats(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {s["name"]: s["value"] for s in entry.get("stats") or [] if not _timing(s["name"])}


def _history_differences(recorded: list[Any], rerun: list[Any]) -> list[Difference]:
    """Per epoch: every value but times (epoch, train_loss, val_accuracy, val_loss, ...)
    and the method's instrumentation (`stats`) but its times."""
    found = []
    if len(recorded) != len(rerun):
        found.append(Difference("history", f"{len(recorded)} epochs", f"{len(rerun)} epochs"))
    for i, (old, new) in enumerate(zip(recorded, rerun, strict=False), start=1):
        for name in old:
            if name == "stats" or _timing(name):
                continue
            if not same(old[name], new.get(name)):
                found.append(Difference(f"epoch {i} {name}", old[name], new.get(name)))
        old_stats, new_stats = _stats(old), _stats(new)
        for name in sorted(old_stats.keys() | new_stats.keys()):
            a, b = old_stats.get(name), new_stats.get(name)
            if name not in old_stats or name not in new_stats or not same(a, b):
                found.append(Difference(f"epoch {i} stat {name}", a, b))
    return found


def differences(
    recorded: Mapping[str, Any], rerun: Mapping[str, Any], stop_reason: bool = True
) -> list[Difference]:
    """Every compared value of `recorded` (a result row as stored) that `rerun` does not
    reproduce. A column the recorded row lacks (a file older than it) is not compared, nor
    one of NEWER_FIELDS that either row lacks, nor `stop_reason` without `stop_reason` (a
    re-run capped at the epoch a time budget stopped the row at completes)."""
    found = [
        Difference(name, recorded[name], rerun.get(name))
        for name in COMPARED_FIELDS
        if name in recorded and not same(recorded[name], rerun.get(name))
    ]
    for name in NEWER_FIELDS:
        if name not in recorded or name not in rerun or (name == "stop_reason" and not stop_reason):
            continue
        old, new = recorded[name], rerun[name]
        if not (name == "stop_reason" and (old is None or new is None)) and not same(old, new):
            found.append(Difference(name, old, new))
    if "history" in recorded:
        found += _history_differences(recorded["history"] or [], rerun.get("history") or [])
    return found


def parameter_differences(recorded: Mapping[str, Any], cell: Cell) -> list[Difference]:
    """Parameter columns that say something else than the cell's recorded content."""
    found = []
    for name, value in sorted(cell.values.items()):
        if name not in recorded:
            continue
        stored = recorded[name]
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(stored, float):
            value = float(value)  # a job file's `lr = 1` in a float column
        if not same(stored, value):
            found.append(Difference(f"{name} (parameter column)", stored, value))
    return found
