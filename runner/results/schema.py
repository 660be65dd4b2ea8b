"""The result schema: what every cell's result file holds. Pure (pyarrow and the parameter
declarations only; no torch, no pandas).

The promise. Every result file written by this code (`cells/<key>.parquet`, one row) has the
same Arrow schema, `result_schema()`, column for column and type for type:

- `cell_key`, `status`, then one column per parameter by its job-file name: the shared ones
  (`method`, `dataset`, `depth`, `batch_size`, `lr`, ...; runner/job/spec.py) and every
  method's hyperparameters as `<method>.<param>` (methods/registry.py), each typed by its
  declared kind (bool, int64, float64, string);
- the measured columns (`MEASURED_FIELDS` below), with the types written there;
- the nested columns `confusion_matrix` (list<list<int64>>, [true][predicted]) and `history`
  (list<struct<EPOCH_FIELDS>>, one entry per epoch).

A column that does not apply to a cell is null: another method's hyperparameters, an unset
`train_limit`, `approx_test_accuracy` outside ALSH-APPROX, `slurm_*` outside SLURM. A null is
not a NaN: NaN is a measured value (a diverged loss, a p-value without a test). So pandas,
pyarrow.dataset, DuckDB or Polars read a folder of these files whole, with no column lost.

One thing has no single column type: the methods' per-epoch instrumentation, whose names
depend on the method and the depth. It is stored long form, inside `history`, as
`stats: list<struct<name: string, value: float64>>`; runner/results/frames.py widens it to one
float64 `stat.<name>` column per name present.

Files written before this promise (narrower: only the columns their cell had, a null-typed
column for an unset value) stay valid as they are, digest included; readers promote them to
this schema (`conform`), with nulls in the columns they lack.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import pyarrow as pa

from methods.registry import METHODS
from runner.job.spec import SHARED_PARAMS

# One entry per epoch, in order.
EPOCH_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("epoch", pa.int64()),
    ("train_loss", pa.float64()),  # mean training loss over the epoch's batches
    ("val_accuracy", pa.float64()),  # 0..1, exact (evaluation-mode) network
    ("val_loss", pa.float64()),
    ("train_seconds", pa.float64()),  # data + forward + backward + step + upkeep
    ("cumulative_train_seconds", pa.float64()),
    ("data_seconds", pa.float64()),
    ("forward_seconds", pa.float64()),
    ("backward_seconds", pa.float64()),
    ("step_seconds", pa.float64()),
    ("upkeep_seconds", pa.float64()),
    ("eval_seconds", pa.float64()),  # validation pass and probe; not training time
    ("steps", pa.int64()),  # optimizer updates; fewer in an epoch a divergence cut short
    # Method instrumentation, long form: e.g. {"name": "probe_rel_error.layer2", "value": 0.3}
    ("stats", pa.list_(pa.struct([("name", pa.string()), ("value", pa.float64())]))),
)
EPOCH_TYPE = pa.struct(list(EPOCH_FIELDS))
HISTORY_TYPE = pa.list_(EPOCH_TYPE)
CONFUSION_TYPE = pa.list_(pa.list_(pa.int64()))  # [true label][predicted label] counts

NESTED_COLUMNS: dict[str, pa.DataType] = {
    "confusion_matrix": CONFUSION_TYPE,
    "history": HISTORY_TYPE,
}

_INT, _FLOAT, _BOOL, _STR = pa.int64(), pa.float64(), pa.bool_(), pa.string()

# Columns every row has besides the parameters (documented in docs/results.md), with their types.
MEASURED_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("cell_key", _STR),
    ("status", _STR),
    ("test_accuracy", _FLOAT),
    ("test_loss", _FLOAT),
    ("val_accuracy", _FLOAT),
    ("best_val_accuracy", _FLOAT),
    ("final_train_loss", _FLOAT),
    ("diverged", _BOOL),
    ("learning_flag", _STR),  # "" learned; "chance" or "diverged" (runner/results/learning.py)
    ("chance_accuracy", _FLOAT),
    ("chance_p_value", _FLOAT),
    ("approx_test_accuracy", _FLOAT),  # the network as it trains (ALSH: its tables), or null
    # Why the cell stopped: "completed", "diverged", "time_budget" (runner/results/stops.py)
    ("stop_reason", _STR),
    ("diverged_at_step", _INT),  # the step whose loss was not finite; null otherwise
    ("max_cell_minutes", _FLOAT),  # the time budget the cell ran under; null: none
    ("epochs_done", _INT),
    ("steps", _INT),
    ("optimizer_implementation", _STR),  # e.g. "adam:fused", "sgd:for-loop", "adam:lazy-fused"
    ("train_seconds", _FLOAT),
    ("seconds_per_epoch", _FLOAT),
    ("data_seconds", _FLOAT),
    ("forward_seconds", _FLOAT),
    ("backward_seconds", _FLOAT),
    ("step_seconds", _FLOAT),
    ("upkeep_seconds", _FLOAT),
    ("eval_seconds", _FLOAT),
    ("load_seconds", _FLOAT),
    ("checkpoint_seconds", _FLOAT),  # writing mid-cell checkpoints, this run only
    ("wall_seconds", _FLOAT),  # this run only: a resumed cell's earlier runs are not in it
    ("resumed_from_epoch", _INT),  # 0: from scratch; e: continued from a checkpoint after e
    ("resumes", _INT),  # how many times the cell continued from a checkpoint
    ("train_size", _INT),
    ("val_size", _INT),
    ("test_size", _INT),
    ("input_features", _INT),
    ("classes", _INT),
    ("norm_mean", _FLOAT),
    ("norm_std", _FLOAT),
    ("split_fingerprint", _STR),
    ("n_parameters", _INT),
    ("weights_sha256", _STR),
    ("torch_threads", _INT),
    ("torch_interop_threads", _INT),
    ("os_threads", _INT),
    ("cpu_affinity", _STR),  # the cores the process may run on, "0,1,5"
    ("pinned_cores", _STR),  # the cores the cell was pinned to, "" when unpinned
    ("cpu_model", _STR),
    ("omp_num_threads", _STR),  # the environment variable as set, "" when unset
    ("allocator", _STR),
    ("thread_pools", _STR),  # JSON: each BLAS/OpenMP pool threadpoolctl found, with its size
    ("max_pool_threads", _INT),  # the largest of those pools' sizes
    ("requested_torch_threads", _INT),
    ("node", _STR),
    ("hostname", _STR),
    ("pid", _INT),
    ("slurm_job_id", _STR),  # SLURM_JOB_ID where the cell ran, null outside SLURM
    ("slurm_node", _STR),  # SLURMD_NODENAME, the SLURM node name; null outside SLURM
    ("method_version", _INT),
    ("trainer_version", _INT),
    ("dataset_version", _INT),
    ("torch_version", _STR),
    ("python_version", _STR),
    ("platform", _STR),
    # Provenance (runner/run/provenance.py), outside the cell key; null where unknown: a row
    # written before these columns, a run outside a git checkout, a package not installed.
    ("cpusweep_version", _STR),  # the installed project's version
    ("git_commit", _STR),  # HEAD of the checkout the code ran from
    ("git_dirty", _BOOL),  # the checkout had uncommitted changes to tracked files
    ("numpy_version", _STR),
    ("ray_version", _STR),
    ("torchvision_version", _STR),
    ("pyarrow_version", _STR),
    ("pandas_version", _STR),
    ("numba_version", _STR),  # compiles ALSH-APPROX's hashing and batch-1 step
    ("trainer_sha256", _STR),  # the version guard's hash of the training loop's code
    ("method_sha256", _STR),  # the version guard's hash of the method's code
    ("started_at", _STR),  # UTC, ISO 8601 with milliseconds and offset, as written
    ("finished_at", _STR),
    ("cell_json", _STR),  # the cell as the worker received it (canonical JSON)
    ("confusion_matrix", CONFUSION_TYPE),
    ("history", HISTORY_TYPE),
)
MEASURED_COLUMNS = tuple(name for name, _ in MEASURED_FIELDS)

_KIND_TYPES: dict[type, pa.DataType] = {bool: _BOOL, int: _INT, float: _FLOAT, str: _STR}


def parameter_fields() -> tuple[pa.Field, ...]:
    """One nullable field per declared parameter, by its job-file name: the shared parameters
    in declaration order, then each method's (registry order) as `<method>.<param>`."""
    declared = [(p.name, p.kind) for p in SHARED_PARAMS]
    for info in METHODS.values():
        declared += [(f"{info.name}.{p.name}", p.kind) for p in info.params]
    return tuple(pa.field(name, _KIND_TYPES[kind]) for name, kind in declared)


