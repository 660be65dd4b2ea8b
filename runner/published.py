"""The paper's published numbers, and their comparison with a sweep's own (pure pandas).

The numbers live in `paper_numbers.csv` beside this module, one row per printed number with
its source (table or figure, section), as printed: accuracy in percent, time in seconds per
epoch. `compare` matches them to a sweep's configurations by dataset, architecture, method,
batch size and depth, and gives ours, the difference (ours - published) and, for times, the
ratio.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

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
PAPER_EPOCHS = 50
PAPER_WIDTH = 1000


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


def _setting_notes(config: pd.Series, metric: str) -> list[str]:
    """Where our configuration differs from the paper's setting in a way that matters."""
    notes = []
    if metric == "test_accuracy" and config.get("epochs") != PAPER_EPOCHS:
        notes.append(f"ours: {config.get('epochs')} epochs (paper: {PAPER_EPOCHS})")
    limit = config.get("train_limit")
    if limit is not None and limit == limit:  # not NaN
        notes.append(f"ours: {int(limit)} training examples")
    if config.get("arch") == "mlp" and config.get("width") != PAPER_WIDTH:
        notes.append(f"ours: width {config.get('width')} (paper: {PAPER_WIDTH})")
    method, arch = str(config.get("method")), str(config.get("arch"))
    lr, optimizer = config.get("lr"), config.get("optimizer")
    expected_lr = paper_lr(method, int(config.get("batch_size", 0)), arch)
    if lr is not None and not math.isclose(float(lr), expected_lr):
        notes.append(f"ours: lr {float(lr):g} (paper: {expected_lr:g})")
    if optimizer is not None and optimizer != paper_optimizer(method, arch):
        notes.append(f"ours: {optimizer} (paper: {paper_optimizer(method, arch)})")
    threads = config.get("threads")
    if metric != "test_accuracy" and threads:
        notes.append(f"ours: {threads} torch thread(s) (paper: PyTorch's default, all cores)")
    return notes


def compare(
    published: list[PublishedNumber], summary: pd.DataFrame
) -> tuple[pd.DataFrame, list[PublishedNumber]]:
    """Published numbers beside ours: one row per (published number, matching configuration)
    of the summary, and the published numbers that no configuration of the sweep matches."""
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
        for _, config in matches.iterrows():
            ours = float(config[column]) * factor
            ours_std = float(config[f"{column}_std"]) * factor
            notes = [number.note] if number.note else []
            notes += _setting_notes(config, number.metric)
            rows.append(
                {
                    "source": number.source,
                    "metric": number.metric,
                    "dataset": number.dataset,
                    "arch": number.arch,
                    "depth": number.depth if number.depth is not None else config["depth"],
                    "paper_label": number.label,
                    "label": config["label"],
                    "published": number.value,
                    "published_spread": number.spread,
                    "ours": ours,
                    "ours_std": ours_std,
                    "seeds": int(config["seeds"]),
                    "difference": ours - number.value,
                    "ratio": ours / number.value
                    if number.metric != "test_accuracy" and number.value
                    else math.nan,
                    "note": "; ".join(notes),
                }
            )
    return pd.DataFrame(rows), unmatched
