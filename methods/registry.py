"""Which training methods exist, their hyperparameters, and their implementation versions.

Pure Python (no torch): the runner validates job files and derives cell keys from this
table without importing any method's math. Each method's math lives in its own module,
named by `MethodInfo.module`, and is imported only inside a cell.

`version` is part of every cell key: bump it whenever a change to a method's code would
change its results, so that finished cells computed by the old code are not reused.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.params import Param


@dataclass(frozen=True)
class MethodInfo:
    name: str
    version: int
    summary: str
    module: str  # the module holding the math; it defines `build(...)`
    params: tuple[Param, ...] = ()


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in [
        MethodInfo(
            name="standard",
            version=1,
            summary="Exact training of a ReLU MLP (paper §4.1); the yardstick for every ratio.",
            module="methods.standard",
        ),
    ]
}


def method_info(name: str) -> MethodInfo:
    return METHODS[name]
