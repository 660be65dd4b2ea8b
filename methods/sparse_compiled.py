"""The compiled single-example training step of a sparse MLP (methods/sparse.py).

A method that sets `SparseMLP.compiled_single` trains on one example at a time through the
numba kernels of methods/sparse_kernels.py instead of torch's gathers, autograd and foreach
updates: the same blocks W_i[S_i, S_{i-1}] and the same arithmetic (sums in another order).
autograd still drives it, so the shared training loop (loss, `backward()`, `step()`) is
unchanged: `CompiledStep` is one autograd node whose backward pass runs the kernels and leaves
each layer's block gradients in its `CompiledLayer`, which the lazy optimizer then applies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from methods import sparse_kernels as kernels

if TYPE_CHECKING:
    from methods.sparse import SparseMLP

ALL = np.empty(0, dtype=np.int64)  # "every row / column" for the kernels


class CompiledLayer:
    """One layer of a compiled single-example step: its weight block W[rows, cols] and bias
    block b[rows] (numpy arrays; rows or cols empty: all of them), its output, and the
    gradients the backward pass writes. Allocated once per block shape and reused."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, n_rows: int, n_cols: int):
        self.weight, self.bias = weight, bias
        self.rows, self.cols = ALL, ALL
        self.block = np.empty((n_rows, n_cols), dtype=np.float32)
        self.bias_block = np.empty(n_rows, dtype=np.float32)
        self.out = np.empty(n_rows, dtype=np.float32)  # activations (log-probabilities: output)
        self.grad_block = np.empty((n_rows, n_cols), dtype=np.float32)
        self.grad_bias = np.empty(n_rows, dtype=np.float32)
        self.grad_in = np.empty(n_cols, dtype=np.float32)


def _workspace(model: SparseMLP, i: int, rows: int, cols: int) -> CompiledLayer:
    """Layer i's arrays for a block of rows x cols, reused from step to step."""
    work = model._work[i]
    if work is None or work.block.shape != (rows, cols):
        layer = model.layers[i]
        work = CompiledLayer(layer.weight, layer.bias, rows, cols)  # type: ignore[arg-type]
        model._work[i] = work
    return work


def forward(model: SparseMLP, x: torch.Tensor) -> torch.Tensor:
    """The training forward pass of one example, on the same blocks as the torch path:
    log-probabilities (1, classes). The layers' blocks are kept in `model.compiled_layers`,
    each layer's input in `model._trace` for the backward pass."""
    h = np.ascontiguousarray(x.detach().numpy().reshape(-1), dtype=np.float32)
    prev = ALL
    model._trace = []  # a forward pass never followed by its backward pass leaves nothing
    for i in range(model.arch.depth):
        units = model.single_active(i, h[None, :], None if i == 0 else prev)
        work = _workspace(model, i, len(units), len(h))
        work.rows, work.cols = units, prev
        w, b = model._arrays[i]
        kernels.layer_forward(w, b, units, prev, h, work.block, work.bias_block, work.out, True)
        model.compiled_layers.append(work)
        model._active_sum[i] += len(units)
        model._trace.append(h)
        h, prev = work.out, units
    work = _workspace(model, model.arch.depth, model.arch.classes, len(h))
    work.rows, work.cols = ALL, prev
    w, b = model._arrays[-1]
    kernels.output_forward(w, b, prev, h, work.block, work.bias_block, work.out)
    model.compiled_layers.append(work)
    model._trace.append(h)
    return torch.from_numpy(work.out).unsqueeze(0)


def backward(model: SparseMLP, grad_log_probs: np.ndarray) -> None:
    """Every block's gradient from d loss / d log-probabilities, layer by layer down (no
    gradient for the network's input), into the layers' gradient arrays."""
    grad = np.ascontiguousarray(grad_log_probs.reshape(-1), dtype=np.float32)
    layers, trace = model.compiled_layers, model._trace
    last = len(layers) - 1
    grad_logits = np.empty_like(grad)
    kernels.log_softmax_backward(layers[last].out, grad, grad_logits)
    grad = grad_logits
    for i in range(last, -1, -1):
        work, h_in = layers[i], trace[i]
        kernels.layer_backward(
            work.block, h_in, work.out, grad, work.grad_block, work.grad_bias, work.grad_in,
            i != last, i > 0,
        )  # fmt: skip
        grad = work.grad_in
    model._trace = []


class CompiledStep(torch.autograd.Function):
    """Log-probabilities of one example by the kernels; the backward pass fills the blocks'
    gradients (autograd sees only an anchor input, so that `loss.backward()` reaches it)."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, x: torch.Tensor, model: SparseMLP) -> torch.Tensor:
        ctx.model = model
        return forward(model, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        backward(ctx.model, grad.numpy())
        return None, None, None


def update(
    layers: list[CompiledLayer],
    arrays: dict[int, tuple[np.ndarray, np.ndarray]],
    kind: str,
    lr: float,
    momentum: float,
    betas: tuple[float, float],
    eps: float,
    step: int,
) -> None:
    """The lazy optimizer's update of every layer's blocks, in place in the parameters and
    their state (`arrays`: numpy views of each parameter and its state, by the parameter's
    id; Adam's state is its two moments stacked, SGD's the momentum buffer)."""
    for layer in layers:
        weight, weight_state = arrays[id(layer.weight)]
        bias, bias_state = arrays[id(layer.bias)]
        if kind == "adam":
            kernels.adam_layer(
                weight, weight_state, bias, bias_state, layer.rows, layer.cols,
                layer.grad_block, layer.grad_bias, lr, betas[0], betas[1], eps, step,
            )  # fmt: skip
        else:  # the buffers are unused without momentum
            kernels.sgd_layer(
                weight, weight_state, bias, bias_state, layer.rows, layer.cols,
                layer.grad_block, layer.grad_bias, lr, momentum,
            )  # fmt: skip
