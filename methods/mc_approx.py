"""MC-APPROX (Adelman et al. 2021; paper §6.2): Bernoulli column-row sampling of products.

To approximate A B (A: N x n, B: n x p), pair i (column i of A, row i of B) is kept with
probability p_i = min(1, k |A[:, i]| |B[i, :]| / sum_j |A[:, j]| |B[j, :]|) (paper Eq. 8),
independently, and kept pairs are scaled by 1/p_i:  A B ~ sum_{i kept} A[:, i] B[i, :] / p_i.
The estimate is unbiased for fixed A and B, and exact when k covers every pair (k >= n: every
pair is kept, nothing is sampled). Kept pairs are gathered and scaled elementwise; no dense
diagonal sampling or scaling matrix is ever formed.

Modes (`mode`):
- "backward" (default, what the paper evaluates, §7 and §11.1): the forward pass is exact; in
  the backward pass of every linear layer, the input gradient dY W is sampled over the output
  units and the weight gradient dY^T X over the examples of the batch (so at batch 1 the
  weight gradient is exact and only the input gradient is sampled). The bias gradient is the
  exact column sum of dY.
- "forward": the forward product X W^T is sampled over the input features, and gradients are
  those of the sampled product.

How many pairs each product keeps, in expectation: max(min_k, ceil(`sample_ratio` x pairs))
(default 0.1, the paper's "sampling ratio p about 0.1" of §10.2, which also says MC-APPROX
does more arithmetic than ALSH-APPROX's 5%; the reference MLP used 0.9 with min_k 10); with
`sample_ratio` = 0, `k` pairs per product (§9.4's k = 10: about 1% of a 1000-unit product,
far noisier; the study's job files run it as a labelled ablation). So at width 1000 and
ratio 0.1 the input gradient of a hidden layer keeps 100 of 1000 output units, and the
weight gradient at batch 20 keeps max(10, 2) = 10 of the 20 examples. `uniform_mix` mixes
that share of the uniform distribution into Eq. 8 (the reference code used 0.1; Eq. 8 itself
is 0). Every layer is approximated, the output layer included; evaluation is exact.
Sampled-pair counts per product and layer are recorded (`sampled_pairs.<product>.layer{i}`,
layer depth + 1 being the output layer).

The CNN's convolutions (ResNet-18, paper §8) sample the same way: methods/mc_approx_conv.py.

Published pitfall avoided (methods.md): log-softmax is over the classes (dim 1), not the
batch, so batch 1 has non-zero gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import (
    Architecture,
    MethodModel,
    Optimizer,
    TrainSettings,
    linear_layers,
    make_dense_optimizer,
)

PRODUCTS = ("forward", "grad_input", "grad_weight")


@dataclass(frozen=True)
class Sampling:
    """How many pairs each product keeps, and the probabilities' uniform share."""

    k: int
    sample_ratio: float = 0.0  # the dataclass's own default: k pairs (the registry's is 0.1)
    min_k: int = 10
    uniform_mix: float = 0.0

    def pairs_to_keep(self, n: int) -> int:
        if self.sample_ratio > 0:
            return max(self.min_k, math.ceil(self.sample_ratio * n))
        return self.k


def keep_probabilities(
    a_norms: torch.Tensor, b_norms: torch.Tensor, k: int, uniform_mix: float = 0.0
) -> torch.Tensor:
    """Eq. 8: p_i = min(1, k w_i / sum_j w_j), w_i = |A[:, i]| |B[i, :]| (optionally mixed
    with the uniform distribution). Pairs with w_i = 0 contribute nothing and get p_i = 0
    unless mixed."""
    weights = a_norms * b_norms  # (n,)
    n = weights.numel()
    # All-zero weights give share 0 and keep nothing: the product is exactly 0 then anyway.
    # (No branch on the total: reading a tensor's value costs a synchronisation per call.)
    share = weights / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)
    if uniform_mix:
        share = (1 - uniform_mix) * share + uniform_mix / n
    return (k * share).clamp_(max=1.0)


def choose_pairs(
    a_norms: torch.Tensor,
    b_norms: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The kept pairs' indices and 1/p scales, or None when every pair is kept (k >= n)."""
    n = a_norms.numel()
    k = sampling.pairs_to_keep(n)
    if k >= n:
        return None
    # The probabilities are constants of the estimator, not part of what is differentiated.
    p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, sampling.uniform_mix)
    kept = (torch.rand(n, generator=generator, dtype=p.dtype) < p).nonzero().squeeze(1)
    return kept, p.index_select(0, kept).reciprocal()


