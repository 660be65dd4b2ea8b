"""`python -m runner bench`: each method's epoch time on one thread, against a plain loop.

For every method x batch size x depth, one epoch over a slice of MNIST-shaped synthetic data
(784 features, 10 classes, width 1000 by default) is timed through the real code path (the
trainer, with its phase split), beside the loop a researcher would write by hand (Linear and
ReLU, log-softmax, NLL, a stock torch optimizer). Everything runs `repeats` times, interleaved;
each ratio is taken within one repeat, then the median over repeats, so that a machine slower
for a while slows both sides alike. Read ratios; seconds depend on the machine (extrapolated to
a 55000-example MNIST epoch). The project's targets are checked and printed with the results.
"""

from __future__ import annotations

import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.report.active_sets import work_shares
from runner.report.published import paper_optimizer
from runner.run.floor import epoch_min_flops, matmul_rate, step_blas_seconds

log = logging.getLogger("cpusweep")

MNIST_TRAIN = 55000
# (method, batch size, depth or None: any) -> (what the ratio divides by, the most allowed):
# "standard" with SGD (the paper's pairing), with the "same optimizer", or "both" of them.
TARGETS: dict[tuple[str, int, int | None], tuple[str, float]] = {
    ("standard", 1, None): ("plain", 1.10),
    ("standard", 20, None): ("plain", 1.10),
    ("dropout", 1, None): ("standard", 0.30),
    ("dropout", 20, None): ("standard", 0.40),
    ("adaptive_dropout", 1, None): ("same optimizer", 1.15),
    ("adaptive_dropout", 20, None): ("same optimizer", 1.15),
    ("alsh_approx", 1, 3): ("both", 0.25),
    ("alsh_approx", 1, 7): ("both", 0.15),
    ("mc_approx", 20, 3): ("standard", 0.85),
    ("mc_approx", 20, None): ("standard", 1.00),
    ("mc_approx", 1, None): ("standard", 1.10),
}
DATA_SHARE_TARGET = 0.05  # data handling, as a share of a batch-1 epoch
# Methods that compute every product of the dense network (none skips units): their epoch has
# a floor, its minimum floating-point operations at the machine's matrix-multiply rate.
DENSE_METHODS = ("standard", "adaptive_dropout", "mc_approx")
BOUND_TARGETS = {("standard", 20): 1.4}  # epoch / matmul-rate floor, at most


@dataclass(frozen=True)
class BenchConfig:
    # Registry names, or a method with hyperparameters set (`method_hyper`): MC-APPROX at the
    # paper's sampling ratio 0.1 (its default) and at §9.4's k = 10 pairs per product.
    methods: Sequence[str] = (
        "standard",
        "dropout",
        "adaptive_dropout",
        "mc_approx",
        "mc_approx:sample_ratio=0:k=10",
        "alsh_approx",
    )
    depths: Sequence[int] = (3, 7)
    batch_sizes: Sequence[int] = (1, 20)
    width: int = 1000
    features: int = 784
    classes: int = 10
    examples_batch1: int = 1000  # training examples in a timed epoch at batch 1
    examples_batched: int = 10000  # ... at larger batch sizes
    repeats: int = 4  # even: half the repeats run in reverse order
    lr: float = 1e-3
    seed: int = 0

    def examples(self, batch_size: int) -> int:
        return self.examples_batch1 if batch_size == 1 else self.examples_batched


@dataclass
class Timing:
    """One timed epoch: seconds per phase, and the method's instrumentation."""

    phases: dict[str, float]
    stats: dict[str, float] = field(default_factory=dict)
    # Set when the trainer stopped the epoch at a non-finite loss after this many steps: the
    # phases are then scaled up to the whole slice from the steps that ran (few, so noisy).
    diverged_after_steps: int | None = None

    @property
    def total(self) -> float:
        return sum(self.phases.values())


