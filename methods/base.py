"""What every training method provides to the shared training loop, and shared MLP pieces.

The five methods differ in their layers, not in their loop (runner/run/trainer.py runs them all):
a method is an `nn.Module` whose forward pass in training mode is the method's own (sampled,
sparse, masked) computation and in evaluation mode the exact network, plus hooks for its
optimizer, its periodic upkeep, and its instrumentation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Architecture:
    """The network a cell trains: `depth` hidden layers of `width` units (for `kind` "cnn":
    after a ResNet-18 backbone over images of `image_shape`, see methods/cnn.py)."""

    in_features: int
    width: int
    depth: int
    classes: int
    kind: str = "mlp"
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width)

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(fan_in, fan_out) of every linear layer, hidden ones first, output last."""
        dims = [self.in_features] + [self.width] * self.depth + [self.classes]
        return list(itertools.pairwise(dims))


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation parameters of a cell, as the job file sets them."""

    lr: float
    optimizer: str  # "sgd" or "adam"
    momentum: float
    batch_size: int


def init_linear_(layer: nn.Linear, generator: torch.Generator) -> None:
    """PyTorch's default nn.Linear initialisation, drawn from an explicit generator.

    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases (kaiming_uniform with
    a = sqrt(5)). Drawing from our own generator makes a cell's weights independent of
    whatever ran before it in a reused worker process.
    """
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(layer.in_features)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


def linear_layers(
    arch: Architecture,
    generator: torch.Generator,
    make: Callable[[int, int], nn.Linear] = nn.Linear,
) -> nn.ModuleList:
    """The MLP's linear layers, hidden ones first, output last, each initialised from
    `generator` (`make` builds a method's own linear layer type)."""
    layers = nn.ModuleList()
    for fan_in, fan_out in arch.layer_sizes():
        linear = make(fan_in, fan_out)
        init_linear_(linear, generator)
        layers.append(linear)
    return layers


class Optimizer(Protocol):
    """What the trainer and checkpoints use of an optimizer: torch's own, or a method's
    (e.g. the lazy sparse one of methods/sparse.py)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def make_dense_optimizer(params: Any, settings: TrainSettings) -> torch.optim.Optimizer:
    """torch's fastest correct CPU update for a dense step (measured, docs/performance.md):
    Adam's fused kernel (about 3x torch's default for-loop Adam at batch 1, and the kernel the
    lazy sparse Adam of methods/sparse.py calls; equal to the for-loop up to rounding); SGD's
    default in-place update, which its foreach and fused variants equal bit for bit and do
    not beat."""
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, fused=True)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}")


def optimizer_implementation(optimizer: Any) -> str:
    """Which implementation of its update an optimizer runs, for the result row: e.g.
    "adam:fused", "sgd:for-loop", a method's own ("adam:lazy-fused"), "+"-joined for a
    composite one (the CNN's backbone and head)."""
    own = getattr(optimizer, "implementation", None)
    if callable(own):
        return str(own())
    if isinstance(optimizer, torch.optim.Optimizer):
        d = optimizer.defaults
        kind = "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"
        return f"{type(optimizer).__name__.lower()}:{kind}"
    return type(optimizer).__name__


class MethodModel(nn.Module):
    """Base class of every method. Subclasses implement `forward` (log-probabilities).

    In `train()` mode, forward is the method's own approximation; in `eval()` mode it is what
    the method evaluates with (the exact network for every method of the paper, the
    expectation for standout).

    Everything a method needs to continue bit for bit after a checkpoint (its sampling
    generator's state, counters, projections) must be in its `state_dict()`: as buffers, or
    through `get_extra_state` / `set_extra_state`, which this base class already uses for the
    sampling generator. Extra state holds tensors and plain Python values only, so that
    checkpoints load with `torch.load(weights_only=True)`.
    """

    def __init__(self, sampling_generator: torch.Generator | None = None):
        super().__init__()
        self.sampling_generator = sampling_generator

    def make_optimizer(self, settings: TrainSettings) -> Optimizer:
        """The optimizer; sparse methods return one that touches only active rows."""
        return make_dense_optimizer(self.parameters(), settings)

    def upkeep(self, step: int, examples_seen: int) -> None:
        """Called after every optimizer step with the number of steps and training examples
        so far (e.g. to rebuild hash tables on schedule); timed as upkeep."""

    def end_epoch(self) -> None:
        """Called at the end of every training epoch, timed as upkeep."""

    def epoch_stats(self) -> dict[str, float]:
        """Instrumentation for the epoch just finished (then reset). Names, per hidden layer
        i (1-based): `active_units.layer{i}` (mean units computed per step),
        `keep_rate.layer{i}` (mean fraction kept), `sampled_pairs.{product}.layer{i}` (mean
        column-row pairs kept; product is forward, grad_input or grad_weight), plus
        method-wide values such as `rebuilds` and `rebuild_seconds`. The trainer adds
        `probe_rel_error.layer{i}` from `probe_error`."""
        return {}

    def approx_log_probs(self, x: torch.Tensor) -> torch.Tensor | None:
        """Log-probabilities of the network as it trains, for a method that evaluates
        differently from how it trains (ALSH-APPROX: through its hash tables; the paper
        evaluates the exact network), so that "did not learn" can be told apart from "trained
        and evaluated differently". None for the others. Called in eval mode without
        gradients; it must leave the training randomness untouched."""
        return None

    def probe_stats(self, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        """Further instrumentation on the fixed probe batch (e.g. ALSH-APPROX's active-set
        overlap across inputs), named like `epoch_stats`. Same rules as `probe_error`."""
        return {}

    def calibrate(self, x: torch.Tensor) -> None:
        """Called before every evaluation with a fixed batch of training inputs: a method
        whose training-time forward pass leaves evaluation-time state that the exact network
        should not use re-derives it here (MC-APPROX's sampled convolutions: batch norm's
        running statistics). No randomness may be drawn."""

    def probe_error(self, x: torch.Tensor, batch_size: int) -> list[float]:
        """Relative error of each hidden layer's activations under the method's approximate
        forward pass against the exact one, ||a_approx - a|| / ||a||, on the fixed probe
        batch `x`, processed in chunks of the training batch size. Called in eval mode
        without gradients; it must leave the training randomness untouched (see
        `random_state`). Empty when the method's forward pass is exact."""
        return []

    def random_state(self) -> dict[str, Any]:
        """Everything random the method draws from while training (for checkpoints, and to
        run the probe without disturbing training)."""
        if self.sampling_generator is None:
            return {}
        return {"sampling_rng": self.sampling_generator.get_state()}

    def set_random_state(self, state: dict[str, Any]) -> None:
        if self.sampling_generator is not None and "sampling_rng" in state:
            self.sampling_generator.set_state(state["sampling_rng"])

    def get_extra_state(self) -> dict[str, Any]:
        return self.random_state()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.set_random_state(state)
