"""Running one cell: the function a Ray task (or the serial executor) calls.

It returns a plain dict, never raises for a problem of the cell's own making: an exception in
the training code becomes a failure record with its traceback, so one bad cell never stops a
sweep. The driver, the only writer of the results folder, stores what comes back. The one
file a cell writes itself is its own checkpoint (runner/run/checkpoint.py), from which it continues
if it was interrupted before.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import random
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.errors import DatasetError
from runner.job.cells import TRAINER_VERSION, Cell, canonical_json
from runner.results.failures import failure_record, is_out_of_memory
from runner.results.learning import verdict
from runner.run.checkpoint import CellCheckpoints, CheckpointPolicy, StorageNotShared
from runner.run.pinning import pinned_cores
from runner.run.provenance import provenance_columns


def derive_seed(seed: int, purpose: str) -> int:
    """An independent 63-bit seed per purpose (weights, shuffling, sampling), from one seed."""
    digest = hashlib.sha256(f"cpusweep/{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed every global generator before anything is built.

    Every random choice of ours draws from explicit generators; this is the second line of
    defence against state left behind by the previous cell in a reused worker."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _node_name() -> str:
    host = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            return f"{host}:{ray.get_runtime_context().get_node_id()[:8]}"
    except Exception:  # not inside Ray, or Ray not installed: the host names the node
        pass
    return host


def _weights_digest(model: Any) -> str:
    """sha256 of every parameter's and buffer's bytes: two runs of a cell agree bit for bit
    iff equal."""
    digest = hashlib.sha256()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _failure(cell: Cell, error_class: str, exc: BaseException, started: float) -> dict[str, Any]:
    return {
        "status": "failed",
        "failure": failure_record(
            cell,
            error_class,
            exc,
            node=_node_name(),
            pid=os.getpid(),
            seconds=time.perf_counter() - started,
            finished_at=_utc_now(),
        ),
    }


def run_cell(
    payload: dict[str, Any],
    data_root: str | None = None,
    download: bool | None = None,
    checkpoints: CheckpointPolicy | None = None,
    pin_cores: int = 0,
    max_cell_minutes: float | None = None,
) -> dict[str, Any]:
    """Train one cell and return {"status": "ok", "row": {...}} or a failure record, each with
    the `warnings` the driver should show (e.g. an ignored checkpoint).

    With `max_cell_minutes`, the cell stops after the epoch in which its epochs have taken
    that long (runner/results/stops.py); the budget is recorded in the row, not in the key.

    With `checkpoints`, the cell continues from its checkpoint if it has one, and saves one
    every `checkpoints.every` epochs. With `pin_cores` > 0, all its threads run on that many
    cores of their own (runner/run/pinning.py), recorded in the row."""
    started = time.perf_counter()
    started_at = _utc_now()
    cell = Cell.from_payload(payload)
    warnings: list[str] = []
    result: dict[str, Any]
    try:
        pinning: contextlib.AbstractContextManager[list[int]] = (
            pinned_cores(pin_cores) if pin_cores else contextlib.nullcontext([])
        )
        with pinning as cores:
            if pin_cores and not cores:
                warnings.append("no free core to pin this cell to: it ran unpinned")
            row = _train_cell(
                cell,
                data_root,
                download,
                checkpoints,
                warnings,
                started,
                started_at,
                max_cell_minutes,
            )
        row["pinned_cores"] = ",".join(map(str, cores))
        result = {"status": "ok", "row": row}
    except DatasetError as exc:
        result = _failure(cell, "data", exc, started)
    except StorageNotShared as exc:
        result = _failure(cell, "storage", exc, started)
    except Exception as exc:  # failure classes: runner/results/failures.py
        result = _failure(
            cell, "out_of_memory" if is_out_of_memory(exc) else "application", exc, started
        )
    result["warnings"] = warnings
    return result


def _train_cell(
    cell: Cell,
    data_root: str | None,
    download: bool | None,
    policy: CheckpointPolicy | None,
    warnings: list[str],
    started: float,
    started_at: str,
    max_cell_minutes: float | None,
) -> dict[str, Any]:
    # Threads and seeds first, before anything is built or loaded.
    from runner.run.allocator import steady_allocator
    from runner.run.threads import apply_threads, observe

    apply_threads(cell.torch_threads)
    steady_allocator()  # no page-fault warm-up in the timed epochs (see runner/run/allocator.py)
    v = cell.values
    seed = int(v["seed"])
    seed_everything(seed)
    node = _node_name()

    # Before the data: a worker that cannot checkpoint should say so in seconds.
    checkpoints = resumed = None
    if policy is not None:
        checkpoints = CellCheckpoints(policy, cell, node, warnings)
        checkpoints.check_storage()
        resumed = checkpoints.load()

    import torch

    import methods
    from methods.base import Architecture, TrainSettings
    from methods.registry import METHODS
    from runner.datasets.loading import load_splits
    from runner.datasets.locations import downloads_allowed, resolve_data_root
    from runner.datasets.registry import DATASETS
    from runner.run.trainer import train

    root = resolve_data_root(data_root)
    kind = str(v["arch"])
    t0 = time.perf_counter()
    splits = load_splits(
        cell.dataset,
        Path(root),
        int(v["split_seed"]),
        download=downloads_allowed() if download is None else download,
        flatten=kind == "mlp",  # the CNN takes images
    )
    if v.get("train_limit") is not None:
        splits = splits.limited(int(v["train_limit"]), int(v["split_seed"]))
    load_seconds = time.perf_counter() - t0

    arch = Architecture(
        in_features=splits.info.features,
        width=int(v["width"]),
        depth=int(v["depth"]),
        classes=splits.info.classes,
        kind=kind,
        image_shape=splits.info.image_shape,
    )
    model = methods.build(
        cell.method,
        arch,
        cell.method_params(),
        generator=torch.Generator().manual_seed(derive_seed(seed, "weights")),
        sampling_generator=torch.Generator().manual_seed(derive_seed(seed, "sampling")),
    )
    settings = TrainSettings(
        lr=float(v["lr"]),
        optimizer=str(v["optimizer"]),
        momentum=float(v["momentum"]),
        batch_size=int(v["batch_size"]),
    )
    outcome = train(
        model,
        splits,
        settings,
        epochs=int(v["epochs"]),
        shuffle_generator=torch.Generator().manual_seed(derive_seed(seed, "shuffle")),
        resume_state=resumed.state if resumed else None,
        on_checkpoint=checkpoints.save if checkpoints else None,
        checkpoint_every=policy.every if policy else 0,
        time_budget_seconds=None if max_cell_minutes is None else 60.0 * max_cell_minutes,
    )
    threads = observe()  # after training: what the cell really ran with
    history = outcome.history
    assert outcome.test is not None
    # Every epoch's own time, also those computed before a resume (possibly on another node).
    train_seconds = sum(h["train_seconds"] for h in history)

    def total(phase: str) -> float:
        return float(sum(h[f"{phase}_seconds"] for h in history))

    full_epochs = outcome.full_epochs
    diverged = any(not math.isfinite(h["train_loss"]) for h in history)
    learning = verdict(outcome.test.confusion, diverged)
    row: dict[str, Any] = {"cell_key": cell.key, "status": "ok"}
    row.update(v)
    row.update(
        {
            "requested_torch_threads": cell.torch_threads,
            "test_accuracy": outcome.test.accuracy,
            "test_loss": outcome.test.loss,
            "val_accuracy": history[-1]["val_accuracy"],
            "best_val_accuracy": max(h["val_accuracy"] for h in history),
            "final_train_loss": history[-1]["train_loss"],
            # The loss became NaN or infinite (in an epoch's mean: rows written before the
            # divergence stop trained on to their last epoch).
            "diverged": diverged,
            # "completed", "diverged" or "time_budget" (runner/results/stops.py)
            "stop_reason": outcome.stop_reason,
            "diverged_at_step": outcome.diverged_at_step,
            "max_cell_minutes": max_cell_minutes,
            # "" learned; "chance" or "diverged": did not learn (runner/results/learning.py).
            "learning_flag": learning.flag,
            "chance_accuracy": learning.chance_accuracy,
            "chance_p_value": learning.p_value,
            # The network as it trains (ALSH-APPROX: through its hash tables); None when the
            # method trains and evaluates the same network.
            "approx_test_accuracy": (
                outcome.approx_test.accuracy if outcome.approx_test is not None else None
            ),
            "epochs_done": full_epochs,  # a diverged cell's cut-short epoch is not counted
            "steps": outcome.steps,
            "optimizer_implementation": outcome.optimizer_implementation,
            "train_seconds": train_seconds,
            # Over the epochs trained to their end (NaN if none was)
            "seconds_per_epoch": (
                sum(h["train_seconds"] for h in history[:full_epochs]) / full_epochs
                if full_epochs
                else math.nan
            ),
            "data_seconds": total("data"),
            "forward_seconds": total("forward"),
            "backward_seconds": total("backward"),
            "step_seconds": total("step"),
            "upkeep_seconds": total("upkeep"),
            "eval_seconds": total("eval"),
            "load_seconds": load_seconds,
            "checkpoint_seconds": checkpoints.save_seconds if checkpoints else 0.0,
            "wall_seconds": time.perf_counter() - started,  # this run only, not earlier ones
            "resumed_from_epoch": resumed.state.epoch if resumed else 0,
            "resumes": resumed.resumes if resumed else 0,
            **splits.describe(),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "weights_sha256": _weights_digest(model),
            **threads,
            "node": node,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            # The SLURM job and node that ran it (the Ray node's srun step); null elsewhere.
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_node": os.environ.get("SLURMD_NODENAME"),
            "method_version": METHODS[cell.method].version,
            "trainer_version": TRAINER_VERSION,
            "dataset_version": DATASETS[cell.dataset].version,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "platform": f"{sys.platform}-{platform.machine()}",
            **provenance_columns(cell.method),  # commit, package versions, code hashes
            "started_at": started_at,
            "finished_at": _utc_now(),
            "confusion_matrix": outcome.test.confusion,
            "history": history,
            "cell_json": canonical_json(cell.content()),  # rebuilds the cell from its row
        }
    )
    return row
