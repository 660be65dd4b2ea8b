"""`compare` with the paper compares like with like, and names every setting that differs.

Summaries are built by hand (one row per configuration, the columns
`runner.report.analysis.summarise` gives), so nothing is trained and nothing is read from disk
but the published numbers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from runner.datasets.registry import DATASETS
from runner.report.configs import paper_label
from runner.report.page import comparison_markdown
from runner.report.published import (
    PAPER_METHOD_PARAMS,
    PAPER_TRAIN_SIZES,
    PublishedDataError,
    compare,
    load_published,
    paper_lr,
    paper_optimizer,
)

PAPER_CPU_MODEL = "Intel(R) Core(TM) i9-9920X CPU @ 3.50GHz"
THREADS_NOTE = "ours: 1 torch thread(s) (paper: PyTorch's default, all cores)"


def config(method: str = "standard", batch_size: int = 1, **changes: Any) -> dict[str, Any]:
    """A configuration in the paper's setting (§9.4, Table 2, on its CPU), then `changes`."""
    arch = changes.get("arch", "mlp")
    row: dict[str, Any] = {
        "config": "c",
        "dataset": "mnist",
        "arch": arch,
        "method": method,
        "depth": 3 if arch == "mlp" else 1,
        "width": 1000,
        "batch_size": batch_size,
        "lr": paper_lr(method, batch_size, arch),
        "optimizer": paper_optimizer(method, arch),
        "momentum": 0.0,
        "epochs": 50,
        "train_limit": None,
        "split_seed": 0,
        "label": paper_label(method, batch_size),
        "seeds": 3,
        "cells": 3,
        "test_accuracy": 0.9,
        "test_accuracy_std": 0.01,
        "seconds_per_epoch": 4.0,
        "seconds_per_epoch_std": 0.2,
        "forward_seconds_per_epoch": 1.0,
        "forward_seconds_per_epoch_std": 0.1,
        "backward_seconds_per_epoch": 2.0,
        "backward_seconds_per_epoch_std": 0.1,
        "threads": "1",
        "train_size": 55000,
        "cpu_models": PAPER_CPU_MODEL,
    }
    defaults: dict[str, dict[str, Any]] = {
        "dropout": {"dropout.keep": 0.05},
        "mc_approx": {"mc_approx.k": 10, "mc_approx.sample_ratio": 0.0},
        "alsh_approx": {c: v for c, (v, _) in PAPER_METHOD_PARAMS.items() if "alsh" in c},
    }
    row.update(defaults.get(method, {}))
    row.update(changes)
    return row


def compared(
    row: dict[str, Any], source: str = "Table 4", metric: str = "seconds_per_epoch"
) -> pd.Series:
    """The comparison of one configuration with the published number of `source`."""
    numbers = [n for n in load_published() if n.source.startswith(source) and n.metric == metric]
    comparison, _ = compare(numbers, pd.DataFrame([row]))
    assert len(comparison) == 1, comparison
    return comparison.iloc[0]


def notes(row: pd.Series) -> list[str]:
    return [n for n in row["note"].split("; ") if n]


# --- time: per training example, not per epoch of different sizes --------------------------------


def test_a_train_limit_sweeps_time_is_put_on_the_papers_55000_example_epoch() -> None:
    row = compared(config(batch_size=20, train_limit=11917, train_size=11917), "Table 5")
    assert row["published"] == 20.16  # as printed: seconds per 55000-example epoch
    assert row["paper_train_size"] == 55000 and row["ours_train_size"] == 11917
    assert row["ours_measured"] == 4.0 and row["ours_measured_std"] == 0.2
    assert row["ours_per_example"] == pytest.approx(4.0 / 11917)
    assert row["published_per_example"] == pytest.approx(20.16 / 55000)
    assert row["ours"] == pytest.approx(4.0 / 11917 * 55000)
    assert row["ours_std"] == pytest.approx(0.2 / 11917 * 55000)
    assert row["difference"] == pytest.approx(4.0 / 11917 * 55000 - 20.16)
    # The ratio is of like quantities: per example, or per epoch of the same size.
    assert row["ratio"] == pytest.approx(row["ours_per_example"] / row["published_per_example"])
    assert row["ratio"] != pytest.approx(4.0 / 20.16)
    assert row["compared_as"] == "s per epoch of 55000 examples"
    assert notes(row)[0] == (
        "ours: 11917 training examples per epoch, train_limit 11917 (paper: 55000, Table 2): "
        "ours scaled x4.615 to a 55000-example epoch, from 4 s measured"
    )


def test_the_forward_and_backward_times_are_scaled_alike() -> None:
    for metric, measured in (
        ("forward_seconds_per_epoch", 1.0),
        ("backward_seconds_per_epoch", 2.0),
    ):
        row = compared(config(train_size=5000), "Table 4", metric)
        assert row["ours"] == pytest.approx(measured * 11)
        assert row["ratio"] == pytest.approx(measured * 11 / row["published"])
        assert "5000 training examples per epoch" in row["note"]