@dataclass
class Record:
    method: str
    batch_size: int
    depth: int
    width: int
    optimizer: str
    examples: int
    repeats: int
    seconds: float  # median measured epoch over `examples`
    seconds_per_epoch: float  # extrapolated to a 55000-example MNIST epoch
    ratio_vs_plain: float  # median over repeats of (this / plain loop, same optimizer)
    ratio_vs_standard: float  # ... of (this / STANDARD with SGD, the paper's yardstick)
    ratio_vs_standard_same_optimizer: float  # ... of (this / STANDARD, same optimizer)
    phase_share: dict[str, float]  # median share of each phase in the epoch
    # The spread of ratio_vs_standard over the repeats (25th, 75th percentile): how much to
    # trust the median on this machine.
    ratio_vs_standard_iqr: tuple[float, float] = (float("nan"), float("nan"))
    target: str = ""  # e.g. "<= 0.30x standard"
    target_met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "batch_size": self.batch_size,
            "depth": self.depth,
            "width": self.width,
            "optimizer": self.optimizer,
            "examples": self.examples,
            "repeats": self.repeats,
            "seconds": self.seconds,
            "seconds_per_epoch": self.seconds_per_epoch,
            "ratio_vs_plain": self.ratio_vs_plain,
            "ratio_vs_standard": self.ratio_vs_standard,
            "ratio_vs_standard_same_optimizer": self.ratio_vs_standard_same_optimizer,
            "ratio_vs_standard_iqr": list(self.ratio_vs_standard_iqr),
            "phase_share": self.phase_share,
            "target": self.target,
            "target_met": self.target_met,
            **self.extra,
        }