def column_norms(a: torch.Tensor) -> torch.Tensor:
    """|a[:, i]| for every column: as a sum of squares, since torch's norm over dim 0 of a
    short, wide matrix is a strided reduction 10x slower (a (20, 1000) one: 140 us)."""
    return a.mul(a).sum(dim=0).sqrt()


def sampled_matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None,
    b_norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Unbiased estimate of a @ b ((N, n) @ (n, p)) by Bernoulli column-row sampling; returns
    the estimate and the number of pairs kept. `b_norms`: b's row norms, if already known."""
    n = a.shape[1]
    if sampling.pairs_to_keep(n) >= n:
        return a @ b, n  # every pair kept: the exact product
    chosen = choose_pairs(
        column_norms(a.detach()),
        b.detach().norm(dim=1) if b_norms is None else b_norms,
        sampling,
        generator,
    )
    assert chosen is not None
    kept, scale = chosen  # (c,), (c,)
    a_kept = a.index_select(1, kept) * scale  # (N, c), scaled elementwise
    return a_kept @ b.index_select(0, kept), kept.numel()  # (N, c) @ (c, p)


def _layer_backward(
    layer: MCLinear,
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    need_input: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """The backward pass of one linear layer y = x W^T + b in backward mode: the input
    gradient dY W sampled over the output units, the weight gradient dY^T X over the
    examples, the bias gradient exact."""
    grad_x = None
    if need_input:
        # (B, out) @ (out, in): column-row pairs over the output units
        units = grad_out.shape[1]
        norms = None if layer.sampling.pairs_to_keep(units) >= units else layer.weight_row_norms()
        grad_x, kept_pairs = sampled_matmul(
            grad_out, weight, layer.sampling, layer.generator, b_norms=norms
        )
        layer.count("grad_input", kept_pairs)
    # (out, B) @ (B, in): column-row pairs over the examples of the batch
    batch = len(x)
    chosen = (
        None
        if layer.sampling.pairs_to_keep(batch) >= batch  # e.g. batch 1: exact
        else choose_pairs(grad_out.norm(dim=1), x.norm(dim=1), layer.sampling, layer.generator)
    )
    if chosen is None:
        coef, x_kept, z_kept = grad_out, x, out - bias  # every example
    else:
        kept, scale = chosen
        coef = grad_out.index_select(0, kept) * scale.unsqueeze(1)  # (c, out)
        x_kept = x.index_select(0, kept)  # (c, in)
        z_kept = out.index_select(0, kept) - bias  # (c, out): W x of those examples
    layer.count("grad_weight", len(x_kept))
    layer.note_weight_gradient(coef, x_kept, z_kept)
    if layer.factored_update:  # applied as a rank-c update by the optimizer (FactoredSGD)
        layer.defer_weight_gradient(coef, x_kept)
        return grad_x, None, grad_out.sum(dim=0)
    return grad_x, coef.t() @ x_kept, grad_out.sum(dim=0)  # (out, c) @ (c, in)


class _BackwardSampledLinear(torch.autograd.Function):
    """y = x W^T + b exactly; backward samples dY W (over outputs) and dY^T X (over examples)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, layer: MCLinear
    ) -> torch.Tensor:
        out = torch.addmm(bias, x, weight.t())
        ctx.save_for_backward(x, weight, bias, out)
        ctx.layer = layer
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        x, weight, bias, out = ctx.saved_tensors
        grad_x, grad_w, grad_b = _layer_backward(
            ctx.layer, grad_out, x, weight, bias, out, need_input=ctx.needs_input_grad[0]
        )
        return grad_x, grad_w, grad_b, None


class _BackwardSampledMLP(torch.autograd.Function):
    """The whole ReLU MLP (to its logits) as one autograd node, in backward mode.

    The same arithmetic and the same random draws, in the same order, as a chain of
    `_BackwardSampledLinear` and ReLU nodes; as one node it costs one Python call in each
    direction instead of two per layer, which at batch 1 is a good part of a step."""

    @staticmethod
    def forward(
        ctx: Any, layers: tuple[MCLinear, ...], x: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        inputs, outs = [x], []
        h = x
        for i in range(len(layers)):
            out = torch.addmm(params[2 * i + 1], h, params[2 * i].t())  # (B, in) -> (B, out)
            outs.append(out)
            if i < len(layers) - 1:
                h = torch.relu(out)
                inputs.append(h)
        ctx.save_for_backward(*inputs, *outs, *params)
        ctx.layers = layers
        return outs[-1]

    @staticmethod
    def backward(ctx: Any, grad_logits: torch.Tensor) -> tuple[Any, ...]:
        layers = ctx.layers
        n = len(layers)
        saved = ctx.saved_tensors
        inputs, outs, params = saved[:n], saved[n : 2 * n], saved[2 * n :]
        grads: list[torch.Tensor | None] = [None] * (2 * n)
        grad = grad_logits
        grad_x = None
        for i in reversed(range(n)):
            if i < n - 1:
                # Through the ReLU: its own backward kernel (7x a masked_fill with its mask)
                grad = torch.ops.aten.threshold_backward(grad, inputs[i + 1], 0)
            need_input = i > 0 or ctx.needs_input_grad[1]
            grad_in, grads[2 * i], grads[2 * i + 1] = _layer_backward(
                layers[i], grad, inputs[i], params[2 * i], params[2 * i + 1], outs[i], need_input
            )
            if i > 0:
                assert grad_in is not None
                grad = grad_in
            else:
                grad_x = grad_in
        return (None, grad_x, *grads)


class PairCounter:
    """Counts the column-row pairs each sampled product kept, for the epoch's statistics."""

    def reset_counts(self) -> None:
        self.kept = dict.fromkeys(PRODUCTS, 0)
        self.calls = dict.fromkeys(PRODUCTS, 0)

    def count(self, product: str, kept: int) -> None:
        self.kept[product] += kept
        self.calls[product] += 1

    def take_stats(self) -> dict[str, float]:
        """Mean pairs kept per call of each product since the last call; then reset."""
        stats = {p: self.kept[p] / self.calls[p] for p in PRODUCTS if self.calls[p]}
        self.reset_counts()
        return stats


@dataclass(slots=True)
class StepState:
    """What a layer carries from one step to the next, as plain Python values: setting an
    nn.Module's attribute costs several microseconds, and these change at every step."""

    tracked_steps: int = -1  # steps since row_sq was read exactly; -1: not valid
    pending: tuple[torch.Tensor, torch.Tensor] | None = None  # the SGD step's effect on row_sq
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # the deferred weight gradient


class MCLinear(nn.Linear, PairCounter):
    """A linear layer whose training-time products are sampled; exact in evaluation."""

    row_sq: torch.Tensor
    track_norms: bool  # set by the optimizer when it is plain SGD
    factored_update: bool  # ... and so is this: the weight gradient is kept as its factors

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        mode: str,
        sampling: Sampling,
        generator: torch.Generator | None,
    ):
        super().__init__(fan_in, fan_out)
        self.mode = mode
        self.sampling = sampling
        self.generator = generator
        self.reset_counts()
        # Squared norms of the weight rows, for Eq. 8's probabilities of the input gradient,
        # kept up to date through plain SGD steps instead of re-reading the whole matrix
        # every step (see `note_weight_gradient`); buffers, so a checkpoint carries them.
        self.register_buffer("row_sq", torch.zeros(fan_out, dtype=torch.float64))
        # Plain Python state (a checkpoint carries it as extra state): at batch 1, every
        # tensor operation in a step shows, and reading a tensor's value synchronises.
        self.track_norms = False
        self.factored_update = False
        self.step_state = StepState()

    def weight_row_norms(self) -> torch.Tensor:
        """|W[i, :]| for every output unit: exact, or tracked through SGD steps."""
        if not self.track_norms:
            return self.weight.detach().norm(dim=1)
        if self.step_state.tracked_steps < 0:
            self.row_sq.copy_(self.weight.detach().double().pow(2).sum(dim=1))
            self.step_state.tracked_steps = 0
        return self.row_sq.clamp(min=0).sqrt().float()

    def note_weight_gradient(
        self, coef: torch.Tensor, x_kept: torch.Tensor, z_kept: torch.Tensor
    ) -> None:
        """Remember what the coming SGD step W <- W - lr G does to the row norms, for the
        weight gradient G = coef^T x_kept:  |W_i - lr G_i|^2 = |W_i|^2 - 2 lr W_i.G_i +
        lr^2 |G_i|^2, with W_i.G_i = sum_b coef[b, i] (W x_b)_i (z_kept: the forward pass's
        pre-activations minus the bias) and |G_i|^2 = coef_i^T (x_kept x_kept^T) coef_i, all
        O(out x kept) instead of O(out x in)."""
        if not self.track_norms:
            return
        # float32 terms added to float64 sums: per-step rounding ~1e-7, re-read exactly
        # every REFRESH_EVERY steps.
        w_dot_g = (coef * z_kept).sum(dim=0)  # (out,)
        gram = x_kept @ x_kept.t()  # (c, c)
        g_sq = (coef * (gram @ coef)).sum(dim=0)  # (out,)
        self.step_state.pending = (w_dot_g, g_sq)

    def defer_weight_gradient(self, coef: torch.Tensor, x_kept: torch.Tensor) -> None:
        """Keep the weight gradient G = coef^T x_kept as its two factors (a backward pass
        before the step adds to it, as autograd accumulates into .grad)."""
        if self.step_state.factors is not None:
            coef = torch.cat((self.step_state.factors[0], coef))
            x_kept = torch.cat((self.step_state.factors[1], x_kept))
        self.step_state.factors = (coef, x_kept)

    def after_sgd_step(self, lr: float, refresh_every: int) -> None:
        """Apply the pending SGD step to the tracked norms; re-read the weights exactly every
        `refresh_every` steps, so rounding never accumulates for long."""
        pending = self.step_state.pending
        self.step_state.pending = None
        if pending is None or self.step_state.tracked_steps < 0:
            return
        w_dot_g, g_sq = pending
        self.row_sq.add_(w_dot_g, alpha=-2 * lr).add_(g_sq, alpha=lr * lr)
        steps = self.step_state.tracked_steps + 1
        self.step_state.tracked_steps = -1 if steps >= refresh_every else steps

    def get_extra_state(self) -> dict[str, Any]:
        return {"tracked_steps": self.step_state.tracked_steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step_state.tracked_steps = int(state.get("tracked_steps", -1))

    def sampled_forward(self, x: torch.Tensor, record: bool) -> torch.Tensor:
        # (B, in) @ (in, out): column-row pairs over the input features
        y, kept = sampled_matmul(x, self.weight.t(), self.sampling, self.generator)
        if record:
            self.count("forward", kept)
        return y + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)
        if self.mode == "forward":
            return self.sampled_forward(x, record=True)
        out: torch.Tensor = _BackwardSampledLinear.apply(x, self.weight, self.bias, self)
        return out


