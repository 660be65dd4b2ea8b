"""Failure classes: what went wrong with a cell, and what the user can do about it.

Every failure record (`failed/<key>.json`) has an `error_class`, decided where the failure is
seen: by the cell itself (runner/run/cellrun.py) for what it raises, by the executor
(runner/run/executors.py) for a task that died or was stopped. `status` and the report count
failures by class and show the hint for each. Pure: no torch or Ray.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.job.cells import Cell

# class -> what to do; in the order they are shown.
FAILURE_HINTS: dict[str, str] = {
    "application": (
        "an error in the training code; the record holds its traceback. Fix the cause, then "
        "re-run with --retry-failed."
    ),
    "out_of_memory": (
        "the cell ran out of memory (Ray's memory monitor stopped it, or an allocation "
        "failed). Give it more: raise [resources] memory_gb (fewer cells then share a node; "
        "the cell keeps its key and its checkpoint) or use nodes with more memory, then "
        "re-run with --retry-failed."
    ),
    "worker_crash": (
        "the process running the cell died, and again on every retry (a crash in native "
        "code, the kernel's out-of-memory killer, a lost node). See the record, then re-run "
        "with --retry-failed; it continues from its checkpoint."
    ),
    "cancelled": (
        "the cell's task was cancelled from outside this sweep (Ctrl-C of the submit itself "
        "leaves cells to do, not failed). Re-run it with --retry-failed."
    ),
    "data": "its dataset is missing or damaged where it ran (see the message); fix it, then "
    "re-run with --retry-failed.",
    "storage": "a worker cannot see the results folder (see the message); fix the shared "
    "mount or set [resources] checkpoint_every = 0, then re-run with --retry-failed.",
    "unknown": "the failure record itself is unreadable; re-run with --retry-failed.",
}


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a failed allocation: Python's MemoryError (numpy's too), and torch's, which is
    a RuntimeError on CPU ("DefaultCPUAllocator: can't allocate memory") or an
    OutOfMemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "DefaultCPUAllocator: not enough memory" in text
    )


def class_counts(classes: list[str]) -> list[tuple[str, int]]:
    """(class, count) for every class present, in FAILURE_HINTS order, unknown ones last."""
    order = {name: i for i, name in enumerate(FAILURE_HINTS)}
    counts: dict[str, int] = {}
    for name in classes:
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def failure_record(
    cell: Cell, error_class: str, exc: BaseException, **context: Any
) -> dict[str, Any]:
    """What `failed/<key>.json` holds: the cell, the class, the error and its traceback, plus
    whatever the place that saw it knows (node, pid, seconds, ...)."""
    return {
        "cell_key": cell.key,
        "label": cell.label(),
        "values": dict(cell.values),
        "error_class": error_class,
        "error_type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        **context,
    }
