"""ALSH-APPROX (Spring & Shrivastava 2017; Shrivastava & Li 2014; paper §5.2).

Each hidden layer keeps L hash tables of K-bit signed random projections (SRP) of its units'
weight vectors after the asymmetric transform P; an input is hashed after the transform Q,
and the units in its buckets are the ones most likely to have a large inner product with it
(maximum inner-product search, Eq. 4-5). Only those active units are computed; inactive units
are 0 (no rescaling), and only active weights receive gradients and updates (methods/sparse.py:
blocks of W, lazy Adam). The output layer and evaluation are exact.

Choices, all recorded through the hyperparameters (methods/registry.py):
- `hash_bias` (default "ignore"): a unit is hashed by its incoming weights w and a query is
  a / |a|, as the authors' code does; the bias takes no part in the search. "append" hashes
  [w; b] and queries [a; 1] instead, so that the search is for the largest pre-activation
  bias included; but the sparse forward pass does not rescale, activations shrink with depth
  (|a| about 8, 4, 0.4, 0.1 entering layers 1-4 at initialisation on the digits), and once
  |a| << 1 the constant dominates every query: deep layers then pick nearly the same units
  for every input (mean pairwise Jaccard overlap 0.3 / 0.5 / 0.8 at layers 3 / 4 / 5, against
  0.026 for random 5% sets), which would produce the paper's Fig. 15 symptom by construction.
- P(w) = [w; |w|^2; |w|^4; ...; |w|^(2^m)] after scaling every weight vector by U / max |w|;
  Q(a) = [a / |a|; 1/2; ...; 1/2] (Eq. 3). K bits per table, L tables (paper: K=6, L=5, m=3,
  U=0.83). SRP hyperplanes are Gaussian, drawn once from the cell's sampling generator.
- Active set of one example (`active_size`): its buckets are taken table by table. "target"
  (default) makes it exactly ceil(`active_fraction` x width) units (paper: 5%): the units of
  the bucket that crosses the target are subsampled to reach it exactly, and random units fill
  up to it when all L buckets hold fewer. "buckets" (the reference's rule) adds whole buckets
  until at least the target (a single bucket larger than it is subsampled to it), which
  overshoots: 62-67 of 1000 units instead of 50 at batch 1.
- A mini-batch (`batch_sets`): "example" (default) gives every example exactly its own active
  set, as SLIDE does: the batch gathers the union of its examples' sets once and masks each
  example's activations to its own units, so an example's output and gradients are those it
  would have alone. "union" lets every example compute the whole union (32-46% of 1000 units
  at batch 20: much less approximation than the 5% the comparison assumes).
- Tables are rebuilt on the paper's schedule (§10.2): every `rebuild_early` training examples
  until `rebuild_switch` examples, then every `rebuild_late`, and at the end of every epoch
  unless the schedule rebuilt them after the epoch's last step already; the schedule counts
  from the latest rebuild. The paper counts images; `rebuild_unit = "steps"` counts optimizer
  steps instead (the same at batch 1; at batch 20, 20 times fewer rebuilds). The first tables
  are built from the weights actually trained. Rebuild time is upkeep, and also reported on
  its own (`rebuild_seconds`).

Instrumentation (per hidden layer i, per epoch): `active_units.layer{i}` (units computed per
step: the batch's union), `active_share.layer{i}` (an example's own active units / width),
`ever_active.layer{i}` (share of units active for some training example in the epoch),
`random_fill.layer{i}`, and on the fixed probe batch `active_overlap.layer{i}` (mean pairwise
Jaccard overlap of the examples' active sets: near the random-set value when the sets depend
on the input, near 1 when every input picks the same units) besides the Theorem 2 probe.
`approx_log_probs` evaluates the network as it trains, through its tables (the paper, and
`val_accuracy`, evaluate the exact network), so "did not learn" and "trained and evaluated
differently" can be told apart.

Speed (no effect on what is computed beyond float rounding): the hash queries and active-set
choices are compiled (methods/alsh_select.py), and so is a whole batch-1 training step
(methods/sparse_compiled.py), whose rows record `optimizer_implementation = adam:lazy-compiled`;
mini-batches run through torch on the gathered union (methods/sparse.py).

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

from methods import alsh_select, sparse_kernels
from methods.alsh_select import bucket_codes, hash_and_choose, seed_state
from methods.base import Architecture, MethodModel
from methods.sparse import ActiveUnits, SparseMLP

_NO_UNITS = np.empty(0, dtype=np.int64)  # "every input" for the compiled kernels


def transform_p(weight: torch.Tensor, bias: torch.Tensor | None, m: int, U: float) -> torch.Tensor:
    """P(w) (or P([w; b]) when `bias` is given) for every unit: (n, in) -> (n, in [+ 1] + m)."""
    wb = weight if bias is None else torch.cat([weight, bias.unsqueeze(1)], dim=1)
    norms = wb.norm(dim=1, keepdim=True)  # (n, 1)
    largest = float(norms.max())
    scale = U / largest if largest > 0 else 1.0
    wb, norms = wb * scale, norms * scale
    powers = [norms ** (2 ** (i + 1)) for i in range(m)]  # |w|^2, |w|^4, ..., |w|^(2^m)
    return torch.cat([wb, *powers], dim=1)


def transform_q(a: torch.Tensor, m: int, append_one: bool = False) -> torch.Tensor:
    """Q(a) (or Q([a; 1])) for a batch of queries: (B, in) -> (B, in [+ 1] + m). A zero query
    stays zero (it has no direction)."""
    aug = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1) if append_one else a
    aug = aug / aug.norm(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return torch.cat([aug, torch.full((len(a), m), 0.5, dtype=a.dtype)], dim=1)


class LayerTables:
    """The L hash tables of one hidden layer, stored as sorted arrays (CSR), not dicts."""

    def __init__(
        self,
        fan_in: int,
        units: int,
        K: int,
        L: int,
        m: int,
        U: float,
        generator: torch.Generator,
        hash_bias: bool = False,
    ):
        self.K, self.L, self.m, self.U = K, L, m, U
        self.fan_in, self.units = fan_in, units
        self.hash_bias = hash_bias
        self.width = fan_in + int(hash_bias)  # the vector P and Q transform: w or [w; b]
        # Hyperplanes over the transformed space (the inputs, [the bias,] m norm terms).
        # Queries run at every step and example, on tiny arrays: numpy does them with far
        # less per-call overhead than torch; `_planes` is a numpy view of the same memory.
        self.planes = torch.randn(self.width + m, K * L, generator=generator)
        self._planes = self.planes.numpy()
        self.refresh_constants()
        self._powers = 1 << np.arange(K)  # bit weights of one signature
        self.members = np.zeros((L, units), dtype=np.int64)  # units sorted by bucket
        self.offsets = np.zeros((L, 2**K + 1), dtype=np.int64)  # bucket starts

    def refresh_constants(self) -> None:
        """The parts of every query that do not depend on it (after `planes` changes)."""
        # (K*L,): the query's constant 1 (appended bias) and Q's m halves.
        bias_row = self._planes[self.fan_in] if self.hash_bias else np.zeros(self.K * self.L)
        self._bias_row = np.ascontiguousarray(bias_row, dtype=np.float32)
        self._tail = (0.5 * self._planes[self.width :].sum(axis=0)).astype(np.float32)

    def signatures(self, bits: np.ndarray) -> np.ndarray:
        """(N, K*L) booleans -> (N, L) bucket numbers."""
        return (bits.reshape(len(bits), self.L, self.K) * self._powers).sum(axis=2)

    def projections(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """P(w) @ planes (or P([w; b]) @ planes) for every unit, (n, K*L), without building P:
        the same sums, term by term, sparing a copy of the whole weight matrix per rebuild."""
        norms = weight.norm(dim=1).square_()  # |w|^2 or |[w; b]|^2, (n,)
        if self.hash_bias:
            norms += bias.pow(2)
        norms.sqrt_()
        largest = float(norms.max())
        scale = self.U / largest if largest > 0 else 1.0
        planes = self.planes
        dots = weight @ planes[: self.fan_in]  # the w part, (n, K*L)
        if self.hash_bias:
            dots.addr_(bias, planes[self.fan_in])  # the b part
        dots.mul_(scale)
        scaled = norms * scale
        for i in range(self.m):  # the m norm terms |w|^2, |w|^4, ..., |w|^(2^m)
            dots.addr_(scaled ** (2 ** (i + 1)), planes[self.width + i])
        return dots

    def rebuild(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        codes = self.signatures((self.projections(weight, bias) > 0).numpy())  # (n, L)
        for t in range(self.L):
            self.members[t] = np.argsort(codes[:, t], kind="stable")
            counts = np.bincount(codes[:, t], minlength=2**self.K)
            self.offsets[t, 1:] = np.cumsum(counts)

    def query(self, h: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        """Bucket numbers (B, L) of the batch's inputs h (B, |prev|) to this layer, whose
        other inputs (units outside prev) are 0: Q(a) (or Q([a; 1])) hashed on prev's rows."""
        codes = np.empty((len(h), self.L), dtype=np.int64)
        bucket_codes(
            np.ascontiguousarray(h, dtype=np.float32),
            _NO_UNITS if prev is None else prev,
            self._planes,
            self._bias_row,
            self._tail,
            self.K,
            self.L,
            self.hash_bias,
            codes,
        )
        return codes

    def choose(
        self,
        h: np.ndarray,
        prev: np.ndarray | None,
        target: int,
        exact: bool,
        rng: np.ndarray,
        ever: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every example's active units for inputs h (B, |prev|), from its buckets (see
        ALSHApprox): example b's (sorted) are units[ptr[b]:ptr[b + 1]], filled[b] of them
        random fill; each chosen unit is marked in `ever` when given."""
        n = len(h)
        units = np.empty(n * self.units, dtype=np.int64)
        ptr = np.empty(n + 1, dtype=np.int64)
        filled = np.empty(n, dtype=np.int64)
        hash_and_choose(
            np.ascontiguousarray(h, dtype=np.float32),
            _NO_UNITS if prev is None else prev,
            self._planes, self._bias_row, self._tail, self.K, self.L, self.hash_bias,
            self.members, self.offsets, target, exact, rng,
            units, ptr, filled, np.zeros(self.units, dtype=bool) if ever is None else ever,
        )  # fmt: skip
        return units[: ptr[-1]], ptr, filled

    def bucket(self, table: int, code: int) -> np.ndarray:
        return self.members[table, self.offsets[table, code] : self.offsets[table, code + 1]]


def mean_pairwise_jaccard(sets: np.ndarray) -> float:
    """Mean Jaccard overlap |A n B| / |A u B| over all pairs of rows of a boolean (N, units)
    matrix of active sets (NaN for fewer than two rows)."""
    n = len(sets)
    if n < 2:
        return float("nan")
    m = sets.astype(np.float64)
    inter = m @ m.T  # (N, N)
    sizes = m.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    upper = np.triu_indices(n, k=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        jaccard = np.where(union[upper] > 0, inter[upper] / union[upper], 1.0)
    return float(jaccard.mean())


def random_set_jaccard(size: int, units: int) -> float:
    """Expected Jaccard overlap of two independent uniformly random `size`-subsets of `units`
    (the reference value for input-independent sets of the same size): E|A n B| = size^2 /
    units, to first order s / (2 units - s)."""
    shared = size * size / units
    return shared / (2 * size - shared) if size else float("nan")


class ALSHApprox(SparseMLP):
    compiled_single = True  # batch 1: methods/sparse_compiled.py

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
        self.hash_bias = hyper["hash_bias"] == "append"
        self.exact_size = hyper["active_size"] == "target"
        self.per_example = hyper["batch_sets"] == "example"
        self.rebuild_early = int(hyper["rebuild_early"])
        self.rebuild_late = int(hyper["rebuild_late"])
        self.rebuild_switch = int(hyper["rebuild_switch"])
        self.count_steps = hyper["rebuild_unit"] == "steps"
        self._count = 0  # examples (or steps) seen at the latest upkeep
        self.target = max(1, math.ceil(self.fraction * arch.width))
        self.tables = [
            LayerTables(
                fan_in, fan_out, self.K, self.L, self.m, self.U, sampling_generator, self.hash_bias
            )
            for fan_in, fan_out in arch.layer_sizes()[:-1]
        ]
        # The active sets' random choices (subsampling, fills): methods/alsh_select.py's
        # generator, seeded from the same sampling generator.
        seed = int(torch.randint(0, 2**62, (1,), generator=sampling_generator))
        self.rng = seed_state(seed)
        self.last_rebuild_at = 0  # examples (or steps) seen at the last scheduled rebuild
        self.rebuilds = 0
        self._rebuild_seconds = 0.0
        self._epoch_rebuilds = 0
        self._reset_epoch_counters()
        self._stale = True  # tables must be (re)built from the current weights before use
        alsh_select.warm_up()  # compiled before the first timed step, not during it
        sparse_kernels.warm_up()

    def _reset_epoch_counters(self) -> None:
        depth = self.arch.depth
        self._filled = [0.0] * depth  # random-fill share, summed over recorded queries
        self._own = [0.0] * depth  # examples' own active share, summed over recorded queries
        self._queries = [0] * depth
        self._ever = [np.zeros(self.arch.width, dtype=bool) for _ in range(depth)]

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

    def choose_active(
        self, layer: int, h: np.ndarray, prev: np.ndarray | None, record: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every example's own active units of hidden layer `layer` for inputs h (B, |prev|):
        example b's (sorted) are units[ptr[b]:ptr[b + 1]], filled[b] of them random fill."""
        if self._stale:
            self.rebuild_tables()
        ever = self._ever[layer] if record else None
        return self.tables[layer].choose(h, prev, self.target, self.exact_size, self.rng, ever)

    def active_for_layer(
        self, layer: int, h: torch.Tensor, prev: torch.Tensor | None, record: bool
    ) -> ActiveUnits:
        units, ptr, filled = self.choose_active(
            layer, h.numpy(), None if prev is None else prev.numpy(), record
        )
        n, width = len(filled), self.arch.width
        chosen = np.zeros(width, dtype=bool)
        chosen[units] = True
        union = np.flatnonzero(chosen)
        mask = None
        if self.per_example and n > 1:
            # Each example keeps only its own units of the gathered union: (B, |union|).
            position = np.zeros(width, dtype=np.int64)
            position[union] = np.arange(len(union))
            own_mask = np.zeros((n, len(union)), dtype=np.float32)
            own_mask[np.repeat(np.arange(n), np.diff(ptr)), position[units]] = 1.0
            mask = torch.from_numpy(own_mask)
        if record:
            own_units = len(units) if self.per_example else n * len(union)
            self._record(layer, own_units, int(filled.sum()), n)
        return ActiveUnits(torch.from_numpy(union), 1.0, mask)

    def single_active(self, layer: int, h: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
        units, _, filled = self.choose_active(layer, h, prev, record=True)
        self._record(layer, len(units), int(filled[0]), 1)
        return units

    def _record(self, layer: int, own_units: int, filled: int, n: int) -> None:
        """Count one training query of `n` examples in the epoch's statistics (the units
        it chose are marked in `_ever` as they are chosen)."""
        self._filled[layer] += filled / (n * self.target)
        self._own[layer] += own_units / (n * self.arch.width)
        self._queries[layer] += 1

    # --- evaluation through the tables, and the probes -----------------------------------------

    @torch.no_grad()
    def approx_log_probs(self, x: torch.Tensor) -> torch.Tensor | None:
        """The network as it trains: every example through its own active sets (as at batch 1,
        whatever `batch_sets`), the output layer exact; the training randomness (fills,
        subsampling) is left where it was."""
        saved = self.random_state()
        per_example = self.per_example
        self.per_example = True
        try:
            out = self.sparse_log_probs(x, record=False)
        finally:
            self.per_example = per_example
            self.set_random_state(saved)
        return out

    @torch.no_grad()
    def probe_stats(self, x: torch.Tensor, batch_size: int) -> dict[str, float]:
        """How input-dependent the active sets are, on the probe batch: the mean pairwise
        Jaccard overlap of the examples' own active sets, per hidden layer (every example
        through its own sets, as at batch 1); `active_overlap_random` is the value for
        random sets of the same size. The training randomness is left where it was."""
        saved = self.random_state()
        per_example = self.per_example
        self.per_example = True
        try:
            trace = self.sparse_hidden(x, record=False)
        finally:
            self.per_example = per_example
            self.set_random_state(saved)
        stats = {}
        for i, layer in enumerate(trace, start=1):
            sets = np.zeros((len(x), self.arch.width), dtype=bool)
            own = np.ones((len(x), len(layer.units)), dtype=bool)
            if layer.mask is not None:
                own = layer.mask.numpy() > 0
            rows, cols = np.nonzero(own)
            sets[rows, layer.units.numpy()[cols]] = True
            stats[f"active_overlap.layer{i}"] = mean_pairwise_jaccard(sets)
        stats["active_overlap_random"] = random_set_jaccard(self.target, self.arch.width)
        return stats

    def epoch_stats(self) -> dict[str, float]:
        stats = super().epoch_stats()
        for i in range(self.arch.depth):
            queries = max(self._queries[i], 1)
            stats[f"random_fill.layer{i + 1}"] = self._filled[i] / queries
            stats[f"active_share.layer{i + 1}"] = self._own[i] / queries
            stats[f"ever_active.layer{i + 1}"] = float(self._ever[i].mean())
        stats["rebuilds"] = float(self._epoch_rebuilds)
        stats["rebuild_seconds"] = self._rebuild_seconds
        self._reset_epoch_counters()
        self._epoch_rebuilds = 0
        self._rebuild_seconds = 0.0
        return stats

    # --- state -----------------------------------------------------------------------------

    def random_state(self) -> dict[str, Any]:
        state = super().random_state()
        state["hash_rng"] = torch.from_numpy(self.rng.view(np.int64).copy())  # a tensor: see base
        return state

    def set_random_state(self, state: dict[str, Any]) -> None:
        super().set_random_state(state)
        if "hash_rng" in state:
            self.rng[:] = state["hash_rng"].numpy().view(np.uint64)

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