class FactoredSGD:
    """Plain SGD for backward mode. The weight gradient a layer samples over the examples,
    G = coef^T x_kept (rank <= the pairs kept), is never formed: the step applies it as
    W <- W - lr coef^T x_kept, one rank-c BLAS update that reads and writes W once, where
    forming G and then stepping writes a full gradient matrix and reads it back (at batch
    20 the product is bound by memory, not arithmetic: without this, sampling half the
    examples saved almost no time). The sum is the same, rounded differently (a few ulp).
    Biases step as torch's SGD steps them (`add_(grad, alpha=-lr)`, bit for bit), without
    its per-step bookkeeping; torch's SGD is kept for its state dict. Each layer whose input
    gradient is sampled is then told its step happened, so its tracked weight-row norms
    follow the weights (`MCLinear.note_weight_gradient`)."""

    REFRESH_EVERY = 1000  # steps between exact re-reads of the norms

    def __init__(
        self,
        sgd: torch.optim.Optimizer,
        layers: list[MCLinear],
        tracked: list[MCLinear],
        lr: float,
    ):
        self.sgd, self.layers, self.tracked, self.lr = sgd, layers, tracked, lr
        for layer in layers:
            layer.factored_update = True
        for layer in tracked:
            layer.track_norms = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        for layer in self.layers:
            layer.step_state.factors = None
            for param in (layer.weight, layer.bias):
                if param.grad is not None:
                    param.grad = None if set_to_none else param.grad.zero_()

    def implementation(self) -> str:
        return "sgd:factored-weights+tracked-norms"

    @torch.no_grad()
    def step(self) -> None:
        for layer in self.layers:
            state, bias = layer.step_state, layer.bias
            if bias.grad is not None:
                bias.add_(bias.grad, alpha=-self.lr)
            if state.factors is not None:
                coef, x_kept = state.factors
                state.factors = None
                layer.weight.addmm_(coef.t(), x_kept, alpha=-self.lr)
        for layer in self.tracked:
            layer.after_sgd_step(self.lr, self.REFRESH_EVERY)

    def state_dict(self) -> dict[str, Any]:
        return self.sgd.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sgd.load_state_dict(state)


