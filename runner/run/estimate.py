"""How long cells will take: for `plan`'s CPU-hour and wall-time estimates, and to schedule
the longest cells first (pure Python: no torch, no Ray).

A cell's time is its epochs times its seconds per epoch. Seconds per epoch come, in order of
preference, from:
1. finished cells of the same configuration (same method, hyperparameters, architecture,
   dataset, depth, width and batch size), scaled to the cell's number of training examples;
2. finished cells of the same method, architecture and batch size, scaled by training
   examples and by the network's multiply-adds per example (an MLP's sum of fan_in x fan_out);
3. a benchmark file written by `python -m runner bench --json` (784-1000xD-10 MLPs on one
   thread), scaled the same way;
and otherwise are unknown. The rough proxy used to order cells when nothing is known
(examples x multiply-adds, batched steps cheaper per example) is never shown as an estimate.
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.datasets.registry import DATASETS
from runner.errors import CpusweepError
from runner.job.cells import Cell

# Per-example cost of a batched step relative to batch 1, for ordering only (the benchmark
# measures about 0.1 at batch 20 on one thread).
_BATCHED_FACTOR = 0.1


def train_examples(values: Mapping[str, Any]) -> int:
    info = DATASETS[str(values["dataset"])]
    limit = values.get("train_limit")
    return min(info.train, int(limit)) if limit else info.train


def multiply_adds(values: Mapping[str, Any]) -> float:
    """Multiply-adds per example of the cell's MLP (for the CNN: of its classifier head,
    the backbone being the same for every cell of a dataset)."""
    info = DATASETS[str(values["dataset"])]
    fan_in = 512 if values.get("arch", "mlp") == "cnn" else info.features
    dims = [fan_in] + [int(values["width"])] * int(values["depth"]) + [info.classes]
    return float(sum(a * b for a, b in itertools.pairwise(dims)))


def _config_key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    method = str(values["method"])
    hyper = tuple(sorted((k, values[k]) for k in values if k.startswith(method + ".")))
    return (
        method,
        values.get("arch", "mlp"),
        values["dataset"],
        int(values["depth"]),
        int(values["width"]),
        int(values["batch_size"]),
        hyper,
    )


def _family_key(values: Mapping[str, Any]) -> tuple[Any, ...]:
    return (str(values["method"]), values.get("arch", "mlp"), int(values["batch_size"]))


@dataclass(frozen=True)
class Estimate:
    seconds: float | None  # None: unknown
    source: str  # "finished cells (same configuration)", "benchmark", "unknown", ...


@dataclass
class _Reference:
    seconds_per_example: float  # per training example and epoch
    work: float  # multiply-adds per example of the reference network
    arch: str
    dataset: str | None


class Estimator:
    """Seconds per cell from finished rows and/or benchmark records."""

    def __init__(
        self, finished: Iterable[Mapping[str, Any]] = (), bench: Sequence[Mapping[str, Any]] = ()
    ):
        self._same: dict[tuple[Any, ...], list[float]] = {}
        self._family: dict[tuple[Any, ...], list[_Reference]] = {}
        for row in finished:
            try:
                spe = float(row["seconds_per_epoch"])
                examples = int(row["train_size"])
                if (
                    "train_limit" in row
                    and row["train_limit"] is not None
                    and not (
                        isinstance(row["train_limit"], float) and math.isnan(row["train_limit"])
                    )
                ):
                    examples = min(examples, int(row["train_limit"]))
                per_example = spe / max(examples, 1)
                work = multiply_adds(row)
            except (KeyError, TypeError, ValueError):
                continue  # a row from another schema version: not a usable reference
            if not math.isfinite(per_example) or per_example <= 0:
                continue
            self._same.setdefault(_config_key(row), []).append(per_example)
            self._family.setdefault(_family_key(row), []).append(
                _Reference(per_example, work, str(row.get("arch", "mlp")), str(row["dataset"]))
            )
        self._bench: dict[tuple[str, int], list[_Reference]] = {}
        for record in bench:
            try:
                key = (str(record["method"]), int(record["batch_size"]))
                per_example = float(record["seconds_per_epoch"]) / 55000.0
                width = int(record.get("width", 1000))
                dims = [784] + [width] * int(record["depth"]) + [10]
                work = float(sum(a * b for a, b in itertools.pairwise(dims)))
            except (KeyError, TypeError, ValueError):
                continue
            self._bench.setdefault(key, []).append(_Reference(per_example, work, "mlp", None))

    def estimate(self, cell: Cell) -> Estimate:
        v = cell.values
        epochs, examples, work = int(v["epochs"]), train_examples(v), multiply_adds(v)
        same = self._same.get(_config_key(v))
        if same:
            return Estimate(
                epochs * examples * sum(same) / len(same), "finished cells (same configuration)"
            )
        family = [
            r
            for r in self._family.get(_family_key(v), [])
            if r.arch != "cnn" or r.dataset == v["dataset"]
        ]
        if family:
            return Estimate(
                epochs * examples * _scaled(family, work),
                "finished cells (same method and batch size, scaled)",
            )
        bench = self._bench.get((cell.method, int(v["batch_size"])))
        if bench and v.get("arch", "mlp") == "mlp":
            return Estimate(epochs * examples * _scaled(bench, work), "benchmark (scaled)")
        return Estimate(None, "unknown")

    def ordering_cost(self, cell: Cell) -> float:
        """Estimated seconds, or a proxy when unknown: for longest-first scheduling."""
        known = self.estimate(cell).seconds
        if known is not None:
            return known
        v = cell.values
        factor = 1.0 if int(v["batch_size"]) == 1 else _BATCHED_FACTOR
        return 1e-9 * int(v["epochs"]) * train_examples(v) * multiply_adds(v) * factor


def _scaled(references: Sequence[_Reference], work: float) -> float:
    """Seconds per example for a network of `work` multiply-adds, from references (cost is
    taken as proportional to multiply-adds; the nearest reference sizes weigh the most)."""
    best = min(references, key=lambda r: abs(math.log(max(r.work, 1.0) / max(work, 1.0))))
    return best.seconds_per_example * work / best.work


def longest_first(cells: Sequence[Cell], estimator: Estimator) -> list[Cell]:
    """The cells, longest first (stable: ties keep the job's order), so that the last cells
    to finish are short ones and no slot idles behind one long straggler."""
    return sorted(cells, key=estimator.ordering_cost, reverse=True)


def makespan(seconds: Sequence[float], slots: int) -> float:
    """Wall time of running these cells on `slots` parallel slots, longest first (LPT)."""
    loads = [0.0] * max(1, slots)
    heapq.heapify(loads)
    for s in sorted(seconds, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + s)
    return max(loads)


def load_bench(path: str | Path) -> list[dict[str, Any]]:
    """Records of a `python -m runner bench --json` file."""
    try:
        payload = json.loads(Path(path).read_text(encoding="utf-8"))
        records = payload["records"] if isinstance(payload, dict) else payload
        if not isinstance(records, list):
            raise ValueError("no list of records")
        return [dict(r) for r in records]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CpusweepError(
            f"{path}: not a benchmark file written by `python -m runner bench --json` ({exc})"
        ) from None