def machine() -> dict[str, Any]:
    """What the benchmark runs on (after pinning torch to one thread, as every cell is)."""
    import torch

    from runner.run.allocator import steady_allocator
    from runner.run.threads import apply_threads, observe

    apply_threads(1)
    steady_allocator()
    seen = observe()
    return {
        "cpu_model": seen["cpu_model"],
        "torch_threads": seen["torch_threads"],
        "allocator": seen["allocator"],
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def synthetic_splits(config: BenchConfig, examples: int) -> Any:
    """Class-structured MNIST-shaped data (prototype per class plus noise), standardised."""
    import torch

    from runner.datasets.loading import Splits
    from runner.datasets.registry import DatasetInfo

    g = torch.Generator().manual_seed(config.seed)
    prototypes = torch.randn(config.classes, config.features, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, config.classes, (n,), generator=g)
        x = prototypes[y] + 2.0 * torch.randn(n, config.features, generator=g)
        return (x / x.std()).contiguous(), y

    info = DatasetInfo(
        name="synthetic",
        summary="benchmark data",
        module="",
        classes=config.classes,
        image_shape=(1, 1, config.features),
        train=examples,
        val=256,
        test=256,
    )
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = make(examples), make(256), make(256)
    return Splits(
        info=info,
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        mean=0.0,
        std=1.0,
        split_fingerprint="synthetic",
    )


def plain_epoch(
    splits: Any, depth: int, width: int, batch_size: int, optimizer: str, lr: float, seed: int
) -> Timing:
    """The hand-written loop: nn.Sequential, log-softmax, NLL, torch.optim, shuffled once."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from methods.base import Architecture, init_linear_

    g = torch.Generator().manual_seed(seed)
    arch = Architecture(
        in_features=splits.x_train.shape[1], width=width, depth=depth, classes=splits.info.classes
    )
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(arch.layer_sizes()):
        linear = nn.Linear(fan_in, fan_out)
        init_linear_(linear, g)
        layers += [linear, nn.ReLU()] if i < depth else [linear]
    net = nn.Sequential(*layers)
    opt = (
        torch.optim.SGD(net.parameters(), lr=lr)
        if optimizer == "sgd"
        else torch.optim.Adam(net.parameters(), lr=lr)
    )
    t0 = time.perf_counter()
    order = torch.randperm(len(splits.y_train), generator=g)
    x, y = splits.x_train[order], splits.y_train[order]
    data = time.perf_counter() - t0
    fwd = bwd = stp = 0.0
    for start in range(0, len(y), batch_size):
        t0 = time.perf_counter()
        loss = F.nll_loss(
            F.log_softmax(net(x[start : start + batch_size]), dim=1), y[start : start + batch_size]
        )
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        fwd += t1 - t0
        bwd += t2 - t1
        stp += t3 - t2
    return Timing({"data": data, "forward": fwd, "backward": bwd, "step": stp, "upkeep": 0.0})


def method_hyper(spec: str) -> tuple[str, dict[str, Any]]:
    """A benchmarked method as `--methods` names it: a registry name, optionally with some of
    its hyperparameters set, `name:param=value:...` (e.g. `mc_approx:sample_ratio=0:k=10`).
    Returns the name and every hyperparameter (defaults for the rest); a CpusweepError says
    what is wrong and what is valid."""
    from methods.registry import METHODS
    from runner.errors import CpusweepError
    from runner.job.select import typed

    name, *pairs = spec.split(":")
    if name not in METHODS:
        raise CpusweepError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    params = {p.name: p for p in METHODS[name].params}
    hyper = {p.name: p.default for p in params.values()}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if key not in params or not equals:
            raise CpusweepError(
                f"{spec!r}: {pair!r} is not PARAM=VALUE with a parameter of {name} "
                f"({', '.join(params) or 'it has none'})"
            )
        hyper[key], problem = typed(params[key], key, text, f"{spec!r}:")
        if problem:
            raise CpusweepError(problem)
    return name, hyper


def method_epoch(
    method: str,
    splits: Any,
    depth: int,
    width: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    seed: int,
) -> Timing:
    """One epoch of `method` (a `method_hyper` spec) through the real trainer."""
    import torch

    import methods
    from methods.base import Architecture, TrainSettings
    from runner.run.trainer import train

    arch = Architecture(
        in_features=splits.x_train.shape[1], width=width, depth=depth, classes=splits.info.classes
    )
    name, hyper = method_hyper(method)
    model = methods.build(
        name,
        arch,
        hyper,
        torch.Generator().manual_seed(seed),
        torch.Generator().manual_seed(seed + 1),
    )
    settings = TrainSettings(lr=lr, optimizer=optimizer, momentum=0.0, batch_size=batch_size)
    outcome = train(
        model, splits, settings, epochs=1, shuffle_generator=torch.Generator().manual_seed(seed + 2)
    )
    epoch = outcome.history[0]
    # A non-finite loss stops the epoch (runner/results/stops.py): the steps that ran, scaled.
    planned = math.ceil(len(splits.x_train) / batch_size)
    done = max(int(epoch.get("steps", planned)), 1)
    scale = planned / done if outcome.diverged_at_step is not None else 1.0
    return Timing(
        {
            phase: float(epoch[f"{phase}_seconds"]) * scale
            for phase in ("data", "forward", "backward", "step", "upkeep")
        },
        {stat["name"]: float(stat["value"]) for stat in epoch["stats"]},
        diverged_after_steps=done if outcome.diverged_at_step is not None else None,
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q1, q3)


def _base(spec: str) -> str:
    return spec.split(":")[0]  # the registry name of a `method_hyper` spec


def _optimizer(spec: str) -> str:
    return paper_optimizer(_base(spec), "mlp")


def _target_for(method: str, batch_size: int, depth: int) -> tuple[str, float] | None:
    return TARGETS.get((method, batch_size, depth)) or TARGETS.get((method, batch_size, None))


def _against(r: Record, against: str) -> float:
    same = r.ratio_vs_standard_same_optimizer
    by = {"plain": r.ratio_vs_plain, "standard": r.ratio_vs_standard, "same optimizer": same}
    return max(r.ratio_vs_standard, same) if against == "both" else by[against]


def run_bench(config: BenchConfig, progress: Callable[[str], None] | None = None) -> list[Record]:
    """Time every case `config.repeats` times, interleaved; return one record per case."""
    from runner.run.allocator import steady_allocator
    from runner.run.threads import apply_threads

    apply_threads(1)
    steady_allocator()  # as in every cell: both sides of each ratio alike
    say = progress or (lambda message: log.info("%s", message))
    say("measuring the machine's matrix-multiply rate")
    rate = matmul_rate()
    records: list[Record] = []
    for batch_size in config.batch_sizes:
        examples = config.examples(batch_size)
        splits = synthetic_splits(config, examples)
        for depth in config.depths:
            # The step's own products alone, in step order: the floor under a dense epoch
            # at the BLAS's speed on these shapes (the FLOPs floor assumes its large-matrix
            # rate, which batch-20 products do not reach).
            blas_floor = math.ceil(examples / batch_size) * step_blas_seconds(
                config.features, config.width, depth, config.classes, batch_size
            )
            optimizers = sorted({_optimizer(m) for m in config.methods} | {"sgd"})
            runs: dict[str, list[Timing]] = {}
            # Every run of a repeat, in one list: even repeats run it forwards, odd ones
            # backwards, so that no method always runs right after the same other one
            # (an ABBA order: drift over time cancels out of the ratios).
            todo: list[tuple[str, str]] = [("plain", opt) for opt in optimizers]
            todo += [
                ("standard", opt)
                for opt in optimizers
                if "standard" not in config.methods or opt != "sgd"
            ]
            todo += [(method, _optimizer(method)) for method in config.methods]
            for repeat in range(config.repeats):
                for name, opt in todo if repeat % 2 == 0 else reversed(todo):
                    say(f"b{batch_size} d{depth} repeat {repeat + 1}: {name} ({opt})")
                    timing = (
                        plain_epoch(
                            splits, depth, config.width, batch_size, opt, config.lr, config.seed
                        )
                        if name == "plain"
                        else method_epoch(
                            name,
                            splits,
                            depth,
                            config.width,
                            batch_size,
                            opt,
                            config.lr,
                            config.seed,
                        )
                    )
                    runs.setdefault(f"{name}/{opt}", []).append(timing)
            for method in config.methods:
                opt = _optimizer(method)
                base = _base(method)
                mine = runs[f"{method}/{opt}"]
                plain, std_sgd = runs["plain/" + opt], runs["standard/sgd"]
                std_same = runs[f"standard/{opt}"]
                seconds = _median([t.total for t in mine])
                shares = {
                    phase: _median([t.phases[phase] / t.total for t in mine])
                    for phase in mine[0].phases
                }
                record = Record(
                    method=method,
                    batch_size=batch_size,
                    depth=depth,
                    width=config.width,
                    optimizer=opt,
                    examples=examples,
                    repeats=config.repeats,
                    seconds=seconds,
                    seconds_per_epoch=seconds * MNIST_TRAIN / examples,
                    ratio_vs_plain=_median(
                        [m.total / p.total for m, p in zip(mine, plain, strict=True)]
                    ),
                    ratio_vs_standard=_median(
                        [m.total / s.total for m, s in zip(mine, std_sgd, strict=True)]
                    ),
                    ratio_vs_standard_iqr=_quartiles(
                        [m.total / s.total for m, s in zip(mine, std_sgd, strict=True)]
                    ),
                    ratio_vs_standard_same_optimizer=_median(
                        [m.total / s.total for m, s in zip(mine, std_same, strict=True)]
                    ),
                    phase_share=shares,
                )
                target = _target_for(base, batch_size, depth)
                if target is not None:
                    against, limit = target
                    ratio = _against(record, against)
                    name = "standard, either optimizer" if against == "both" else against
                    record.target = f"<= {limit:.2f}x {name}"
                    record.target_met = ratio <= limit
                if batch_size == 1:
                    record.extra["data_share_target_met"] = shares["data"] < DATA_SHARE_TARGET
                # The work the method really did (ratios mean little without it).
                if diverged := [t.diverged_after_steps for t in mine if t.diverged_after_steps]:
                    record.extra["diverged_after_steps"] = min(diverged)  # timed on those steps
                used = [work_shares(t.stats, config.width, depth) for t in mine]
                record.extra["active_share"] = _median([u[0] for u in used])
                record.extra["computed_share"] = _median([u[1] for u in used])
                record.extra["matmul_gflops"] = rate / 1e9
                if base in DENSE_METHODS:
                    floor = (
                        epoch_min_flops(
                            config.features, config.width, depth, config.classes, examples
                        )
                        / rate
                    )
                    record.extra["bound_seconds"] = floor
                    record.extra["ratio_to_bound"] = seconds / floor
                    record.extra["blas_bound_seconds"] = blas_floor
                    record.extra["ratio_to_blas_bound"] = seconds / blas_floor
                    at_most = BOUND_TARGETS.get((base, batch_size))
                    if at_most is not None:
                        record.extra["bound_target"] = f"<= {at_most:.1f}x the matmul floor"
                        record.extra["bound_target_met"] = seconds / floor <= at_most
                records.append(record)
    return records