class MCApprox(MethodModel):
    def __init__(
        self,
        arch: Architecture,
        mode: str,
        sampling: Sampling,
        generator: torch.Generator,
        sampling_generator: torch.Generator,
    ):
        super().__init__(sampling_generator)
        self.arch = arch
        self.mode = mode
        self.layers = linear_layers(
            arch,
            generator,
            lambda fan_in, fan_out: MCLinear(fan_in, fan_out, mode, sampling, sampling_generator),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode == "backward":
            layers = tuple(m for m in self.layers if isinstance(m, MCLinear))
            params = [t for m in layers for t in (m.weight, m.bias)]
            logits: torch.Tensor = _BackwardSampledMLP.apply(layers, x, *params)
            return F.log_softmax(logits, dim=1)
        h = x
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return F.log_softmax(self.layers[-1](h), dim=1)

    def make_optimizer(self, settings: TrainSettings) -> Optimizer:
        optimizer = make_dense_optimizer(self.parameters(), settings)
        if self.mode != "backward" or settings.optimizer != "sgd" or settings.momentum:
            return optimizer  # norms are read from the weights at every step
        # Only layers whose input gradient is sampled use the norms: not the first (its
        # input needs no gradient), nor a layer whose k covers all its output units.
        linears = [m for m in self.layers if isinstance(m, MCLinear)]
        tracked = [
            m
            for i, m in enumerate(linears)
            if i > 0 and m.sampling.pairs_to_keep(m.out_features) < m.out_features
        ]
        return FactoredSGD(optimizer, linears, tracked, settings.lr)

    def end_epoch(self) -> None:
        for layer in self.layers:
            if isinstance(layer, MCLinear):
                layer.step_state.tracked_steps = -1  # an exact re-read at each epoch start

    def epoch_stats(self) -> dict[str, float]:
        stats = {}
        for i, layer in enumerate(self.layers, start=1):
            assert isinstance(layer, MCLinear)
            for product, mean in layer.take_stats().items():
                stats[f"sampled_pairs.{product}.layer{i}"] = mean
        return stats

    @torch.no_grad()
    def probe_error(self, x: torch.Tensor, batch_size: int) -> list[float]:
        """Backward mode computes the forward pass exactly: nothing to probe."""
        if self.mode != "forward":
            return []
        saved = self.random_state()
        try:
            errors_num = [0.0] * self.arch.depth
            errors_den = [0.0] * self.arch.depth
            for start in range(0, len(x), batch_size):
                approx = exact = x[start : start + batch_size]
                for i, layer in enumerate(self.layers[:-1]):
                    assert isinstance(layer, MCLinear)
                    approx = F.relu(layer.sampled_forward(approx, record=False))
                    exact = F.relu(F.linear(exact, layer.weight, layer.bias))
                    errors_num[i] += float((approx - exact).pow(2).sum())
                    errors_den[i] += float(exact.pow(2).sum())
        finally:
            self.set_random_state(saved)
        return [
            math.sqrt(a / b) if b > 0 else float("nan")
            for a, b in zip(errors_num, errors_den, strict=True)
        ]


def sampling_of(hyper: dict[str, Any]) -> Sampling:
    return Sampling(
        k=int(hyper["k"]),
        sample_ratio=float(hyper["sample_ratio"]),
        min_k=int(hyper["min_k"]),
        uniform_mix=float(hyper["uniform_mix"]),
    )


def build(
    arch: Architecture,
    hyper: dict[str, Any],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> MethodModel:
    return MCApprox(arch, str(hyper["mode"]), sampling_of(hyper), generator, sampling_generator)