@functools.cache
def result_schema() -> pa.Schema:
    """The schema of every result file: `cell_key`, `status`, the parameters, then the other
    measured columns in MEASURED_FIELDS order. Every field is nullable."""
    measured = [pa.field(name, dtype) for name, dtype in MEASURED_FIELDS]
    fields = [*measured[:2], *parameter_fields(), *measured[2:]]
    names = [f.name for f in fields]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"a parameter has the name of a measured column: {clashes}")
    return pa.schema(fields)


def _value_problem(name: str, value: object, dtype: pa.DataType) -> str | None:
    """Why `value` does not fit a scalar column of type `dtype`, or None. Accepted: None, a
    value of the type itself (of any width), and an integer for a float column (as a job
    file's `lr = 1`); not a float for an integer column, nor a number for a string."""
    if value is None:
        return None
    try:
        inferred = pa.array([value]).type
    except (pa.ArrowException, ValueError, TypeError) as exc:
        return f"column {name!r}: {value!r} is not an Arrow value ({exc})"
    if inferred == dtype or pa.types.is_null(inferred):
        return None
    if pa.types.is_integer(dtype) and pa.types.is_integer(inferred):
        return None  # e.g. a numpy integer
    if pa.types.is_floating(dtype) and (
        pa.types.is_integer(inferred) or pa.types.is_floating(inferred)
    ):
        return None
    return f"column {name!r}: expected {dtype}, got {value!r} ({inferred})"


