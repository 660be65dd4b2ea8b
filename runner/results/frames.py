"""A results folder as two pandas DataFrames: `load_frames(root) -> (cells, epochs)`.

`cells`: one row per finished cell, every column of `result_schema()` (parameters, measured
columns, `confusion_matrix` and `history`), then any column an older file holds that the
schema no longer knows. Files written before every file carried the full schema are promoted
to it, with nulls in the columns they lack. `epochs`: one row per finished cell and epoch (the
long form of `history`): `cell_key`, every parameter column (to group by), the per-epoch
fields of EPOCH_FIELDS, then one float64 `stat.<name>` column per instrumentation value any
cell reports, sorted by name, null where a cell does not report it.

Dtypes: every column is `pandas.ArrowDtype(<its Arrow type>)`, e.g. `double[pyarrow]`,
`int64[pyarrow]`, `bool[pyarrow]`, `string[pyarrow]`, and list/struct types for the nested
columns, so a column's dtype is read off runner/results/schema.py. Chosen over numpy float64
with NaN and over pandas' own nullable dtypes (Int64, Float64, boolean, string) because it is
the only choice that keeps both distinctions the results make: null ("does not apply": another
method's hyperparameter, no SLURM) is not NaN (a measured value: a diverged loss) — converting
Arrow to Float64 turns NaN into NA, numpy float64 turns null into NaN — and integers and
booleans with nulls keep their type; nested columns keep theirs too. For numpy, convert a
column explicitly: `cells["test_accuracy"].to_numpy(dtype=float, na_value=np.nan)`.

An empty or unfinished sweep (even a folder with only job.toml, or an empty folder) gives both
frames with every column and zero rows. A result file that cannot count (truncated, damaged,
another cell's) is skipped, as `scan()` skips it: `Frames.unreadable` says which and why.

May import `runner.results` and `runner.job`; the report imports `epochs_table` from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from runner.results.schema import EPOCH_FIELDS, conform, parameter_fields, result_schema
from runner.results.store import ResultsStore

log = logging.getLogger("cpusweep")

_EPOCH_SCALARS = [(name, dtype) for name, dtype in EPOCH_FIELDS if name != "stats"]


def epochs_table(cells: pa.Table) -> pa.Table:
    """Long form of every cell's history: one row per (cell, epoch), fixed columns first
    (`cell_key`, then the history's fields in schema order), then `stat.<name>` columns
    sorted by name (float64, null where a cell does not report that value)."""
    keys = cells.column("cell_key").to_pylist()
    histories = cells.column("history").to_pylist()
    fixed: dict[str, list[Any]] = {"cell_key": []} | {name: [] for name, _ in _EPOCH_SCALARS}
    stats: dict[str, dict[int, float]] = {}
    n = 0
    for key, history in zip(keys, histories, strict=True):
        for entry in history or []:
            fixed["cell_key"].append(key)
            for name, _ in _EPOCH_SCALARS:
                fixed[name].append(entry.get(name))
            for stat in entry.get("stats") or []:
                stats.setdefault(f"stat.{stat['name']}", {})[n] = stat["value"]
            n += 1
    fields = [pa.field("cell_key", pa.string())] + [pa.field(n_, t) for n_, t in _EPOCH_SCALARS]
    arrays = [pa.array(fixed[f.name], type=f.type) for f in fields]
    for name in sorted(stats):
        values = stats[name]
        fields.append(pa.field(name, pa.float64()))
        arrays.append(pa.array([values.get(i) for i in range(n)], type=pa.float64()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class Frames(tuple[pd.DataFrame, pd.DataFrame]):
    """`(cells, epochs)`, unpacked as a pair, and the result files that were skipped."""

    unreadable: dict[Path, str]  # result file -> why it does not count

    def __new__(
        cls,
        cells: pd.DataFrame,
        epochs: pd.DataFrame,
        unreadable: Mapping[Path, str] | None = None,
    ) -> Frames:
        frames = super().__new__(cls, (cells, epochs))
        frames.unreadable = dict(unreadable or {})
        return frames

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.unreadable)  # for copy and pickle

    @property
    def cells(self) -> pd.DataFrame:
        return self[0]

    @property
    def epochs(self) -> pd.DataFrame:
        return self[1]


def cells_table(tables: dict[Path, pa.Table]) -> tuple[pa.Table, dict[Path, str]]:
    """Result files' tables as one table in `result_schema()` (plus columns it does not
    know), and why a file's table could not be promoted to it."""
    conformed: list[pa.Table] = []
    problems: dict[Path, str] = {}
    for path, table in tables.items():
        try:
            conformed.append(conform(table))
        except ValueError as exc:
            problems[path] = f"does not fit the result schema: {exc}"
    if not conformed:
        return result_schema().empty_table(), problems
    return pa.concat_tables(conformed, promote_options="permissive"), problems


def epochs_long(cells: pa.Table) -> pa.Table:
    """epochs_table() with every parameter column after `cell_key`, to group epochs by."""
    epochs = epochs_table(cells)
    names = [f.name for f in parameter_fields()]
    parents = pc.list_parent_indices(cells.column("history").combine_chunks())
    params = cells.select(names).take(parents)
    arrays = [epochs.column(0), *params.columns, *epochs.columns[1:]]
    fields = [epochs.schema.field(0), *params.schema, *list(epochs.schema)[1:]]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def load_frames(root: str | os.PathLike[str]) -> Frames:
    """The results folder `root` as `(cells, epochs)` DataFrames (see the module docstring).

    A ResultsError when `root` does not exist, or holds things but no results folder."""
    store = ResultsStore(root)
    if not (store.root.is_dir() and not any(store.root.iterdir())):
        store.check_readable_folder()
    tables, unreadable = store.read_tables()
    table, problems = cells_table(tables)
    unreadable.update(problems)
    if unreadable:
        log.warning(
            "%d result file(s) skipped: %s",
            len(unreadable),
            "; ".join(f"{p.name}: {why}" for p, why in sorted(unreadable.items())),
        )
    cells = table.to_pandas(types_mapper=pd.ArrowDtype)
    epochs = epochs_long(table).to_pandas(types_mapper=pd.ArrowDtype)
    return Frames(cells, epochs, dict(sorted(unreadable.items())))
