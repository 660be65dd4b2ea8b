"""STANDARD: exact training of a ReLU MLP (paper §4.1, Eq. 1-2).

It is the yardstick every time ratio divides by, so it is exactly the plain PyTorch loop a
researcher would write: an `nn.Sequential` of Linear and ReLU, log-softmax, NLL loss, and a
stock optimizer. Anything slower would flatter the sampling methods.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Architecture, MethodModel, init_linear_


class StandardMLP(MethodModel):
    def __init__(self, arch: Architecture, generator: torch.Generator):
        super().__init__()  # exact: no sampling generator
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(arch.layer_sizes()):
            linear = nn.Linear(fan_in, fan_out)
            init_linear_(linear, generator)
            layers.append(linear)
            if i < arch.depth:  # ReLU after every hidden layer, none after the output
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x), dim=1)  # (B, F) -> (B, classes), over classes


def build(
    arch: Architecture,
    hyper: dict[str, object],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> StandardMLP:
    return StandardMLP(arch, generator)
