"""ADAPTIVE-DROPOUT, or standout (Ba & Frey 2013; paper §5.1).

Each hidden unit's keep probability comes from its own pre-activation: for z = a W + b,
pi = sigmoid(alpha * z + beta) (the standout network shares the layer's weights, scaled by
alpha and shifted by beta, Ba & Frey §3), the mask is m ~ Bernoulli(pi), and the layer
outputs m * relu(z) while training and its expectation pi * relu(z) at evaluation. The mask is
a sample: no gradient flows through pi (as in Ba & Frey's weight-tied standout).

It needs the full z to decide which units to keep, so it cannot skip any multiplication: the
paper measures its overhead (Tables 4, 5), and so do we.

Defaults: alpha = 1, beta = -3. The paper sets the keep rate to 5% to match ALSH-APPROX.
sigmoid(-3) = 4.7%, and the spread of z at PyTorch's initialisation (std about 0.58 on
standardised 784-pixel inputs) raises the mean of sigmoid(z - 3) to about 5.4% for the first
layer; deeper layers see sparser inputs and keep closer to 4.7%. The measured keep rate of every
layer is recorded every epoch (`keep_rate.layer{i}`); tests/test_methods.py checks that it is
near 5% at initialisation on MNIST-shaped data.

Published pitfall avoided (methods.md): the authors used relu(0.5 z + 1) as the
"probability" (>= 1 for every unit with z >= 0, so almost nothing was dropped) and sampled
masks at test time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from methods.base import Architecture, MethodModel, linear_layers


class Standout(MethodModel):
    def __init__(
        self,
        arch: Architecture,
        alpha: float,
        beta: float,
        generator: torch.Generator,
        sampling_generator: torch.Generator,
    ):
        super().__init__(sampling_generator)
        self.arch = arch
        self.alpha, self.beta = alpha, beta
        self.layers = linear_layers(arch, generator)
        self._kept_sum = [0.0] * arch.depth
        self._steps = 0

    def keep_probability(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.alpha * z.detach() + self.beta)  # (B, width)

    def _hidden(self, x: torch.Tensor, sample: bool, record: bool) -> list[torch.Tensor]:
        acts, h = [], x
        for i, layer in enumerate(self.layers[:-1]):
            z = layer(h)  # (B, width): dense, the whole pre-activation is needed
            pi = self.keep_probability(z)
            if sample:
                # A diverged network has NaN pre-activations: drop those units (their NaN
                # still reaches the loss, so the cell is recorded as diverged instead of
                # torch.bernoulli raising on probabilities outside [0, 1]). Finite
                # probabilities, hence every draw and result, are unchanged.
                mask = torch.bernoulli(pi.nan_to_num(nan=0.0), generator=self.sampling_generator)
                h = F.relu(z) * mask
                if record:
                    self._kept_sum[i] += float(mask.mean())
            else:
                h = F.relu(z) * pi  # the expectation over masks
            acts.append(h)
        return acts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._steps += 1
        h = self._hidden(x, sample=self.training, record=self.training)[-1]
        return F.log_softmax(self.layers[-1](h), dim=1)

    def epoch_stats(self) -> dict[str, float]:
        steps = max(self._steps, 1)
        stats = {f"keep_rate.layer{i + 1}": s / steps for i, s in enumerate(self._kept_sum)}
        self._kept_sum = [0.0] * self.arch.depth
        self._steps = 0
        return stats

    @torch.no_grad()
    def probe_error(self, x: torch.Tensor, batch_size: int) -> list[float]:
        """Sampled-mask activations against the expectation network the method evaluates."""
        saved = self.random_state()
        try:
            sampled = self._hidden(x, sample=True, record=False)
        finally:
            self.set_random_state(saved)
        expected = self._hidden(x, sample=False, record=False)
        return [
            float((s - e).norm() / e.norm()) if float(e.norm()) > 0 else float("nan")
            for s, e in zip(sampled, expected, strict=True)
        ]


def build(
    arch: Architecture,
    hyper: dict[str, Any],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> MethodModel:
    return Standout(
        arch, float(hyper["alpha"]), float(hyper["beta"]), generator, sampling_generator
    )
