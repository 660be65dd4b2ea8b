"""A cell: one fully resolved training run, and its content-derived key.

The key is a hash of everything that determines the cell's result: every parameter (defaults
included), the method's and the trainer's implementation versions, the dataset version and
the torch thread count. It does not depend on the cell's position in the grid, so adding an
axis value, a seed or an axis keeps every finished cell valid, and changing anything that
would change a result gives a new key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from methods.registry import METHODS
from runner.datasets.registry import DATASETS

# Bump when the shared training loop (runner/run/trainer.py) changes in a way that changes results.
TRAINER_VERSION = 1
# Bump when what `train_limit` selects changes; part of the key of those cells only (2: a
# seeded random subset, no longer the first N examples of the file).
TRAIN_LIMIT_VERSION = 2

KEY_LENGTH = 16  # hex digits of sha256: 64 bits, no collision in any realistic sweep


def canonical_json(obj: Any) -> str:
    """Stable JSON: sorted keys, no whitespace, floats by their shortest round-trip repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class Cell:
    """One training run. `values` holds every shared parameter and the method's own
    hyperparameters (as `<method>.<param>`), defaults filled in."""

    values: Mapping[str, Any]
    torch_threads: int
    # The job's shared grid axes (e.g. lr, width): shown in the label so that two cells that
    # differ only there can be told apart. Not part of the key.
    shown: tuple[str, ...] = field(default=(), compare=False)

    @property
    def method(self) -> str:
        return str(self.values["method"])

    @property
    def dataset(self) -> str:
        return str(self.values["dataset"])

    def identity(self) -> dict[str, Any]:
        """Everything the key is derived from."""
        identity = {
            "values": dict(self.values),
            "method_version": METHODS[self.method].version,
            "dataset_version": DATASETS[self.dataset].version,
            "trainer_version": TRAINER_VERSION,
            "torch_threads": self.torch_threads,
        }
        if self.values.get("train_limit") is not None:
            identity["train_limit_version"] = TRAIN_LIMIT_VERSION
        return identity

    @cached_property
    def key(self) -> str:
        digest = hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()
        return digest[:KEY_LENGTH]

    def method_params(self) -> dict[str, Any]:
        """The cell's method hyperparameters, by their bare names."""
        prefix = self.method + "."
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    def label(self) -> str:
        """A short human-readable name (not unique; the key is): method/dataset, depth,
        batch size, seed, the job's other grid axes (`shown`), and the
        method hyperparameters that differ from their defaults."""
        v = self.values
        text = f"{v['method']}/{v['dataset']} d{v['depth']} b{v['batch_size']} s{v['seed']}"
        if v.get("arch", "mlp") != "mlp":
            text += f" {v['arch']}"
        in_base = {"method", "dataset", "depth", "batch_size", "seed", "arch"}
        text += "".join(f" {name}={v[name]}" for name in self.shown if name not in in_base)
        defaults = {p.name: p.default for p in METHODS[self.method].params}
        extras = [
            f"{name}={value}"
            for name, value in sorted(self.method_params().items())
            if value != defaults.get(name)
        ]
        return text + (" " + " ".join(extras) if extras else "")

    def content(self) -> dict[str, Any]:
        """The cell itself as a plain, JSON-safe dict (kept with its result row)."""
        return {"key": self.key, "values": dict(self.values), "torch_threads": self.torch_threads}

    def to_payload(self) -> dict[str, Any]:
        """What travels to the worker: the content, and the label's axes for its messages."""
        return {**self.content(), "shown": list(self.shown)}

    @staticmethod
    def from_payload(payload: Mapping[str, Any]) -> Cell:
        cell = Cell(
            values=dict(payload["values"]),
            torch_threads=int(payload["torch_threads"]),
            shown=tuple(payload.get("shown", ())),
        )
        if "key" in payload and payload["key"] != cell.key:
            raise ValueError(
                f"cell payload key {payload['key']} does not match its content ({cell.key}): "
                "the worker runs a different version of the code than the driver"
            )
        return cell
