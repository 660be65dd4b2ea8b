"""Tables of numbers with row and column headings, for rich, Markdown and tests (pure).

A leaf module: the report's analyses build `GridTable`s, the page and the CLI print them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float = math.nan  # sample standard deviation over seeds; NaN with one
    n: int = 0  # values averaged (seeds); 0 for a derived number (a ratio, a fitted c)
    # Set on an accuracy some of whose seeds did not learn: the value is marked wherever
    # printed (runner/results/learning.py), e.g. "⚠ chance 1/3".
    flag: str = ""


@dataclass
class GridTable:
    """A table of numbers with row and column headings, ready for rich or Markdown."""

    title: str
    row_header: str
    rows: list[str]
    columns: list[str]
    values: dict[tuple[str, str], Stat]
    fmt: str = ".4f"
    note: str = ""

    def get(self, row: str, column: str) -> Stat | None:
        return self.values.get((row, column))


def format_stat(stat: Stat | None, fmt: str) -> str:
    if stat is None or math.isnan(stat.mean):
        return "-"
    text = format(stat.mean, fmt)
    if not math.isnan(stat.std):
        text += " ± " + format(stat.std, fmt)
    if stat.flag:
        text += " " + stat.flag
    return text
