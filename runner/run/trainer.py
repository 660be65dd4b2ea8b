"""The training loop every method shares, with honest per-phase timing.

Each epoch is timed with `time.perf_counter()` and split into: data (shuffling and slicing
batches), forward (the forward pass and the loss), backward (gradients), step (the optimizer
update), upkeep (the method's own housekeeping, e.g. hash-table rebuilds) and eval
(the method's calibration, validation accuracy, exact and as trained, and the probes; not part
of training time). The split
is the same for every method, so the paper's feedforward / backprop comparison is fair here.

Two things stop a cell early, each recorded as its `stop_reason`
(runner/results/stops.py): a training loss that is NaN or infinite stops it at once, before
that step's update (nothing recovers from it; the epoch it happened in is recorded as far as
it got, with its `steps`), and an optional time budget stops it after the epoch that crosses
it.

The loop can hand out its complete state after an epoch (`LoopState`, for checkpoints) and
continue from such a state bit for bit: model and optimizer through their `state_dict()`
(a method keeps its sampling state there), the shuffling generator, the global generators,
and the step and example counters the method's upkeep sees.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from methods.base import MethodModel, TrainSettings, optimizer_implementation
from runner.datasets.loading import Splits
from runner.results.stops import COMPLETED, DIVERGED, TIME_BUDGET

PHASES = ("data", "forward", "backward", "step", "upkeep")
EVAL_BATCH = 2048  # evaluation batch: a speed choice only, it does not change any number
PROBE_SIZE = 256  # validation inputs in the fixed approximation-error probe batch
# Training inputs a method may calibrate evaluation-time state on (`MethodModel.calibrate`):
# the first ones of the (randomly split) training set, the same before every evaluation.
CALIBRATION_SIZE = 2048


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    confusion: list[list[int]]  # [true][predicted] counts


@dataclass
class TrainOutcome:
    history: list[dict[str, Any]] = field(default_factory=list)
    test: Evaluation | None = None
    # The network evaluated as it trains (`MethodModel.approx_log_probs`), if it differs.
    approx_test: Evaluation | None = None
    steps: int = 0
    stop_reason: str = COMPLETED  # or DIVERGED, TIME_BUDGET (runner/results/stops.py)
    diverged_at_step: int | None = None  # the step whose loss was not finite
    optimizer_implementation: str = ""  # e.g. "adam:fused" (methods/base.py)

    @property
    def full_epochs(self) -> int:
        """Epochs trained to their end (a diverged cell's last epoch was cut short)."""
        return len(self.history) - (self.stop_reason == DIVERGED)


@dataclass
class LoopState:
    """Everything the loop needs to continue after `epoch` finished epochs, as plain
    containers of tensors and numbers (so it loads with `torch.load(weights_only=True)`).

    The state dicts share storage with the live model and optimizer: save or copy it within
    the `on_checkpoint` callback."""

    epoch: int
    step: int
    examples_seen: int
    history: list[dict[str, Any]]
    model: dict[str, Any]  # model.state_dict(): weights and the method's sampling state
    optimizer: dict[str, Any]  # optimizer.state_dict()
    shuffle_rng: torch.Tensor  # the shuffling generator's state
    global_rng: dict[str, Any]  # torch, numpy and random states (capture_global_rng)


def capture_global_rng() -> dict[str, Any]:
    """The global generators' states. Our own draws use explicit generators; these are kept
    so that any code that does touch global state continues identically too."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    r = state["random"]
    random.setstate((r["version"], tuple(r["internal"]), r["gauss_next"]))


@torch.inference_mode()
def evaluate(
    model: MethodModel, x: torch.Tensor, y: torch.Tensor, classes: int, approx: bool = False
) -> Evaluation | None:
    """Accuracy, loss and confusion matrix of the evaluation-mode network; with `approx`, of
    the network as it trains (None when the method has no such evaluation)."""
    model.eval()
    confusion = torch.zeros(classes * classes, dtype=torch.int64)
    loss_sum = 0.0
    for start in range(0, len(y), EVAL_BATCH):
        xb, yb = x[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
        logp = model.approx_log_probs(xb) if approx else model(xb)  # (B, classes)
        if logp is None:
            return None
        loss_sum += float(F.nll_loss(logp, yb, reduction="sum"))
        pred = logp.argmax(dim=1)
        confusion += torch.bincount(yb * classes + pred, minlength=classes * classes)
    matrix = confusion.view(classes, classes)
    n = max(len(y), 1)
    return Evaluation(
        accuracy=float(matrix.diagonal().sum()) / n,
        loss=loss_sum / n,
        confusion=matrix.tolist(),
    )


# Training examples gathered (shuffled) at once: large enough to amortise the call, small
# enough to stay a few MB (38 MB for NORB's 9216 features).
GATHER_ROWS = 1024


def train(
    model: MethodModel,
    splits: Splits,
    settings: TrainSettings,
    epochs: int,
    shuffle_generator: torch.Generator,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume_state: LoopState | None = None,
    on_checkpoint: Callable[[LoopState], None] | None = None,
    checkpoint_every: int = 0,
    time_budget_seconds: float | None = None,
) -> TrainOutcome:
    """Train for `epochs` epochs, or the epochs left after `resume_state`; stop early on a
    loss that is not finite, or after the epoch in which the cell's epochs (training and
    evaluation, those before a resume included) have taken `time_budget_seconds`.

    `on_checkpoint` is called with the loop's state after every `checkpoint_every`-th epoch
    (never after the last: the cell is about to finish)."""
    x_train, y_train = splits.x_train, splits.y_train
    n, b = len(y_train), settings.batch_size
    chunk = b * max(1, GATHER_ROWS // b)
    classes = splits.info.classes
    probe_x = splits.x_val[:PROBE_SIZE]
    calibration_x = x_train[:CALIBRATION_SIZE]
    optimizer = model.make_optimizer(settings)
    outcome = TrainOutcome(optimizer_implementation=optimizer_implementation(optimizer))
    cumulative = 0.0
    step = examples_seen = 0
    first_epoch = 1
    if resume_state is not None:
        model.load_state_dict(resume_state.model)
        optimizer.load_state_dict(resume_state.optimizer)
        shuffle_generator.set_state(resume_state.shuffle_rng)
        restore_global_rng(resume_state.global_rng)
        step, examples_seen = resume_state.step, resume_state.examples_seen
        outcome.history = list(resume_state.history)
        if outcome.history:
            cumulative = outcome.history[-1]["cumulative_train_seconds"]
        first_epoch = resume_state.epoch + 1

    for epoch in range(first_epoch, epochs + 1):
        model.train()
        t_data = t_fwd = t_bwd = t_step = t_upkeep = 0.0
        loss_sum = 0.0
        batches = 0
        diverged = False

        t0 = perf_counter()
        order = torch.randperm(n, generator=shuffle_generator)
        t_data += perf_counter() - t0

        # Gather the shuffled examples a chunk at a time (a whole number of batches, so the
        # batches are the same): a shuffled copy of the whole training set per epoch would
        # double a large dataset's memory (NORB: 0.9 GB more per cell), a gather per batch
        # costs a call per step.
        for chunk_start in range(0, n, chunk):
            t0 = perf_counter()
            picked = order[chunk_start : chunk_start + chunk]
            xs, ys = x_train.index_select(0, picked), y_train.index_select(0, picked)
            t_data += perf_counter() - t0

            for start in range(0, len(picked), b):
                t0 = perf_counter()
                xb, yb = xs[start : start + b], ys[start : start + b]
                t1 = perf_counter()
                loss = F.nll_loss(model(xb), yb)
                loss_value = loss.item()
                t2 = perf_counter()
                if not math.isfinite(loss_value):
                    # Nothing recovers from this: stop before the update (the weights stay
                    # those of the last finite step). This batch counts in the epoch's loss.
                    t_data += t1 - t0
                    t_fwd += t2 - t1
                    loss_sum += loss_value
                    batches += 1
                    diverged = True
                    outcome.diverged_at_step = step + 1
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t3 = perf_counter()
                optimizer.step()
                t4 = perf_counter()
                step += 1
                examples_seen += len(yb)
                model.upkeep(step, examples_seen)
                t5 = perf_counter()
                t_data += t1 - t0
                t_fwd += t2 - t1
                t_bwd += t3 - t2
                t_step += t4 - t3
                t_upkeep += t5 - t4
                loss_sum += loss_value
                batches += 1
            if diverged:
                break

        t0 = perf_counter()
        model.end_epoch()
        t_upkeep += perf_counter() - t0
        train_seconds = t_data + t_fwd + t_bwd + t_step + t_upkeep
        cumulative += train_seconds

        t0 = perf_counter()
        model.calibrate(calibration_x)
        val = evaluate(model, splits.x_val, splits.y_val, classes)
        assert val is not None
        stats = dict(model.epoch_stats())
        approx_val = evaluate(model, splits.x_val, splits.y_val, classes, approx=True)
        if approx_val is not None:
            stats["approx_val_accuracy"] = approx_val.accuracy
        model.eval()
        for layer, err in enumerate(model.probe_error(probe_x, settings.batch_size), start=1):
            stats[f"probe_rel_error.layer{layer}"] = err
        stats.update(model.probe_stats(probe_x, settings.batch_size))
        eval_seconds = perf_counter() - t0

        train_loss = loss_sum / max(batches, 1)
        record: dict[str, Any] = {
            "epoch": epoch,
            "steps": batches - diverged,  # updates made (fewer in an epoch cut short)
            "train_loss": train_loss if math.isfinite(train_loss) else float("nan"),
            "val_accuracy": val.accuracy,
            "val_loss": val.loss,
            "train_seconds": train_seconds,
            "cumulative_train_seconds": cumulative,
            "data_seconds": t_data,
            "forward_seconds": t_fwd,
            "backward_seconds": t_bwd,
            "step_seconds": t_step,
            "upkeep_seconds": t_upkeep,
            "eval_seconds": eval_seconds,
            "stats": [{"name": k, "value": float(v)} for k, v in sorted(stats.items())],
        }
        outcome.history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if diverged:
            outcome.stop_reason = DIVERGED
            break
        spent = sum(h["train_seconds"] + h["eval_seconds"] for h in outcome.history)
        if time_budget_seconds is not None and spent >= time_budget_seconds and epoch < epochs:
            outcome.stop_reason = TIME_BUDGET
            break
        if on_checkpoint and checkpoint_every and epoch % checkpoint_every == 0 and epoch < epochs:
            on_checkpoint(
                LoopState(
                    epoch=epoch,
                    step=step,
                    examples_seen=examples_seen,
                    history=outcome.history,
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    shuffle_rng=shuffle_generator.get_state(),
                    global_rng=capture_global_rng(),
                )
            )

    outcome.steps = step
    model.calibrate(calibration_x)
    outcome.test = evaluate(model, splits.x_test, splits.y_test, classes)
    outcome.approx_test = evaluate(model, splits.x_test, splits.y_test, classes, approx=True)
    return outcome
