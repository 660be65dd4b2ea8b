"""ALSH-APPROX (Spring & Shrivastava 2017; Shrivastava & Li 2014; paper §5.2).

Each hidden layer keeps L hash tables of K-bit signed random projections (SRP) of its units'
weight vectors after the asymmetric transform P; an input is hashed after the transform Q,
and the units in its buckets are the ones most likely to have a large inner product with it
(maximum inner-product search, Eq. 4-5). Only those active units are computed; inactive units
are 0 (no rescaling), and only active weights receive gradients and updates (methods/sparse.py:
blocks of W, lazy Adam). The output layer and evaluation are exact.

Choices, all recorded through the hyperparameters (methods/registry.py):
- A unit's weight vector is its incoming weights plus its bias ([w; b]) and the query is
  [a; 1], so that the search is for the largest pre-activation w·a + b, bias included.
- P(w) = [w; |w|^2; |w|^4; ...; |w|^(2^m)] after scaling every weight vector by U / max |w|;
  Q(a) = [a / |a|; 1/2; ...; 1/2] (Eq. 3). K bits per table, L tables (paper: K=6, L=5, m=3,
  U=0.83). SRP hyperplanes are Gaussian, drawn once from the cell's sampling generator.
- Active set of one example: the union of its buckets, table by table, until at least
  `active_fraction` of the units (paper: 5%); a bucket larger than that is subsampled to that
  size; below it after all L tables, random units fill up to it. A mini-batch uses the union
  of its examples' active sets.
- Tables are rebuilt on the paper's schedule (§10.2): every `rebuild_early` training examples
  until `rebuild_switch` examples, then every `rebuild_late`, and at the end of every epoch
  unless the schedule rebuilt them after the epoch's last step already; the schedule counts
  from the latest rebuild. The paper counts images; `rebuild_unit = "steps"` counts optimizer
  steps instead (the same at batch 1; at batch 20, 20 times fewer rebuilds). The first tables
  are built from the weights actually trained. Rebuild time is upkeep, and also reported on
  its own (`rebuild_seconds`).

Published pitfalls avoided (methods.md): one forward pass per step, compute on active units
only (not a masked dense matmul), hashing randomness seeded, any batch size, and an optimizer
step that touches only active rows.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.base import Architecture, MethodModel
from methods.sparse import SparseMLP


def transform_p(weight: torch.Tensor, bias: torch.Tensor, m: int, U: float) -> torch.Tensor:
    """P([w; b]) for every unit: (n, in) and (n,) -> (n, in + 1 + m)."""
    wb = torch.cat([weight, bias.unsqueeze(1)], dim=1)  # (n, in + 1)
    norms = wb.norm(dim=1, keepdim=True)  # (n, 1)
    largest = float(norms.max())
    scale = U / largest if largest > 0 else 1.0
    wb, norms = wb * scale, norms * scale
    powers = [norms ** (2 ** (i + 1)) for i in range(m)]  # |w|^2, |w|^4, ..., |w|^(2^m)
    return torch.cat([wb, *powers], dim=1)


def transform_q(a: torch.Tensor, m: int) -> torch.Tensor:
    """Q([a; 1]) for a batch of queries: (B, in) -> (B, in + 1 + m)."""
    aug = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)  # (B, in + 1)
    aug = aug / aug.norm(dim=1, keepdim=True)
    return torch.cat([aug, torch.full((len(a), m), 0.5, dtype=a.dtype)], dim=1)


class LayerTables:
    """The L hash tables of one hidden layer, stored as sorted arrays (CSR), not dicts."""

    def __init__(
        self, fan_in: int, units: int, K: int, L: int, m: int, U: float, generator: torch.Generator
    ):
        self.K, self.L, self.m, self.U = K, L, m, U
        self.fan_in, self.units = fan_in, units
        # Hyperplanes over the transformed space (fan_in inputs, the bias, m norm terms).
        # Queries run at every step and example, on tiny arrays: numpy does them with far
        # less per-call overhead than torch; `_planes` is a numpy view of the same memory.
        self.planes = torch.randn(fan_in + 1 + m, K * L, generator=generator)
        self._planes = self.planes.numpy()
        self.refresh_constants()
        self._powers = 1 << np.arange(K)  # bit weights of one signature
        self.members = np.zeros((L, units), dtype=np.int64)  # units sorted by bucket
        self.offsets = np.zeros((L, 2**K + 1), dtype=np.int64)  # bucket starts

    def refresh_constants(self) -> None:
        """The parts of every query that do not depend on it (after `planes` changes)."""
        self._bias_row = self._planes[self.fan_in]  # (K*L,): the query's constant 1
        self._tail = 0.5 * self._planes[self.fan_in + 1 :].sum(axis=0)  # (K*L,): Q's m halves

    def signatures(self, bits: np.ndarray) -> np.ndarray:
        """(N, K*L) booleans -> (N, L) bucket numbers."""
        return (bits.reshape(len(bits), self.L, self.K) * self._powers).sum(axis=2)

    def projections(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """P([w; b]) @ planes for every unit, (n, K*L), without building P: the same sums,
        term by term, sparing a copy of the whole weight matrix at every rebuild."""
        norms = (weight.norm(dim=1).square_() + bias.pow(2)).sqrt_()  # |[w; b]|, (n,)
        largest = float(norms.max())
        scale = self.U / largest if largest > 0 else 1.0
        planes = self.planes
        dots = (weight @ planes[: self.fan_in]).addr_(bias, planes[self.fan_in])  # [w; b] part
        dots.mul_(scale)
        scaled = norms * scale
        for i in range(self.m):  # the m norm terms |w|^2, |w|^4, ..., |w|^(2^m)
            dots.addr_(scaled ** (2 ** (i + 1)), planes[self.fan_in + 1 + i])
        return dots

    def rebuild(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        codes = self.signatures((self.projections(weight, bias) > 0).numpy())  # (n, L)
        for t in range(self.L):
            self.members[t] = np.argsort(codes[:, t], kind="stable")
            counts = np.bincount(codes[:, t], minlength=2**self.K)
            self.offsets[t, 1:] = np.cumsum(counts)

    def query(self, h: torch.Tensor, prev: torch.Tensor | None) -> np.ndarray:
        """Bucket numbers (B, L) of the batch's inputs h (B, |prev|) to this layer, whose
        other inputs (units outside prev) are 0: Q([a; 1]) hashed on prev's rows only."""
        a = h.numpy()
        planes = self._planes[: self.fan_in] if prev is None else self._planes[prev.numpy()]
        dots = a @ planes + self._bias_row  # (B, |prev|) @ (|prev|, K*L): Q's [a; 1] part
        norm = np.sqrt(np.einsum("ij,ij->i", a, a) + 1.0)[:, None]  # |[a; 1]|
        return self.signatures(dots / norm + self._tail > 0)

    def bucket(self, table: int, code: int) -> np.ndarray:
        return self.members[table, self.offsets[table, code] : self.offsets[table, code + 1]]


