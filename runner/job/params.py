"""Declared parameters: the names a job file may use, their types, defaults and valid values.

Pure Python (no torch, no Ray), so that a job file is validated whole, with every problem
reported at once, before anything heavy is imported or started.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Param:
    """One parameter a cell is defined by."""

    name: str
    kind: type  # bool, int, float or str
    default: Any  # None: required (no default); for optional ones see `optional`
    doc: str
    choices: Collection[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    optional: bool = False  # may be left unset (value None): e.g. train_limit

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    def normalise(self, value: Any) -> Any:
        """Return the canonical form of a value already accepted by `problem` (ints as floats)."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def problem(self, value: Any, where: str) -> str | None:
        """Why `value` is not valid for this parameter, or None when it is."""
        kind_ok = isinstance(value, self.kind) and not (
            self.kind is not bool and isinstance(value, bool)
        )
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            kind_ok = True
        if not kind_ok:
            return f"{where}: expected {_KIND_NAMES[self.kind]}, got {value!r}"
        if self.kind is float and not math.isfinite(value):
            return f"{where}: expected a finite number, got {value!r}"
        if self.choices is not None and value not in self.choices:
            valid = ", ".join(repr(c) for c in self.choices)
            return f"{where}: {value!r} is not one of the valid choices: {valid}"
        if self.minimum is not None:
            if self.exclusive_minimum and value <= self.minimum:
                return f"{where}: must be greater than {self.minimum}, got {value!r}"
            if not self.exclusive_minimum and value < self.minimum:
                return f"{where}: must be at least {self.minimum}, got {value!r}"
        if self.maximum is not None and value > self.maximum:
            return f"{where}: must be at most {self.maximum}, got {value!r}"
        return None


def params_by_name(params: Sequence[Param]) -> dict[str, Param]:
    return {p.name: p for p in params}
