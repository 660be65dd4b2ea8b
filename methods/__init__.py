"""Training methods: one module per method, each holding all of that method's math (MC-APPROX's
sampled convolutions for the CNN in a second one, methods/mc_approx_conv.py).

`methods.registry` (pure, no torch) says which methods exist; `build` imports the chosen
method's module only when a cell runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from methods.registry import METHODS, MethodInfo

if TYPE_CHECKING:
    import torch

    from methods.base import Architecture, MethodModel

__all__ = ["METHODS", "MethodInfo", "build"]


def build(
    name: str,
    arch: Architecture,
    hyper: dict[str, Any],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> MethodModel:
    """Build method `name`'s model. `generator` draws the initial weights; `sampling_generator`
    every random choice the method makes while training (masks, samples, hash projections)."""
    module = importlib.import_module(METHODS[name].module)
    if arch.kind == "cnn":
        from methods import cnn

        return cnn.build(name, module.build, arch, hyper, generator, sampling_generator)
    model: MethodModel = module.build(arch, hyper, generator, sampling_generator)
    return model
