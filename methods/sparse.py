"""Genuinely sparse training of an MLP on a subset of each hidden layer's units.

DROPOUT (one mask per mini-batch) and ALSH-APPROX differ only in how they choose each hidden
layer's active units; the computation on them is shared and lives here:

- forward: for hidden layer i with active units S_i (and S_{i-1} of the layer below), gather
  only the block W_i[S_i, S_{i-1}] and b_i[S_i] and compute z = h @ block^T + b on it; every
  other unit is 0 and is never computed. The output layer is exact over its classes, on the
  active units of the last hidden layer.
- backward: autograd runs on the gathered blocks only, so gradients exist for active weights
  only (cost proportional to the blocks, not the layers).
- step: `LazyOptimizer` writes updates back into those blocks only. For Adam this is lazy
  ("sparse") Adam: the moments of weights outside the block are neither read nor decayed,
  and bias correction uses the global step count (as TensorFlow's LazyAdam and PyTorch's
  SparseAdam do). With every unit active it is exactly dense SGD / Adam.

A block is (parameter, row indices or None, column indices or None): None means all.

A method may run its single-example steps compiled instead (`compiled_single`,
methods/sparse_compiled.py): the same blocks and arithmetic without torch's per-call overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods import sparse_compiled
from methods.base import Architecture, MethodModel, TrainSettings, linear_layers
from methods.sparse_compiled import CompiledLayer


@dataclass(frozen=True)
class BlockIndex:
    """Where a block lies in its parameter: rows and/or columns (None = all of them).

    A block of both rows and columns is addressed through flat indices into the parameter
    (rows x in_features + cols, computed once per step): one `index_select` / `index_copy_`
    on the flattened tensor is several times faster than 2-D advanced indexing."""

    shape: tuple[int, ...]  # the parameter's shape
    rows: torch.Tensor | None  # (r,) sorted int64
    cols: torch.Tensor | None  # (c,) sorted int64
    flat: torch.Tensor | None = None  # (r * c,) when both rows and cols are given

    @staticmethod
    def of(
        shape: tuple[int, ...], rows: torch.Tensor | None, cols: torch.Tensor | None
    ) -> BlockIndex:
        flat = None
        if len(shape) == 2 and rows is not None and cols is not None:
            flat = (rows.unsqueeze(1) * shape[1] + cols).view(-1)  # (r, 1) * in + (c,)
        return BlockIndex(shape, rows, cols if len(shape) == 2 else None, flat)


def gather(param: torch.Tensor, where: BlockIndex, lead: int = 0) -> torch.Tensor:
    """The block of `param` as a new tensor; `lead` leading dimensions (Adam's two stacked
    moments) come along whole."""
    stacked = param.shape[:lead]
    if where.flat is not None:
        assert where.rows is not None and where.cols is not None
        block = param.view(*stacked, -1).index_select(lead, where.flat)
        return block.view(*stacked, len(where.rows), len(where.cols))
    if where.rows is not None:
        return param.index_select(lead, where.rows)
    if where.cols is not None:
        return param.index_select(lead + 1, where.cols)
    return param.clone()


def scatter_(param: torch.Tensor, where: BlockIndex, values: torch.Tensor, lead: int = 0) -> None:
    """Write `values` into the block of `param` that `gather` reads, in place."""
    stacked = param.shape[:lead]
    if where.flat is not None:
        param.view(*stacked, -1).index_copy_(lead, where.flat, values.reshape(*stacked, -1))
    elif where.rows is not None:
        param.index_copy_(lead, where.rows, values)
    elif where.cols is not None:
        param.index_copy_(lead + 1, where.cols, values)
    else:
        param.copy_(values)


class ActiveUnits(NamedTuple):
    """What one hidden layer computes for a batch."""

    units: torch.Tensor  # (|S|,) sorted int64: the units the batch computes (gathered once)
    factor: float  # their activations are multiplied by it (1/keep for inverted dropout)
    # (B, |S|) zeros and ones: each example's own units among them (ALSH gives every example
    # its own active set); None: every example uses all of them.
    mask: torch.Tensor | None = None


class HiddenLayer(NamedTuple):
    """One hidden layer of a sparse pass."""

    h: torch.Tensor  # (B, |S|) activations of the computed units (0 where masked)
    units: torch.Tensor  # (|S|,) which units they are
    mask: torch.Tensor | None  # as ActiveUnits.mask


@dataclass
class Block:
    """The part of a parameter one training step reads and updates."""

    param: torch.Tensor
    where: BlockIndex
    leaf: torch.Tensor  # the gathered values; autograd puts the block's gradient here

    @property
    def numel(self) -> int:
        return self.leaf.numel()


class SparseMLP(MethodModel):
    """A ReLU MLP that trains on per-step active units of its hidden layers.

    Subclasses implement `active_for_layer`: the active units of one hidden layer for this
    batch, the factor their activations are multiplied by (1/keep for inverted dropout, 1 for
    ALSH), and optionally each example's own units among them (ALSH). Choosing may depend on
    the activations computed so far (ALSH hashes each layer's input), so it is called layer
    by layer.
    """

    # Whether a single-example training step is compiled (methods/sparse_compiled.py) instead
    # of torch's gathers, autograd and foreach updates (the same arithmetic, sums in another
    # order). Subclasses that set it implement `single_active`.
    compiled_single = False

    def __init__(
        self, arch: Architecture, generator: torch.Generator, sampling_generator: torch.Generator
    ):
        super().__init__(sampling_generator)
        self.arch = arch
        self._anchor = torch.zeros((), requires_grad=True)  # makes autograd call the kernels
        self._trace: list[np.ndarray] = []  # each layer's input, until the backward pass
        self.layers = linear_layers(arch, generator)
        self._torch_blocks: list[Block] = []  # what the last training step touched
        # The compiled single-example step: what it computed, layer by layer (output last).
        self.compiled_layers: list[CompiledLayer] = []
        self._work: list[CompiledLayer | None] = [None] * len(self.layers)
        # numpy views of the weights and biases (which are only ever updated in place).
        self._arrays = [
            (m.weight.detach().numpy(), m.bias.detach().numpy())
            for m in self.layers
            if isinstance(m, nn.Linear)
        ]
        # Plain lists (not registered again): slicing a ModuleList builds a new one per call.
        self._hidden: list[nn.Linear] = [m for m in self.layers[:-1] if isinstance(m, nn.Linear)]
        last = self.layers[-1]
        assert isinstance(last, nn.Linear)
        self._output: nn.Linear = last
        self._active_sum = [0.0] * arch.depth
        self._steps = 0

    # --- what subclasses provide -----------------------------------------------------------

    def active_for_layer(
        self, layer: int, h: torch.Tensor, prev: torch.Tensor | None, record: bool
    ) -> ActiveUnits:
        """The active units of hidden layer `layer` (0-based) for the batch whose input to
        this layer is `h` (B, |prev|), `prev` its active units below (None: the network's
        input). `record` is False during probes and approximate evaluation: do not count
        them in the method's statistics."""
        raise NotImplementedError

    def single_active(self, layer: int, h: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """For the compiled single-example step: the active units (sorted int64) of hidden
        layer `layer` for the example's input h (1, |prev|), statistics counted."""
        raise NotImplementedError

    # --- the computation ----------------------------------------------------------------------

    def dense_hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every hidden layer's exact activations."""
        acts, h = [], x
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
            acts.append(h)
        return acts

    def dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exact network: evaluation mode."""
        h = x
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return F.log_softmax(self.layers[-1](h), dim=1)

    def sparse_hidden(self, x: torch.Tensor, record: bool) -> list[HiddenLayer]:
        """Hidden layers computed on their active units only: per layer, the activations
        (B, |S_i|), the active unit indices S_i, and each example's own units among them."""
        h, prev = x, None
        trace = []
        for i, layer in enumerate(self._hidden):
            # Choosing works on detached values (and numpy): no autograd graph to avoid.
            active = self.active_for_layer(i, h.detach(), prev, record)
            w = self._block(layer.weight, active.units, prev, record)  # (|S_i|, |S_{i-1}|)
            b = self._block(layer.bias, active.units, None, record)  # (|S_i|,)
            h = F.relu(torch.addmm(b, h, w.t()))  # (B, |S_{i-1}|) @ (|S_{i-1}|, |S_i|)
            if active.factor != 1.0:
                h = h * active.factor
            if active.mask is not None:
                h = h * active.mask  # each example on its own units only
            if record:
                self._active_sum[i] += active.units.numel()
            trace.append(HiddenLayer(h, active.units, active.mask))
            prev = active.units
        return trace

    def sparse_log_probs(self, x: torch.Tensor, record: bool) -> torch.Tensor:
        """The method's own forward pass (hidden layers on their active units, the output
        layer exact over its classes); `record`: a training step (blocks kept for the
        optimizer, statistics counted)."""
        last = self.sparse_hidden(x, record)[-1]
        out = self._output
        w = self._block(out.weight, None, last.units, record)  # (classes, |S_last|)
        b = self._block(out.bias, None, None, record)
        return F.log_softmax(torch.addmm(b, last.h, w.t()), dim=1)  # (B, classes)

    def _block(
        self,
        param: torch.Tensor,
        rows: torch.Tensor | None,
        cols: torch.Tensor | None,
        record: bool,
    ) -> torch.Tensor:
        where = BlockIndex.of(tuple(param.shape), rows, cols)
        leaf = gather(param.detach(), where)  # a copy of the block, outside any graph
        if record:  # a training step: autograd collects this block's gradient
            leaf.requires_grad_(True)
            self._torch_blocks.append(Block(param, where, leaf))
        return leaf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.dense_forward(x)
        self._torch_blocks.clear()
        self.compiled_layers.clear()
        self._steps += 1
        if self.compiled_single and len(x) == 1:
            return sparse_compiled.CompiledStep.apply(self._anchor, x, self)
        return self.sparse_log_probs(x, record=True)

    @property
    def blocks(self) -> list[Block]:
        """The blocks the last training step read (and its optimizer step updates)."""
        if not self.compiled_layers:
            return self._torch_blocks
        blocks = []
        for layer in self.compiled_layers:
            rows = torch.from_numpy(layer.rows) if len(layer.rows) else None
            cols = torch.from_numpy(layer.cols) if len(layer.cols) else None
            pairs = ((layer.weight, layer.block, layer.grad_block, cols),
                     (layer.bias, layer.bias_block, layer.grad_bias, None))  # fmt: skip
            for param, values, grad, param_cols in pairs:
                leaf = torch.from_numpy(values)
                if not self._trace:  # the backward pass has run: the gradients are there
                    leaf.grad = torch.from_numpy(grad)
                blocks.append(Block(param, BlockIndex(tuple(param.shape), rows, param_cols), leaf))
        return blocks

    def make_optimizer(self, settings: TrainSettings) -> LazyOptimizer:
        return LazyOptimizer(self, settings)

    def epoch_stats(self) -> dict[str, float]:
        steps = max(self._steps, 1)
        stats = {f"active_units.layer{i + 1}": s / steps for i, s in enumerate(self._active_sum)}
        self._active_sum = [0.0] * self.arch.depth
        self._steps = 0
        return stats

    @torch.no_grad()
    def probe_error(self, x: torch.Tensor, batch_size: int) -> list[float]:
        """||a_sparse - a_exact|| / ||a_exact|| per hidden layer over the probe batch, the
        sparse pass run on chunks of the training batch size (active sets are per batch) and
        scattered back to full width (inactive units are exactly 0). The training
        randomness is left where it was."""
        saved = self.random_state()
        try:
            diffs = [0.0] * self.arch.depth
            norms = [0.0] * self.arch.depth
            for start in range(0, len(x), batch_size):
                chunk = x[start : start + batch_size]
                exact = self.dense_hidden(chunk)
                for i, layer in enumerate(self.sparse_hidden(chunk, record=False)):
                    full = torch.zeros_like(exact[i]).index_copy_(1, layer.units, layer.h)
                    diffs[i] += float((full - exact[i]).pow(2).sum())
                    norms[i] += float(exact[i].pow(2).sum())
        finally:
            self.set_random_state(saved)
        return [
            math.sqrt(d / n) if n > 0 else float("nan") for d, n in zip(diffs, norms, strict=True)
        ]


class LazyOptimizer:
    """SGD (with momentum) or Adam that updates only the blocks the last step touched.

    The per-block arithmetic is torch.optim's own, done over all blocks of a step at once
    (`torch._foreach_*`, Adam's fused kernel): at batch 1 the cost of a step is the number
    of operations and the memory it touches, not the arithmetic. With every unit active the
    result is bit for bit dense SGD, and dense Adam up to rounding. Adam keeps a parameter's
    two moments stacked in one (2, *shape) tensor: one gather and one scatter move both.

    It follows `torch.optim.Optimizer`'s protocol where the trainer and checkpoints use it:
    `zero_grad`, `step`, `state_dict`, `load_state_dict`.
    """

    def __init__(
        self,
        model: SparseMLP,
        settings: TrainSettings,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.model = model
        self.kind = settings.optimizer
        self.lr = settings.lr
        self.momentum = settings.momentum
        self.batch_size = settings.batch_size
        self.betas = betas
        self.eps = eps
        self.step_count = 0
        self.updated_elements = 0  # instrumentation: weights written by the last step
        self._names = {id(p): name for name, p in model.named_parameters()}
        # Allocated once, so that no step ever touches a whole parameter's state.
        self.state: dict[str, torch.Tensor] = {}
        for name, param in model.named_parameters():
            if self.kind == "adam":
                self.state[name] = torch.zeros((2, *param.shape))  # exp_avg, exp_avg_sq
            elif self.momentum:
                self.state[name] = torch.zeros_like(param)  # momentum buffer
        # numpy views of every parameter and its state, for the compiled step's kernels.
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name, param in model.named_parameters():
            value = param.detach().numpy()
            state = self.state[name].numpy() if name in self.state else value
            self._arrays[id(param)] = (value, state)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients live on the per-step blocks, which the next forward replaces."""

    def implementation(self) -> str:
        """The update over the step's blocks: the compiled kernels for a method's compiled
        single-example steps, else Adam's fused kernel where torch has it."""
        if self.model.compiled_single and self.batch_size == 1:
            return f"{self.kind}:lazy-compiled"
        if self.kind == "adam":
            return "adam:lazy-fused" if hasattr(torch, "_fused_adam_") else "adam:lazy-foreach"
        return f"{self.kind}:lazy-foreach"

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        compiled = self.model.compiled_layers
        if compiled:  # a compiled single-example step's blocks
            if self.model._trace:  # no backward pass since its forward: no gradients
                self.updated_elements = 0
                return
            self.updated_elements = sum(w.block.size + w.bias_block.size for w in compiled)
            sparse_compiled.update(
                compiled, self._arrays, self.kind, self.lr, self.momentum, self.betas, self.eps,
                self.step_count,
            )  # fmt: skip
            return
        blocks = [b for b in self.model.blocks if b.leaf.grad is not None]
        self.updated_elements = sum(b.numel for b in blocks)
        if not blocks:
            return
        grads = [b.leaf.grad for b in blocks]
        values = [b.leaf.detach() for b in blocks]  # the gathered weights, updated in place
        if self.kind == "adam":
            self._adam(blocks, grads, values)  # type: ignore[arg-type]
        else:
            self._sgd(blocks, grads, values)  # type: ignore[arg-type]
        for block, value in zip(blocks, values, strict=True):
            scatter_(block.param, block.where, value)

    def _sgd(
        self, blocks: list[Block], grads: list[torch.Tensor], values: list[torch.Tensor]
    ) -> None:
        if self.momentum:
            full = [self.state[self._names[id(b.param)]] for b in blocks]
            bufs = [gather(f, b.where) for f, b in zip(full, blocks, strict=True)]
            torch._foreach_mul_(bufs, self.momentum)  # buf = momentum * buf + grad
            torch._foreach_add_(bufs, grads)
            for f, b, buf in zip(full, blocks, bufs, strict=True):
                scatter_(f, b.where, buf)
            grads = bufs
        torch._foreach_add_(values, grads, alpha=-self.lr)  # torch.optim.SGD's update

    def _adam(
        self, blocks: list[Block], grads: list[torch.Tensor], values: list[torch.Tensor]
    ) -> None:
        beta1, beta2 = self.betas
        full = [self.state[self._names[id(b.param)]] for b in blocks]
        pairs = [gather(f, b.where, lead=1) for f, b in zip(full, blocks, strict=True)]
        m = [pair[0] for pair in pairs]  # contiguous views into the gathered (2, ...) blocks
        v = [pair[1] for pair in pairs]
        if hasattr(torch, "_fused_adam_"):
            # torch.optim.Adam(fused=True)'s kernel: one call for every block of the step
            # (about 4x faster than the same arithmetic as separate foreach operations).
            step = torch.tensor(float(self.step_count))
            torch._fused_adam_(
                values,
                grads,
                m,
                v,
                [],
                [step] * len(values),
                lr=self.lr,
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )
        else:
            self._adam_foreach(grads, values, m, v)
        for f, b, pair in zip(full, blocks, pairs, strict=True):
            scatter_(f, b.where, pair, lead=1)

    def _adam_foreach(
        self,
        grads: list[torch.Tensor],
        values: list[torch.Tensor],
        m: list[torch.Tensor],
        v: list[torch.Tensor],
    ) -> None:
        """torch.optim.Adam's single-tensor arithmetic, step for step, over every block."""
        beta1, beta2 = self.betas
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        bias1 = 1 - beta1**self.step_count
        bias2_sqrt = (1 - beta2**self.step_count) ** 0.5
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(values, m, denom, value=-self.lr / bias1)

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "state": dict(self.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        for name, tensor in state["state"].items():
            self.state[name].copy_(tensor)
