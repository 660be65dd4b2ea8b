"""Expanding a validated job into its cells (pure: no torch, no Ray).

Order of resolution for each cell, later steps winning:
  parameter defaults -> [params] / [methods.X] scalars -> [grid] axis values
  -> [grid.X] axes of the cell's own method -> [[override]]s in file order.
Then [[exclude]]s drop the cells they match, and identical cells are merged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from methods.registry import METHODS
from runner.job.cells import Cell
from runner.job.spec import SHARED_PARAMS, JobSpec


@dataclass
class Expansion:
    cells: list[Cell]
    warnings: list[str] = field(default_factory=list)


def matches(values: Mapping[str, Any], clause: Mapping[str, list[Any]]) -> bool:
    """A cell matches when each listed parameter has one of the listed values.

    A cell that lacks a listed parameter (another method's hyperparameter) does not match.
    """
    return all(name in values and values[name] in accepted for name, accepted in clause.items())


def _method_axes(spec: JobSpec, method: str) -> dict[str, list[Any]]:
    prefix = method + "."
    return {k: v for k, v in spec.axes.items() if k.startswith(prefix)}


def expand(spec: JobSpec) -> Expansion:
    shared_axes = {k: v for k, v in spec.axes.items() if "." not in k}
    names = list(shared_axes)
    combos = itertools.product(*(shared_axes[n] for n in names)) if names else [()]

    override_hits = [0] * len(spec.overrides)
    override_applied: list[set[str]] = [set() for _ in spec.overrides]
    exclude_hits = [0] * len(spec.excludes)
    methods_seen: set[str] = set()
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    merged = 0

    for combo in combos:
        base: dict[str, Any] = {p.name: p.default for p in SHARED_PARAMS}
        base.update({k: v for k, v in spec.params.items() if "." not in k})
        base.update(zip(names, combo, strict=True))
        method = base["method"]
        methods_seen.add(method)
        info = METHODS[method]
        for hyper in info.params:
            base[f"{method}.{hyper.name}"] = spec.params.get(
                f"{method}.{hyper.name}", hyper.default
            )
        maxes = _method_axes(spec, method)
        mnames = list(maxes)
        for mcombo in itertools.product(*(maxes[n] for n in mnames)) if mnames else [()]:
            before = dict(base)
            before.update(zip(mnames, mcombo, strict=True))
            values = dict(before)
            for i, override in enumerate(spec.overrides):
                if matches(before, override.where):
                    override_hits[i] += 1
                    # A `set` of another method's hyperparameter does not apply here.
                    applied = {
                        k: v
                        for k, v in override.set.items()
                        if "." not in k or k.startswith(method + ".")
                    }
                    values.update(applied)
                    override_applied[i].update(applied)
            excluded = False
            for i, clause in enumerate(spec.excludes):
                if matches(values, clause):
                    exclude_hits[i] += 1
                    excluded = True
            if excluded:
                continue
            cell = Cell(values=values, torch_threads=spec.resources.torch_threads)
            if cell.key in seen:
                merged += 1
                continue
            seen[cell.key] = len(cells)
            cells.append(cell)

    # Label every cell with the job's shared grid axes, so that two cells differing only in,
    # say, lr do not print alike (method hyperparameters show when not at their default).
    if names:
        cells = [replace(c, shown=tuple(names)) for c in cells]
    warnings: list[str] = []
    for i, hits in enumerate(override_hits):
        if hits == 0:
            warnings.append(f"override[{i}] matches no cell (where = {spec.overrides[i].where})")
            continue
        for name in sorted(set(spec.overrides[i].set) - override_applied[i]):
            warnings.append(
                f"override[{i}].set.{name}: none of the cells it matches is a "
                f"{name.split('.', 1)[0]} cell, so it never applies"
            )
    for i, hits in enumerate(exclude_hits):
        if hits == 0:
            warnings.append(f"exclude[{i}] matches no cell ({spec.excludes[i]})")
    for flat in spec.axes:
        if "." in flat and flat.split(".", 1)[0] not in methods_seen:
            warnings.append(f"grid.{flat}: no cell uses method {flat.split('.', 1)[0]!r}")
    for flat in spec.params:
        if "." in flat and flat.split(".", 1)[0] not in methods_seen:
            warnings.append(f"methods.{flat}: no cell uses method {flat.split('.', 1)[0]!r}")
    if merged:
        warnings.append(
            f"{merged} cells were identical to others after overrides; each is run once"
        )
    if not cells:
        warnings.append("the job has no cells (every combination was excluded)")
    return Expansion(cells=cells, warnings=warnings)
