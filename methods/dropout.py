"""DROPOUT (Srivastava et al. 2014; paper §5.1), computing only the kept units.

Each hidden unit is kept with probability `keep` (paper §9.4: 0.05, to match ALSH-APPROX's 5%
active nodes) and its activation scaled by 1/keep while training (inverted dropout), so that
evaluation is the plain exact network.

The paper frames dropout as sampling columns of W (§4.2): with one mask per mini-batch
(`mask = "batch"`, the default) the kept units are a set of columns shared by the batch, and
only those are computed, back-propagated and updated (methods/sparse.py): at keep = 0.05 a
hidden layer costs about 5% of a dense one, and the 1000 x 1000 middle layers about 0.25%.
`mask = "sample"` is classic dropout with an independent mask per example; the union of 20
examples' masks covers most units, so it is computed densely with a mask (and says so).

Published pitfalls avoided (methods.md): every hidden layer is registered and trained, the
mask is off at evaluation, the optimizer is created once, depth counts hidden layers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from methods.base import Architecture, MethodModel, linear_layers
from methods.sparse import ActiveUnits, SparseMLP


def kept_units(width: int, keep: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the units kept by independent Bernoulli(keep) draws, sorted."""
    draws = torch.rand(width, generator=generator)
    return (draws < keep).nonzero().squeeze(1)


class BatchMaskDropout(SparseMLP):
    """One Bernoulli(keep) set of kept units per hidden layer and mini-batch, sparse compute."""

    def __init__(
        self,
        arch: Architecture,
        keep: float,
        generator: torch.Generator,
        sampling_generator: torch.Generator,
    ):
        super().__init__(arch, generator, sampling_generator)
        self.keep = keep
        self._kept_sum = [0.0] * arch.depth
        self._draws = 0

    def active_for_layer(
        self, layer: int, h: torch.Tensor, prev: torch.Tensor | None, record: bool
    ) -> ActiveUnits:
        assert self.sampling_generator is not None
        kept = kept_units(self.arch.width, self.keep, self.sampling_generator)
        if record:
            self._kept_sum[layer] += kept.numel() / self.arch.width
            self._draws += layer == 0
        return ActiveUnits(kept, 1.0 / self.keep)

    def epoch_stats(self) -> dict[str, float]:
        stats = super().epoch_stats()
        draws = max(self._draws, 1)
        stats.update({f"keep_rate.layer{i + 1}": s / draws for i, s in enumerate(self._kept_sum)})
        self._kept_sum = [0.0] * self.arch.depth
        self._draws = 0
        return stats


class SampleMaskDropout(MethodModel):
    """Classic dropout: an independent mask per example, applied to a dense computation."""

    def __init__(
        self,
        arch: Architecture,
        keep: float,
        generator: torch.Generator,
        sampling_generator: torch.Generator,
    ):
        super().__init__(sampling_generator)
        self.arch = arch
        self.keep = keep
        self.layers = linear_layers(arch, generator)
        self._kept_sum = [0.0] * arch.depth
        self._steps = 0

    def _masked_hidden(self, x: torch.Tensor, record: bool) -> list[torch.Tensor]:
        assert self.sampling_generator is not None
        acts, h = [], x
        for i, layer in enumerate(self.layers[:-1]):
            h = F.relu(layer(h))  # (B, width), dense
            mask = torch.rand(h.shape, generator=self.sampling_generator) < self.keep
            h = h * mask / self.keep
            if record:
                self._kept_sum[i] += float(mask.float().mean())
            acts.append(h)
        return acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._steps += 1
            h = self._masked_hidden(x, record=True)[-1]
        else:
            h = x
            for layer in self.layers[:-1]:
                h = F.relu(layer(h))
        return F.log_softmax(self.layers[-1](h), dim=1)

    def epoch_stats(self) -> dict[str, float]:
        steps = max(self._steps, 1)
        stats = {f"keep_rate.layer{i + 1}": s / steps for i, s in enumerate(self._kept_sum)}
        self._kept_sum = [0.0] * self.arch.depth
        self._steps = 0
        return stats

    @torch.no_grad()
    def probe_error(self, x: torch.Tensor, batch_size: int) -> list[float]:
        saved = self.random_state()
        try:
            approx = self._masked_hidden(x, record=False)
        finally:
            self.set_random_state(saved)
        exact, h = [], x
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
            exact.append(h)
        return [float((a - e).norm() / e.norm()) for a, e in zip(approx, exact, strict=True)]


def build(
    arch: Architecture,
    hyper: dict[str, Any],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> MethodModel:
    keep = float(hyper["keep"])
    if hyper["mask"] == "sample":
        return SampleMaskDropout(arch, keep, generator, sampling_generator)
    return BatchMaskDropout(arch, keep, generator, sampling_generator)
