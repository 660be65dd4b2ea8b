"""The paper's published numbers, and their comparison with a sweep's own (pure pandas).

The numbers live in `paper_numbers.csv` beside this module, one row per printed number with
its source (table or figure, section), as printed: accuracy in percent, time in seconds per
epoch. The paper's setting behind them (its training-set sizes, epochs, widths, learning
rates, optimizers, method hyperparameters, machine) is in this module, each with its source.

`compare` matches the numbers to a sweep's configurations by dataset, architecture, method,
batch size and depth, and puts like beside like:

- accuracy: ours (percent) beside the published percentage; difference = ours - published.
- time: the paper's epoch is its whole Table 2 training set (55000 examples for MNIST), ours
  is `train_size` examples (fewer with `train_limit`). Ours is put on the paper's epoch
  (seconds per training example x the paper's training-set size) before the difference and
  the ratio are taken; the published value stays as printed, and ours as measured (seconds
  per our own epoch) and both per-example times are kept beside it.

and notes, for every compared number, each setting in which our configuration differs from
the paper's (`setting_notes`).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from runner.errors import CpusweepError

PUBLISHED_PATH = Path(__file__).with_name("paper_numbers.csv")

# Published metric -> (summary column of ours, factor from our unit to the paper's).
METRICS: dict[str, tuple[str, float]] = {
    "test_accuracy": ("test_accuracy", 100.0),  # ours 0..1, the paper's percent
    "seconds_per_epoch": ("seconds_per_epoch", 1.0),
    "forward_seconds_per_epoch": ("forward_seconds_per_epoch", 1.0),
    "backward_seconds_per_epoch": ("backward_seconds_per_epoch", 1.0),
}
TIME_METRICS = tuple(m for m in METRICS if m != "test_accuracy")

# --- the paper's setting, each value with where the paper states it ---------------------------

PAPER_EPOCHS = 50  # §9.4
PAPER_WIDTH = 1000  # §9.4: 1000 hidden units per layer (the MLPs)
# §9.4: ResNet-18 "with two fully-connected layers as a classifier": in our terms a classifier
# of depth 1 (one hidden layer, then the output layer). Its width is not stated.
PAPER_CNN_DEPTH = 1
PAPER_CPU = "Intel Core i9-9920X"  # §9.1: every experiment on this one CPU
PAPER_THREADS = "PyTorch's default, all cores"  # the paper sets none (§9.1, §9.4)

# Training examples per epoch: the "Train" column of Table 2 (§9.2, "Dataset splits"). The
# paper's seconds per epoch (Tables 4, 5) are epochs over these many examples.
PAPER_TRAIN_SIZES: dict[str, int] = {
    "mnist": 55000,
    "fashion_mnist": 55000,
    "kmnist": 55000,
    "emnist_letters": 104800,
    "norb": 22300,
    "cifar10": 45000,
}

# MC-APPROX's sample size: §9.4 sets k = 10 column-row pairs per product, §10.2 speaks of its
# "sampling ratio (p ~ 0.1)". Ours is the paper's if it is either (sample_ratio > 0 replaces k).
PAPER_MC_K = 10
PAPER_MC_RATIO = 0.1

# Other method hyperparameters the paper states: result column -> (value, where it says so).
# Hyperparameters it does not state (e.g. standout's alpha and beta) are not compared.
PAPER_METHOD_PARAMS: dict[str, tuple[float | str, str]] = {
    "dropout.keep": (0.05, "§9.4: p = 0.05"),
    "alsh_approx.K": (6, "§9.4"),
    "alsh_approx.L": (5, "§9.4"),
    "alsh_approx.m": (3, "§9.4, Eq. 3"),
    "alsh_approx.active_fraction": (0.05, "§10.2: 5% of the nodes"),
    "alsh_approx.rebuild_early": (100, "§10.2"),
    "alsh_approx.rebuild_late": (1000, "§10.2"),
    "alsh_approx.rebuild_switch": (10000, "§10.2"),
    # Not stated in the text; what the code the paper ran does (methods.md).
    "alsh_approx.hash_bias": ("ignore", "its code hashes w and queries a/|a|"),
    "alsh_approx.active_size": ("buckets", "its code adds whole buckets until 5%"),
}


def paper_lr(method: str, batch_size: int, arch: str) -> float:
    """The paper's learning rate (§9.4): 1e-4 for MC-APPROX with SGD at batch 1, else 1e-3."""
    return 1e-4 if method == "mc_approx" and batch_size == 1 and arch == "mlp" else 1e-3