class ALSHApprox(SparseMLP):
    def __init__(
        self,
        arch: Architecture,
        hyper: dict[str, Any],
        generator: torch.Generator,
        sampling_generator: torch.Generator,
    ):
        super().__init__(arch, generator, sampling_generator)
        self.K, self.L = int(hyper["K"]), int(hyper["L"])
        self.m, self.U = int(hyper["m"]), float(hyper["U"])
        self.fraction = float(hyper["active_fraction"])
        self.rebuild_early = int(hyper["rebuild_early"])
        self.rebuild_late = int(hyper["rebuild_late"])
        self.rebuild_switch = int(hyper["rebuild_switch"])
        self.count_steps = hyper["rebuild_unit"] == "steps"
        self._count = 0  # examples (or steps) seen at the latest upkeep
        self.target = max(1, math.ceil(self.fraction * arch.width))
        self.tables = [
            LayerTables(fan_in, fan_out, self.K, self.L, self.m, self.U, sampling_generator)
            for fan_in, fan_out in arch.layer_sizes()[:-1]
        ]
        # Python-level choices (subsampling, fills) use numpy, seeded from the same generator.
        seed = int(torch.randint(0, 2**62, (1,), generator=sampling_generator))
        self.rng = np.random.default_rng(seed)
        self.last_rebuild_at = 0  # examples (or steps) seen at the last scheduled rebuild
        self.rebuilds = 0
        self._rebuild_seconds = 0.0
        self._epoch_rebuilds = 0
        self._filled = [0.0] * arch.depth
        self._queries = [0] * arch.depth
        self._stale = True  # tables must be (re)built from the current weights before use

    # --- tables ----------------------------------------------------------------------------

    def rebuild_tables(self, scheduled: bool = False) -> None:
        """Rebuild every layer's tables from the current weights. Only scheduled rebuilds
        count in the statistics: the first build, and the one that follows restoring a
        checkpoint (the same tables the checkpointed run had), are not part of the schedule,
        so a resumed cell reports exactly what an uninterrupted one does."""
        t0 = time.perf_counter()
        with torch.no_grad():
            for layer, tables in zip(self.layers, self.tables, strict=False):
                assert isinstance(layer, nn.Linear)
                tables.rebuild(layer.weight, layer.bias)
        self._stale = False
        if scheduled:
            self.rebuilds += 1
            self._rebuild_seconds += time.perf_counter() - t0
            self._epoch_rebuilds += 1

    def upkeep(self, step: int, examples_seen: int) -> None:
        self._count = step if self.count_steps else examples_seen
        interval = self.rebuild_early if self._count <= self.rebuild_switch else self.rebuild_late
        if self._count - self.last_rebuild_at >= interval:
            self.rebuild_tables(scheduled=True)
            self.last_rebuild_at = self._count

    def end_epoch(self) -> None:
        if self._count != self.last_rebuild_at:  # else the weights have not moved since
            self.rebuild_tables(scheduled=True)
            self.last_rebuild_at = self._count

    # --- active sets -----------------------------------------------------------------------

    def example_active(
        self, tables: LayerTables, codes: np.ndarray, chosen: np.ndarray, rng: np.random.Generator
    ) -> int:
        """Mark one example's active units in `chosen` (bool, per unit); return how many of
        them were random fill."""
        target = self.target
        found = 0
        mine = np.zeros(tables.units, dtype=bool)
        for t in range(tables.L):
            bucket = tables.bucket(t, int(codes[t]))
            if len(bucket) > target:
                bucket = rng.choice(bucket, size=target, replace=False)
            new = bucket[~mine[bucket]]
            mine[new] = True
            found += len(new)
            if found >= target:
                break
        filled = 0
        if found < target:
            candidates = np.flatnonzero(~mine)
            extra = rng.choice(candidates, size=target - found, replace=False)
            mine[extra] = True
            filled = len(extra)
        chosen |= mine
        return filled

    def active_for_layer(
        self, layer: int, h: torch.Tensor, prev: torch.Tensor | None, record: bool
    ) -> tuple[torch.Tensor, float]:
        if self._stale:
            self.rebuild_tables()
        tables = self.tables[layer]
        codes = tables.query(h, prev)  # (B, L)
        chosen = np.zeros(tables.units, dtype=bool)
        filled = 0
        for example_codes in codes:
            filled += self.example_active(tables, example_codes, chosen, self.rng)
        if record:
            self._filled[layer] += filled / (len(codes) * self.target)
            self._queries[layer] += 1
        return torch.from_numpy(np.flatnonzero(chosen)), 1.0

    # --- instrumentation and state ---------------------------------------------------------

    def epoch_stats(self) -> dict[str, float]:
        stats = super().epoch_stats()
        for i in range(self.arch.depth):
            stats[f"random_fill.layer{i + 1}"] = self._filled[i] / max(self._queries[i], 1)
        stats["rebuilds"] = float(self._epoch_rebuilds)
        stats["rebuild_seconds"] = self._rebuild_seconds
        self._filled = [0.0] * self.arch.depth
        self._queries = [0] * self.arch.depth
        self._epoch_rebuilds = 0
        self._rebuild_seconds = 0.0
        return stats

    def random_state(self) -> dict[str, Any]:
        state = super().random_state()
        state["numpy_rng"] = self.rng.bit_generator.state
        return state

    def set_random_state(self, state: dict[str, Any]) -> None:
        super().set_random_state(state)
        if "numpy_rng" in state:
            self.rng.bit_generator.state = state["numpy_rng"]

    def get_extra_state(self) -> dict[str, Any]:
        state = super().get_extra_state()
        state["planes"] = [t.planes for t in self.tables]
        state["last_rebuild_at"] = self.last_rebuild_at
        state["count"] = self._count
        state["rebuilds"] = self.rebuilds
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        super().set_extra_state(state)
        for tables, planes in zip(self.tables, state.get("planes", []), strict=False):
            tables.planes.copy_(planes)
            tables.refresh_constants()
        self.last_rebuild_at = int(state.get("last_rebuild_at", 0))
        self._count = int(state.get("count", self.last_rebuild_at))
        self.rebuilds = int(state.get("rebuilds", 0))
        self._stale = True  # weights are loaded after this: rebuild before the next use


def build(
    arch: Architecture,
    hyper: dict[str, Any],
    generator: torch.Generator,
    sampling_generator: torch.Generator,
) -> MethodModel:
    return ALSHApprox(arch, hyper, generator, sampling_generator)