@pytest.mark.parametrize("dataset", sorted(PAPER_TRAIN_SIZES))
def test_each_dataset_is_scaled_by_its_own_table2_size(dataset: str) -> None:
    any_time = next(n for n in load_published() if n.metric == "seconds_per_epoch")
    number = replace(any_time, dataset=dataset)  # the paper times MNIST only
    row = config(train_size=1000, method=number.method, batch_size=number.batch_size)
    row["dataset"] = dataset
    comparison, _ = compare([number], pd.DataFrame([row]))
    (ours,) = comparison["ours"]
    assert ours == pytest.approx(4.0 / 1000 * PAPER_TRAIN_SIZES[dataset])
    assert f"(paper: {PAPER_TRAIN_SIZES[dataset]}, Table 2)" in comparison["note"].iloc[0]


def test_an_unrecorded_training_set_size_is_not_compared_and_says_why() -> None:
    row = compared(config(train_size=float("nan")))
    assert row["ours"] != row["ours"] and row["ratio"] != row["ratio"]  # NaN: not compared
    assert row["ours_measured"] == 4.0
    assert "ours: training-set size not recorded (paper: 55000, Table 2)" in row["note"]
    assert "not put on the paper's epoch" in row["note"]


def test_the_full_training_set_is_not_scaled_and_gets_no_size_note() -> None:
    row = compared(config())
    assert row["ours"] == row["ours_measured"] == 4.0
    assert notes(row) == [THREADS_NOTE]  # on the paper's CPU, in its setting: threads only


# --- every setting that differs is named ---------------------------------------------------------

# (what changes, the configuration's method and batch size, a fragment the note must hold).
# Each case differs from the paper's setting in exactly one way, so each must add exactly one
# note: dropping any note from `setting_notes` fails its case.
CASES: list[tuple[dict[str, Any], str, int, str]] = [
    ({"train_size": 11917, "train_limit": 11917}, "standard", 1, "11917"),
    ({"epochs": 3}, "standard", 1, "ours: 3 epochs (paper: 50)"),
    ({"width": 512}, "standard", 1, "ours: width 512 (paper: 1000)"),
    ({"lr": 0.01}, "standard", 1, "ours: lr 0.01 (paper: 0.001)"),
    ({"lr": 0.001}, "mc_approx", 1, "ours: lr 0.001 (paper: 0.0001)"),
    ({"optimizer": "adam"}, "standard", 1, "ours: adam (paper: sgd)"),
    ({"optimizer": "sgd"}, "alsh_approx", 1, "ours: sgd (paper: adam)"),
    ({"momentum": 0.9}, "standard", 1, "ours: SGD momentum 0.9 (paper: plain SGD, 0)"),
    ({"dropout.keep": 0.5}, "dropout", 1, "ours: dropout.keep 0.5 (paper: 0.05, §9.4"),
    ({"mc_approx.k": 20}, "mc_approx", 20, "ours: mc_approx.k 20 (paper: k = 10"),
    ({"mc_approx.sample_ratio": 0.9}, "mc_approx", 20, "ours: mc_approx.sample_ratio 0.9"),
    *[
        ({column: value * 2}, "alsh_approx", 1, f"ours: {column} {value * 2:g} (paper: {value:g}")
        for column, (value, _) in PAPER_METHOD_PARAMS.items()
        if column.startswith("alsh_approx.") and isinstance(value, (int, float))
    ],
]


@pytest.mark.parametrize(
    ("changes", "method", "batch", "fragment"),
    CASES,
    ids=[next(iter(c[0])) + "-" + c[1] for c in CASES],
)
@pytest.mark.parametrize("source", ["Table 3", "Table 4"])
def test_each_setting_that_differs_from_the_papers_gets_its_own_note(
    changes: dict[str, Any], method: str, batch: int, fragment: str, source: str
) -> None:
    if source == "Table 4" and batch != 1:
        source = "Table 5"
    metric = "test_accuracy" if source == "Table 3" else "seconds_per_epoch"
    if method == "alsh_approx" and source == "Table 5":
        pytest.skip("the paper times ALSH-APPROX at batch 1 only")
    baseline = notes(compared(config(method, batch), source, metric))
    assert baseline == ([] if metric == "test_accuracy" else [THREADS_NOTE])
    changed = notes(compared(config(method, batch, **changes), source, metric))
    added = [n for n in changed if n not in baseline]
    assert len(changed) == len(baseline) + 1 and len(added) == 1, changed
    assert fragment in added[0]


def test_a_config_like_the_papers_but_for_lr_gets_a_note_naming_lr() -> None:
    row = compared(config("standard", 1, lr=0.05), "Table 3", "test_accuracy")
    assert row["note"] == "ours: lr 0.05 (paper: 0.001)"