def paper_optimizer(method: str, arch: str) -> str:
    """The paper's optimizer (§9.4): Adam for ALSH-APPROX's MLPs, SGD otherwise (the CNN too)."""
    return "adam" if method == "alsh_approx" and arch == "mlp" else "sgd"


_COLUMNS = (
    "source",
    "metric",
    "dataset",
    "arch",
    "method",
    "batch_size",
    "depth",
    "label",
    "value",
    "spread",
    "note",
)


class PublishedDataError(CpusweepError):
    """The published-numbers file is malformed."""


@dataclass(frozen=True)
class PublishedNumber:
    source: str
    metric: str
    dataset: str
    arch: str
    method: str
    batch_size: int
    depth: int | None  # None: the paper varies no depth here (the CNN)
    label: str  # the paper's column heading
    value: float
    spread: float | None
    note: str


def _number(text: str, where: str, optional: bool = False) -> float | None:
    if optional and not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise PublishedDataError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise PublishedDataError(f"{where}: {text!r} is not a finite number")
    return value


def load_published(path: Path = PUBLISHED_PATH) -> list[PublishedNumber]:
    """Read and check the published numbers (comment lines start with '#')."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PublishedDataError(f"cannot read the published numbers {path}: {exc}") from None
    reader = csv.DictReader(line for line in lines if line.strip() and not line.startswith("#"))
    if tuple(reader.fieldnames or ()) != _COLUMNS:
        raise PublishedDataError(
            f"{path}: the header must be {','.join(_COLUMNS)}, got {reader.fieldnames}"
        )
    numbers = []
    for i, row in enumerate(reader, start=1):
        where = f"{path} data row {i}"
        if row["metric"] not in METRICS:
            raise PublishedDataError(
                f"{where}: unknown metric {row['metric']!r}; valid: {', '.join(METRICS)}"
            )
        if not row["source"].strip():
            raise PublishedDataError(f"{where}: every number needs its source")
        if row["dataset"] not in PAPER_TRAIN_SIZES:
            raise PublishedDataError(
                f"{where}: dataset {row['dataset']!r} has no training-set size in the paper's "
                f"Table 2 (PAPER_TRAIN_SIZES: {', '.join(PAPER_TRAIN_SIZES)})"
            )
        batch = _number(row["batch_size"], f"{where} batch_size")
        depth = _number(row["depth"], f"{where} depth", optional=True)
        value = _number(row["value"], f"{where} value")
        assert batch is not None and value is not None  # not optional
        numbers.append(
            PublishedNumber(
                source=row["source"],
                metric=row["metric"],
                dataset=row["dataset"],
                arch=row["arch"],
                method=row["method"],
                batch_size=int(batch),
                depth=None if depth is None else int(depth),
                label=row["label"],
                value=value,
                spread=_number(row["spread"], f"{where} spread", optional=True),
                note=row["note"],
            )
        )
    return numbers


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _differs(ours: Any, paper: float | str) -> bool:
    if isinstance(paper, str) or isinstance(ours, str):
        return str(ours) != str(paper)
    return not math.isclose(float(ours), float(paper), rel_tol=1e-9, abs_tol=1e-12)


def _show(value: Any) -> str:
    return format(value, "g") if isinstance(value, (int, float)) else str(value)


def train_size(config: pd.Series) -> int | None:
    """Our training examples per epoch (the rows' `train_size`), None where not recorded."""
    size = config.get("train_size")
    if not _present(size) or float(size) <= 0:
        return None
    return int(size)


def setting_notes(config: pd.Series, metric: str, dataset: str) -> list[str]:
    """Every setting in which our configuration differs from the paper's for a number of
    `metric` on `dataset`: training-set size, epochs, width (the CNN: classifier depth),
    learning rate, optimizer, momentum, the method hyperparameters the paper states, and for
    times the torch threads and the CPU. Batch size, depth (MLPs), method and dataset are
    what a comparison matches on, so never differ; threads and CPU change no accuracy."""
    notes = []
    paper_size, size = PAPER_TRAIN_SIZES[dataset], train_size(config)
    limit = config.get("train_limit")
    limited = f", train_limit {int(limit)}" if _present(limit) else ""
    timed = metric in TIME_METRICS
    if size is None:
        notes.append(
            f"ours: training-set size not recorded{limited} (paper: {paper_size}, Table 2)"
            + ("; ours not put on the paper's epoch" if timed else "")
        )
    elif size != paper_size:
        if timed:
            notes.append(
                f"ours: {size} training examples per epoch{limited} (paper: {paper_size}, "
                f"Table 2): ours scaled x{paper_size / size:.4g} to a {paper_size}-example "
                f"epoch, from {float(config[METRICS[metric][0]]):.4g} s measured"
            )
        else:
            notes.append(
                f"ours: trained on {size} examples{limited} (paper: {paper_size}, Table 2)"
            )
    epochs = config.get("epochs")
    if _present(epochs) and int(epochs) != PAPER_EPOCHS:
        notes.append(f"ours: {int(epochs)} epochs (paper: {PAPER_EPOCHS})")
    method, arch = str(config.get("method")), str(config.get("arch"))
    width, depth = config.get("width"), config.get("depth")
    if arch == "mlp" and _present(width) and int(width) != PAPER_WIDTH:
        notes.append(f"ours: width {int(width)} (paper: {PAPER_WIDTH})")
    if arch == "cnn" and _present(depth) and int(depth) != PAPER_CNN_DEPTH:
        notes.append(
            f"ours: a classifier of {int(depth)} hidden FC layer(s) "
            f"(paper: {PAPER_CNN_DEPTH}, its two FC layers)"
        )
    lr, optimizer = config.get("lr"), config.get("optimizer")
    expected_lr = paper_lr(method, int(config.get("batch_size", 0)), arch)
    if _present(lr) and _differs(float(lr), expected_lr):
        notes.append(f"ours: lr {float(lr):g} (paper: {expected_lr:g})")
    if _present(optimizer) and optimizer != paper_optimizer(method, arch):
        notes.append(f"ours: {optimizer} (paper: {paper_optimizer(method, arch)})")
    momentum = config.get("momentum")
    if optimizer == "sgd" and _present(momentum) and float(momentum) != 0.0:
        notes.append(f"ours: SGD momentum {float(momentum):g} (paper: plain SGD, 0)")
    if method == "mc_approx":
        notes += _mc_sampling_notes(config)
    for column, (paper, where) in PAPER_METHOD_PARAMS.items():
        if column.split(".", 1)[0] != method or not _present(config.get(column)):
            continue
        if _differs(config[column], paper):
            notes.append(f"ours: {column} {_show(config[column])} (paper: {_show(paper)}, {where})")
    if timed:
        threads = config.get("threads")
        if _present(threads) and str(threads):
            notes.append(f"ours: {threads} torch thread(s) (paper: {PAPER_THREADS})")
        else:
            notes.append(f"ours: torch threads not recorded (paper: {PAPER_THREADS})")
        cpus = config.get("cpu_models")
        if not _present(cpus) or not str(cpus).strip():
            notes.append(f"ours: CPU model not recorded (paper: {PAPER_CPU}, §9.1)")
        elif not all(_is_paper_cpu(cpu) for cpu in str(cpus).split(", ")):
            notes.append(f"ours: on {cpus} (paper: {PAPER_CPU}, §9.1)")
    return notes


def _mc_sampling_notes(config: pd.Series) -> list[str]:
    ratio, k = config.get("mc_approx.sample_ratio"), config.get("mc_approx.k")
    if _present(ratio) and float(ratio) > 0:
        if not _differs(float(ratio), PAPER_MC_RATIO):
            return []
        ours = f"mc_approx.sample_ratio {float(ratio):g}"
    elif _present(k):
        if int(k) == PAPER_MC_K:
            return []
        ours = f"mc_approx.k {int(k)}"
    else:
        return []
    return [
        f"ours: {ours} (paper: k = {PAPER_MC_K} pairs per product, §9.4, or a sampling "
        f"ratio of about {PAPER_MC_RATIO:g}, §10.2)"
    ]


def _is_paper_cpu(model: str) -> bool:
    return "i9-9920x" in model.lower()


def compare(
    published: list[PublishedNumber], summary: pd.DataFrame
) -> tuple[pd.DataFrame, list[PublishedNumber]]:
    """Published numbers beside ours: one row per (published number, matching configuration)
    of the summary, and the published numbers that no configuration of the sweep matches.

    Columns: `published` (as printed) and `published_spread`; `ours` and `ours_std` in the
    published number's unit (`compared_as`), which for times means seconds per epoch of the
    paper's training set (`paper_train_size`): ours per training example x that size;
    `ours_measured` and `ours_measured_std` (seconds per epoch of our `ours_train_size`
    examples, for times; = `ours` for accuracy); `published_per_example` and
    `ours_per_example` (seconds per training example, times only); `difference` (ours -
    published) and, for times, `ratio` (ours / published), both of like quantities; `note`:
    the number's own caveat and every setting of ours that differs from the paper's."""
    rows = []
    unmatched = []
    for number in published:
        column, factor = METRICS[number.metric]
        if summary.empty:
            unmatched.append(number)
            continue
        hit = (
            (summary["dataset"] == number.dataset)
            & (summary["arch"] == number.arch)
            & (summary["method"] == number.method)
            & (summary["batch_size"] == number.batch_size)
        )
        if number.depth is not None:
            hit &= summary["depth"] == number.depth
        matches = summary[hit]
        if matches.empty:
            unmatched.append(number)
            continue
        timed = number.metric in TIME_METRICS
        paper_size = PAPER_TRAIN_SIZES[number.dataset]
        for _, config in matches.iterrows():
            measured = float(config[column]) * factor
            measured_std = float(config[f"{column}_std"]) * factor
            size = train_size(config)
            if not timed:
                scale = 1.0
                compared_as = "test accuracy (%)"
            else:
                scale = paper_size / size if size else math.nan
                compared_as = f"s per epoch of {paper_size} examples"
            ours, ours_std = measured * scale, measured_std * scale
            notes = [number.note] if number.note else []
            notes += setting_notes(config, number.metric, number.dataset)
            rows.append(
                {
                    "source": number.source,
                    "metric": number.metric,
                    "dataset": number.dataset,
                    "arch": number.arch,
                    "depth": number.depth if number.depth is not None else config["depth"],
                    "paper_label": number.label,
                    "label": config["label"],
                    "compared_as": compared_as,
                    "published": number.value,
                    "published_spread": number.spread,
                    "paper_train_size": paper_size,
                    "ours": ours,
                    "ours_std": ours_std,
                    "ours_measured": measured,
                    "ours_measured_std": measured_std,
                    "ours_train_size": size if size is not None else math.nan,
                    "published_per_example": number.value / paper_size if timed else math.nan,
                    "ours_per_example": measured / size if timed and size else math.nan,
                    "seeds": int(config["seeds"]),
                    "difference": ours - number.value,
                    "ratio": ours / number.value if timed and number.value else math.nan,
                    "note": "; ".join(notes),
                }
            )
    return pd.DataFrame(rows), unmatched
