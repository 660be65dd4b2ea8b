"""Did a cell learn? Results at chance or diverged, told apart from normal ones (pure Python).

A cell whose training loss became NaN or infinite, or whose test accuracy is within noise of
chance, is never shown like a normal result: the live output, `status`, the summary tables
and the report flag it, and say why.

Chance is the accuracy of always predicting the test set's most common class (1/classes on a
balanced test set; read from the confusion matrix, so no assumption about balance is made).
"Within noise" is a one-sided exact binomial test: the cell is flagged when, with n test
examples, an accuracy at least as high as the cell's has probability above `ALPHA` for a
predictor at chance. A predictor at chance is therefore flagged with probability at least
1 - ALPHA = 0.999. On the digits' 360 test images (most common class 11.9%) a cell needs
17.8% to pass; on MNIST's 10000 (11.35%), 12.4%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 1e-3

# The values of a row's `learning_flag`.
LEARNED = ""
CHANCE = "chance"
DIVERGED = "diverged"

REASONS = {
    CHANCE: "test accuracy within noise of chance",
    DIVERGED: "training loss became NaN or infinite",
}


@dataclass(frozen=True)
class Verdict:
    flag: str  # LEARNED, CHANCE or DIVERGED
    chance_accuracy: float  # always predicting the test set's most common class
    p_value: float  # P(accuracy >= the cell's | a predictor at chance); NaN without a test

    @property
    def learned(self) -> bool:
        return self.flag == LEARNED


def binomial_upper_tail(successes: int, trials: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, p), exactly (summed in log space)."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(trials + 1)
    total = 0.0
    largest = -math.inf
    for k in range(successes, trials + 1):
        log_term = log_n - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        log_term += k * log_p + (trials - k) * log_q
        largest = max(largest, log_term)
        total += math.exp(log_term)
        # Past the mode the terms only shrink: stop once they no longer count.
        if k > trials * p and log_term < largest - 40:
            break
    return min(1.0, total)


def verdict(confusion: Sequence[Sequence[int]], diverged: bool) -> Verdict:
    """The verdict on a finished cell from its test confusion matrix ([true][predicted])."""
    rows = [sum(int(v) for v in row) for row in confusion]
    n = sum(rows)
    if n == 0:
        return Verdict(DIVERGED if diverged else LEARNED, math.nan, math.nan)
    correct = sum(int(confusion[i][i]) for i in range(len(confusion)))
    chance = max(rows) / n
    p_value = binomial_upper_tail(correct, n, chance)
    if diverged:
        flag = DIVERGED
    elif p_value > ALPHA:
        flag = CHANCE
    else:
        flag = LEARNED
    return Verdict(flag, chance, p_value)


def describe(flag: str) -> str:
    """A short human reason for a flag ('' for a cell that learned)."""
    return REASONS.get(flag, "")


def row_verdict(row: Mapping[str, Any]) -> Verdict:
    """The verdict a result row records, or (rows written before it was recorded) the one its
    confusion matrix and divergence give."""
    flag = row.get("learning_flag")
    if isinstance(flag, str):
        return Verdict(
            flag, _number(row.get("chance_accuracy")), _number(row.get("chance_p_value"))
        )
    return verdict(row.get("confusion_matrix") or [], bool(row.get("diverged")))


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def flag_text(flag: str, seeds: int = 0, of: int = 0) -> str:
    """How a flagged value is marked wherever it is printed: '⚠ chance', or with seeds
    '⚠ chance 1/3' when only some seeds of a configuration are flagged."""
    if not flag:
        return ""
    share = f" {seeds}/{of}" if of > 1 and seeds != of else ""
    return f"⚠ {flag}{share}"
