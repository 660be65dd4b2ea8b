"""Why a finished cell stopped, and which cells count in means. Pure (no torch, no pandas).

A cell runs its job's epochs ("completed") unless one of two things stops it first:

- "diverged": its training loss became NaN or infinite. The trainer stops at once, before
  that step's update; the row keeps the epochs done and the step (`diverged_at_step`).
  Nothing recovers from a non-finite loss, so the epochs a cell would have run on add nothing
  but CPU time. Deterministic: the same cell diverges at the same step on every machine.
- "time_budget": the job's `[resources] max_cell_minutes` ran out; the cell stopped after the
  epoch that crossed it and its row holds the results of the epochs it had (`epochs_done`).
  Depends on the machine's speed.

Neither enters the cell key. The divergence stop changes nothing for a cell whose loss stays
finite (bit for bit), so the finished cells of a folder stay valid; a budget is a resource,
like the CPUs, not part of what a cell is. A cell stopped by a budget is finished for its
folder (rerun it with `submit --rerun-stopped`, after raising or removing the budget).

Means over seeds leave stopped cells out unless asked (their numbers describe a network that
did not train its epochs); tables say how many seeds were left out. Rows written before
`stop_reason` existed count as diverged when their `diverged` column says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

COMPLETED = "completed"
DIVERGED = "diverged"
TIME_BUDGET = "time_budget"

REASONS = {
    DIVERGED: "training loss became NaN or infinite: stopped at once",
    TIME_BUDGET: "stopped by the job's max_cell_minutes, with the epochs it had",
}


def stop_reason(row: Mapping[str, Any]) -> str:
    """A row's stop reason; for rows written before the column: diverged or completed."""
    reason = row.get("stop_reason")
    if isinstance(reason, str) and reason:
        return reason
    diverged = row.get("diverged")
    if diverged is None or (isinstance(diverged, float) and math.isnan(diverged)):
        return COMPLETED
    return DIVERGED if bool(diverged) else COMPLETED


def stopped_early(row: Mapping[str, Any]) -> bool:
    """The row is left out of means unless asked."""
    return stop_reason(row) != COMPLETED


def stop_text(reason: str, count: int = 0, of: int = 0) -> str:
    """How a stopped cell is marked wherever it is printed: '⏹ time_budget', or for a
    configuration '⏹ time_budget 1/3' (seeds left out of its means)."""
    if reason == COMPLETED or not reason:
        return ""
    share = f" {count}/{of}" if of > 1 else ""
    return f"⏹ {reason}{share}"