def row_to_table(row: Mapping[str, object]) -> pa.Table:
    """One result row as a one-row table in `result_schema()`: every column, null where the
    row has none. A ValueError names what does not fit: a missing measured column, a column
    or history field outside the schema, or a value of another type."""
    schema = result_schema()
    missing = set(MEASURED_COLUMNS) - set(row)
    if missing:
        raise ValueError(f"result row lacks columns: {sorted(missing)}")
    extra = set(row) - set(schema.names)
    if extra:
        raise ValueError(f"result row has columns outside the schema: {sorted(extra)}")
    for entry in row["history"]:  # type: ignore[attr-defined]
        extra = set(entry) - {name for name, _ in EPOCH_FIELDS}
        if extra:
            raise ValueError(f"history entry has columns outside the schema: {sorted(extra)}")
    problems = [
        problem
        for f in schema
        if f.name not in NESTED_COLUMNS
        and (problem := _value_problem(f.name, row.get(f.name), f.type)) is not None
    ]
    if problems:
        raise ValueError("result row does not fit the schema: " + "; ".join(problems))
    arrays = [pa.array([row.get(f.name)], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _conform_column(column: pa.ChunkedArray, dtype: pa.DataType) -> pa.ChunkedArray:
    if column.type == dtype:
        return column
    try:
        return column.cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # e.g. a struct with fewer fields, on a pyarrow that cannot cast structs by name
        return pa.chunked_array([pa.array(column.to_pylist(), type=dtype)], type=dtype)


def conform(table: pa.Table) -> pa.Table:
    """`table` (rows of one or more result files, of any code version) in `result_schema()`,
    then any columns the schema does not know, in their own types; a column the schema lacks
    comes out null. A ValueError names a column whose values cannot take the schema's type."""
    schema = result_schema()
    arrays, fields = [], []
    for f in schema:
        if f.name in table.column_names:
            try:
                arrays.append(_conform_column(table.column(f.name), f.type))
            except (pa.ArrowException, ValueError, TypeError) as exc:
                raise ValueError(f"column {f.name!r} cannot be read as {f.type}: {exc}") from None
        else:
            arrays.append(pa.nulls(table.num_rows, type=f.type))
        fields.append(f)
    for name in table.column_names:
        if name not in schema.names:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
