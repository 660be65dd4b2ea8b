"""The result schema: what one finished cell's row holds. Pure (pyarrow types only).

A row has one column per parameter, by its job-file name (`method`, `dataset`, `depth`,
`batch_size`, `lr`, ..., and `<method>.<param>` for method hyperparameters), plus the
measured columns below. Nested columns have fixed Arrow types so that rows of different
cells, methods and code versions concatenate into one table.
"""

from __future__ import annotations

import pyarrow as pa

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

# Columns every row has besides the parameters (documented in the README's schema section).
MEASURED_COLUMNS = (
    "cell_key",
    "status",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "best_val_accuracy",
    "final_train_loss",
    "diverged",
    "learning_flag",  # "" learned; "chance" or "diverged" (runner/results/learning.py)
    "chance_accuracy",
    "chance_p_value",
    "approx_test_accuracy",  # the network as it trains (ALSH: through its tables), or null
    "epochs_done",
    "steps",
    "train_seconds",
    "seconds_per_epoch",
    "data_seconds",
    "forward_seconds",
    "backward_seconds",
    "step_seconds",
    "upkeep_seconds",
    "eval_seconds",
    "load_seconds",
    "checkpoint_seconds",  # writing mid-cell checkpoints, this run only
    "wall_seconds",  # this run only: a resumed cell's earlier runs are not in it
    "resumed_from_epoch",  # 0: trained from scratch; e: continued from a checkpoint after epoch e
    "resumes",  # how many times the cell continued from a checkpoint
    "train_size",
    "val_size",
    "test_size",
    "input_features",
    "classes",
    "norm_mean",
    "norm_std",
    "split_fingerprint",
    "n_parameters",
    "weights_sha256",
    "torch_threads",
    "torch_interop_threads",
    "os_threads",
    "cpu_affinity",
    "pinned_cores",
    "cpu_model",
    "omp_num_threads",
    "allocator",
    "requested_torch_threads",
    "node",
    "hostname",
    "pid",
    "slurm_job_id",  # SLURM_JOB_ID where the cell ran, null outside SLURM
    "slurm_node",  # SLURMD_NODENAME, the SLURM node name; null outside SLURM
    "method_version",
    "trainer_version",
    "dataset_version",
    "torch_version",
    "python_version",
    "platform",
    "started_at",
    "finished_at",
    "cell_json",
    "confusion_matrix",
    "history",
)


def row_to_table(row: dict[str, object]) -> pa.Table:
    """One result row as a one-row Arrow table with the fixed nested types."""
    missing = set(MEASURED_COLUMNS) - set(row)
    if missing:
        raise ValueError(f"result row lacks columns: {sorted(missing)}")
    for entry in row["history"]:  # type: ignore[attr-defined]
        extra = set(entry) - {name for name, _ in EPOCH_FIELDS}
        if extra:
            raise ValueError(f"history entry has columns outside the schema: {sorted(extra)}")
    flat = {k: v for k, v in row.items() if k not in NESTED_COLUMNS}
    table = pa.Table.from_pylist([flat])
    for name, dtype in NESTED_COLUMNS.items():
        table = table.append_column(pa.field(name, dtype), pa.array([row[name]], type=dtype))
    return table
