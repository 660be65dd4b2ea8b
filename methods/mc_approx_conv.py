"""MC-APPROX on the CNN's convolutions (paper §8; the classifier stays exact): the same
column-row sampling as methods/mc_approx.py, with a convolution's pairs. In "backward" mode the
input gradient (a sum over output channels) is sampled over output channels and the weight
gradient (a sum over the batch) over examples; in "forward" mode the convolution itself is
sampled over its input channels.

Forward mode samples every convolution's input channels while training, so batch norm's
running statistics would be those of sampled outputs (5-40x the exact variances in the last
blocks) while evaluation runs exact convolutions: before every evaluation they are recomputed
from exact passes (`CNNModel.calibrate`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torch.nn.grad
from torch import nn

from methods.mc_approx import PairCounter, Sampling, keep_probabilities, sampling_of


class _BackwardSampledConv2d(torch.autograd.Function):
    """An exact convolution whose backward pass samples column-row pairs: the input gradient
    (a sum over output channels) over output channels, the weight gradient (a sum over the
    batch) over examples. The convolution analogue of `_BackwardSampledLinear`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, conv: MCConv2d) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return F.conv2d(x, weight, None, conv.stride, conv.padding)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        conv: MCConv2d = ctx.conv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # Pairs: output channel o, (grad_out[:, o], weight[o]).
            kept, scale = conv.choose(
                grad_out.transpose(0, 1).flatten(1).norm(dim=1), weight.flatten(1).norm(dim=1)
            )
            if kept.numel() == 0:  # no pair drawn: the estimate is exactly zero
                grad_x = torch.zeros_like(x)
            else:
                grad_x = torch.nn.grad.conv2d_input(
                    x.shape,
                    weight.index_select(0, kept),
                    grad_out.index_select(1, kept) * scale.view(1, -1, 1, 1),
                    conv.stride,
                    conv.padding,
                )
            conv.count("grad_input", kept.numel())
        if ctx.needs_input_grad[1]:
            # Pairs: example b, (grad_out[b], x[b]).
            kept, scale = conv.choose(grad_out.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
            if kept.numel() == 0:
                grad_w = torch.zeros_like(weight)
            else:
                grad_w = torch.nn.grad.conv2d_weight(
                    x.index_select(0, kept),
                    weight.shape,
                    grad_out.index_select(0, kept) * scale.view(-1, 1, 1, 1),
                    conv.stride,
                    conv.padding,
                )
            conv.count("grad_weight", kept.numel())
        return grad_x, grad_w, None


class MCConv2d(nn.Conv2d, PairCounter):
    """A bias-free convolution (as in ResNet) with MC-APPROX sampling in training: in
    "forward" mode over input channels, in "backward" mode as `_BackwardSampledConv2d`."""

    def __init__(
        self, conv: nn.Conv2d, mode: str, sampling: Sampling, generator: torch.Generator | None
    ):
        assert conv.bias is None and conv.groups == 1 and conv.dilation == (1, 1)
        assert isinstance(conv.padding, tuple)
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            (kh, kw),
            stride=(sh, sw),
            padding=(ph, pw),
            bias=False,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
        self.mode = mode
        self.sampling = sampling
        self.generator = generator
        self.probing = False  # sample in evaluation mode too, uncounted (the probe)
        self.reset_counts()

    def choose(
        self, a_norms: torch.Tensor, b_norms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept pair indices and their 1/p scales (all pairs, scale 1, when k covers them)."""
        n = a_norms.numel()
        k = self.sampling.pairs_to_keep(n)
        if k >= n:
            return torch.arange(n), torch.ones(n)
        p = keep_probabilities(a_norms.detach(), b_norms.detach(), k, self.sampling.uniform_mix)
        kept = (torch.rand(n, generator=self.generator) < p).nonzero().squeeze(1)
        return kept, p.index_select(0, kept).reciprocal()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and not (self.probing and self.mode == "forward"):
            return F.conv2d(x, self.weight, None, self.stride, self.padding)
        if self.mode == "forward":
            # Pairs: input channel c, (x[:, c], weight[:, c]).
            kept, scale = self.choose(
                x.transpose(0, 1).flatten(1).norm(dim=1),
                self.weight.transpose(0, 1).flatten(1).norm(dim=1),
            )
            if not self.probing:
                self.count("forward", kept.numel())
            if kept.numel() == 0:  # no channel drawn: the estimate is exactly zero
                return F.conv2d(
                    torch.zeros_like(x[:, :1]), self.weight[:, :1], None, self.stride, self.padding
                )
            x_kept = x.index_select(1, kept) * scale.view(1, -1, 1, 1)
            return F.conv2d(
                x_kept, self.weight.index_select(1, kept), None, self.stride, self.padding
            )
        out: torch.Tensor = _BackwardSampledConv2d.apply(x, self.weight, self)
        return out


def approximate_convolutions(
    backbone: nn.Module, hyper: dict[str, Any], generator: torch.Generator
) -> nn.Module:
    """Replace every convolution of a CNN backbone by its MC-APPROX version (paper §8: the
    convolutions are approximated, the classifier stays exact)."""
    for name, child in list(backbone.named_children()):
        if isinstance(child, nn.Conv2d):
            setattr(
                backbone, name, MCConv2d(child, str(hyper["mode"]), sampling_of(hyper), generator)
            )
        else:
            approximate_convolutions(child, hyper, generator)
    return backbone


@torch.no_grad()
def probe_backbone(backbone: nn.Module, x: torch.Tensor, batch_size: int) -> list[float]:
    """For a backbone whose convolutions sample their input channels (forward mode): the
    relative error ||f_approx - f|| / ||f|| of its output features (the classifier's input)
    on the probe batch, in evaluation mode (batch norm's running statistics) both ways; empty
    in backward mode, where the forward pass is exact. Draws from the sampling generator:
    the caller saves and restores its state."""
    convs = [m for m in backbone.modules() if isinstance(m, MCConv2d) and m.mode == "forward"]
    if not convs:
        return []
    num = den = 0.0
    for start in range(0, len(x), batch_size):
        chunk = x[start : start + batch_size]
        exact = backbone(chunk)
        for conv in convs:
            conv.probing = True
        try:
            approx = backbone(chunk)
        finally:
            for conv in convs:
                conv.probing = False
        num += float((approx - exact).pow(2).sum())
        den += float(exact.pow(2).sum())
    return [math.sqrt(num / den) if den > 0 else float("nan")]


def conv_stats(backbone: nn.Module) -> dict[str, float]:
    stats = {}
    convs = [m for m in backbone.modules() if isinstance(m, MCConv2d)]
    for i, conv in enumerate(convs, start=1):
        for product, mean in conv.take_stats().items():
            stats[f"sampled_pairs.{product}.conv{i}"] = mean
    return stats
