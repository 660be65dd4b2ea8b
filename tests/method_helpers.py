"""Helpers shared by the method tests: seeded generators and models with full hyperparameters."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import methods
from methods.base import Architecture, MethodModel, TrainSettings
from methods.registry import METHODS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def defaults(method: str, **overrides: Any) -> dict[str, Any]:
    hyper = {p.name: p.default for p in METHODS[method].params}
    hyper.update(overrides)
    return hyper


def build(method: str, arch: Architecture, **hyper: Any) -> MethodModel:
    return methods.build(method, arch, defaults(method, **hyper), gen(0), gen(1))


def train_steps(
    model: MethodModel, settings: TrainSettings, x: torch.Tensor, y: torch.Tensor, steps: int
) -> list[float]:
    optimizer = model.make_optimizer(settings)
    model.train()
    losses = []
    for step in range(1, steps + 1):
        loss = F.nll_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.upkeep(step, step * len(y))
        losses.append(float(loss.detach()))
    return losses