def test_mc_approx_at_either_of_the_papers_sample_sizes_gets_no_note() -> None:
    # §9.4 says k = 10 pairs, §10.2 a sampling ratio of about 0.1: either is the paper's.
    for sampling in ({"mc_approx.k": 10}, {"mc_approx.sample_ratio": 0.1, "mc_approx.k": 3}):
        row = compared(config("mc_approx", 20, **sampling), "Table 3", "test_accuracy")
        assert row["note"] == "", sampling


def test_times_name_the_threads_and_the_machine_accuracies_do_not() -> None:
    ours = config(cpu_models="AMD EPYC 7B13", threads="2")
    time = notes(compared(ours))
    assert time == [
        "ours: 2 torch thread(s) (paper: PyTorch's default, all cores)",
        "ours: on AMD EPYC 7B13 (paper: Intel Core i9-9920X, §9.1)",
    ]
    assert notes(compared(ours, "Table 3", "test_accuracy")) == []
    unknown = notes(compared(config(cpu_models="")))
    assert "ours: CPU model not recorded (paper: Intel Core i9-9920X, §9.1)" in unknown
    mixed = notes(compared(config(cpu_models=f"AMD EPYC 7B13, {PAPER_CPU_MODEL}")))
    assert any(n.startswith("ours: on AMD EPYC 7B13, Intel") for n in mixed)


def test_the_cnn_notes_its_classifier_depth_not_a_width() -> None:
    number = next(n for n in load_published() if n.arch == "cnn" and n.method == "standard")
    row = config(arch="cnn", width=512, depth=2)
    row["dataset"] = "cifar10"
    row["train_size"] = 45000
    comparison, _ = compare([number], pd.DataFrame([row]))
    assert comparison["note"].iloc[0] == (
        "ours: a classifier of 2 hidden FC layer(s) (paper: 1, its two FC layers)"
    )


def test_every_difference_at_once_is_every_note() -> None:
    row = compared(
        config(
            "mc_approx",
            1,
            train_size=11917,
            train_limit=11917,
            epochs=3,
            width=512,
            lr=0.01,
            optimizer="adam",
            **{"mc_approx.k": 5},
            threads="2",
            cpu_models="AMD EPYC 7B13",
        )
    )
    assert [n.split(" (")[0] for n in notes(row)] == [
        "ours: 11917 training examples per epoch, train_limit 11917",
        "ours: 3 epochs",
        "ours: width 512",
        "ours: lr 0.01",
        "ours: adam",
        "ours: mc_approx.k 5",
        "ours: 2 torch thread(s)",
        "ours: on AMD EPYC 7B13",
    ]


# --- the page -----------------------------------------------------------------------------------


def test_the_page_says_what_is_compared_and_keeps_the_published_value_as_printed() -> None:
    numbers = [n for n in load_published() if n.source.startswith("Table 5")]
    comparison, _ = compare(
        [n for n in numbers if n.metric == "seconds_per_epoch" and n.method == "standard"],
        pd.DataFrame([config(batch_size=20, train_size=11917, train_limit=11917)]),
    )
    page = "\n".join(comparison_markdown(comparison, 0))
    assert "seconds per training example x the paper's training-set size" in page
    header = next(line for line in page.splitlines() if line.startswith("| source"))
    assert "| compared as | published (as printed) | ours (mean ± std, compared) |" in header
    assert "| ours as measured |" in header
    (line,) = [line for line in page.splitlines() if line.startswith("| Table 5")]
    ours = 4.0 / 11917 * 55000
    assert (
        f"| s per epoch of 55000 examples | 20.16 ± 0.12 | {ours:.4g} ± {0.2 / 11917 * 55000:.4g} "
        "| 4 ± 0.2 s per epoch of 11917 examples |"
    ) in line
    assert f"| {ours - 20.16:+.4g} | {ours / 20.16:.3g} |" in line


# --- Table 2 --------------------------------------------------------------------------------------


def test_table2_sizes_are_the_papers_and_our_full_training_sets() -> None:
    # §9.2 Table 2, "Train" column.
    assert PAPER_TRAIN_SIZES == {
        "mnist": 55000,
        "fashion_mnist": 55000,
        "kmnist": 55000,
        "emnist_letters": 104800,
        "norb": 22300,
        "cifar10": 45000,
    }
    # Our default splits follow it, so a sweep without train_limit runs the paper's epochs.
    for name, size in PAPER_TRAIN_SIZES.items():
        assert DATASETS[name].train == size
    assert {n.dataset for n in load_published()} <= set(PAPER_TRAIN_SIZES)


def test_a_published_number_of_a_dataset_without_a_table2_size_is_refused(
    tmp_path: Path,
) -> None:
    good = load_published.__defaults__[0].read_text(encoding="utf-8")  # type: ignore[index]
    bad = tmp_path / "numbers.csv"
    bad.write_text(good.replace(",mnist,mlp,", ",digits,mlp,", 1), encoding="utf-8")
    with pytest.raises(PublishedDataError, match="'digits' has no training-set size"):
        load_published(bad)
