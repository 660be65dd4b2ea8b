"""Part of a job, or a variation of it, for this run only (pure: no torch, no Ray).

`--only AXIS=VALUE[,VALUE]` keeps the job's cells whose parameter has one of the values
(repeatable: a cell must pass every one); `--set PARAM=VALUE` then gives every kept cell
that parameter (a method's hyperparameter, `<method>.<param>`, only that method's cells).
A cell with a value set is a new cell: its key is its content's, so a smoke run with
`--set epochs=1` never overwrites (or counts as) the job's real cells.

Values are written as on the command line and typed by the parameter's declared kind
(`lr=1e-3` a float, `depth=3` an int, `true`/`false`, `none` for an optional parameter);
from Python, typed values work too. Every problem is reported at once, with the valid choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from methods.registry import METHODS
from runner.errors import SelectionError
from runner.job.cells import Cell
from runner.job.params import Param
from runner.job.spec import SHARED

# What a cell is: change it by picking other cells (--only), not by rewriting these.
NOT_SETTABLE = ("method", "dataset")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _params() -> dict[str, Param]:
    known = dict(SHARED)
    for info in METHODS.values():
        known.update({f"{info.name}.{p.name}": p for p in info.params})
    return known


def parse_pairs(texts: Iterable[str], flag: str) -> tuple[dict[str, str], list[str]]:
    """'NAME=VALUE' texts as {NAME: VALUE}, and the problems with them."""
    pairs: dict[str, str] = {}
    problems = []
    for text in texts:
        name, sep, value = text.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            problems.append(f"{flag} {text!r}: expected NAME=VALUE, e.g. {flag} depth=3")
        elif name in pairs:
            problems.append(f"{flag} {name}: given twice (list values as {name}=A,B)")
        else:
            pairs[name] = value
    return pairs, problems


def from_command_line(
    only: Sequence[str] | None, sets: Sequence[str] | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The `--only` and `--set` texts as mappings for `select`; a SelectionError lists what is
    malformed."""
    wanted, problems = parse_pairs(only or (), "--only")
    settings, more = parse_pairs(sets or (), "--set")
    if problems or more:
        raise SelectionError(problems + more)
    return wanted, settings


def typed(param: Param, name: str, value: Any, flag: str) -> tuple[Any, str | None]:
    """`value` (text from the command line, or a Python value) as the parameter's kind."""
    where = f"{flag} {name}"
    if isinstance(value, str) and param.kind is not str:
        text = value.strip().lower()
        if param.optional and text == "none":
            return None, None
        try:
            if param.kind is bool:
                if text not in _TRUE + _FALSE:
                    raise ValueError
                value = text in _TRUE
            else:
                value = param.kind(text)
        except ValueError:
            return None, f"{where}: {value!r} is not {param.kind.__name__}"
    if value is None and param.optional:
        return None, None
    problem = param.problem(value, where)
    return (None, problem) if problem else (param.normalise(value), None)


def select(
    cells: Sequence[Cell],
    only: Mapping[str, Sequence[Any] | str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> list[Cell]:
    """The cells `only` keeps, with `overrides` set; a SelectionError lists every problem (an
    unknown parameter, a value of the wrong kind, a value no cell has, a setting that applies
    to no kept cell)."""
    known = _params()
    problems: list[str] = []
    wanted: dict[str, list[Any]] = {}
    for name, values in (only or {}).items():
        param = known.get(name)
        if param is None:
            problems.append(f"--only {name}: unknown parameter; valid: {', '.join(known)}")
            continue
        raw = values.split(",") if isinstance(values, str) else list(values)
        accepted = []
        for value in raw:
            converted, problem = typed(param, name, value, "--only")
            if problem:
                problems.append(problem)
            else:
                accepted.append(converted)
        present = {c.values.get(name) for c in cells if name in c.values}
        missing = [v for v in accepted if v not in present]
        if missing:
            has = ", ".join(sorted(map(str, present))) or "none (no cell has this parameter)"
            problems.append(
                f"--only {name}: no cell of the job has {', '.join(map(str, missing))}; "
                f"the job has {has}"
            )
        wanted[name] = accepted
    settings: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        param = known.get(name)
        if name in NOT_SETTABLE:
            problems.append(f"--set {name}: cannot be set; pick cells with --only {name}=...")
        elif param is None:
            problems.append(f"--set {name}: unknown parameter; valid: {', '.join(known)}")
        else:
            converted, problem = typed(param, name, value, "--set")
            if problem:
                problems.append(problem)
            else:
                settings[name] = converted
    if problems:
        raise SelectionError(problems)

    kept = [c for c in cells if all(c.values.get(n) in vs for n, vs in wanted.items())]
    if not settings:
        return kept
    out: dict[str, Cell] = {}
    used: set[str] = set()
    for cell in kept:
        applicable = {
            n: v for n, v in settings.items() if "." not in n or n.startswith(cell.method + ".")
        }
        used.update(applicable)
        # Shared parameters join the label; a method's show there when not at their default.
        shown = cell.shown + tuple(n for n in applicable if "." not in n and n not in cell.shown)
        changed = replace(cell, values={**cell.values, **applicable}, shown=shown)
        out.setdefault(changed.key, changed)  # --set seed=0 merges the seeds: run once
    unused = sorted(set(settings) - used)
    if unused:
        raise SelectionError(
            [f"--set {n}: none of the selected cells runs {n.split('.')[0]}" for n in unused]
        )
    return list(out.values())
