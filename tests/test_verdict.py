"""Telling a cell that did not learn (chance accuracy, diverged) from one that did."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from runner.results.learning import ALPHA, CHANCE, DIVERGED, LEARNED, binomial_upper_tail, verdict


@pytest.mark.parametrize(
    ("successes", "trials", "p"),
    [
        (0, 10, 0.3),
        (3, 10, 0.3),
        (10, 10, 0.3),
        (64, 360, 0.1194),
        (1235, 10000, 0.1135),
        (5055, 24300, 0.2),
        (20, 20, 0.999),
        (1, 5, 1e-9),
    ],
)
def test_binomial_tail_is_exact(successes: int, trials: int, p: float) -> None:
    expected = scipy.stats.binom.sf(successes - 1, trials, p)
    assert binomial_upper_tail(successes, trials, p) == pytest.approx(
        expected, rel=1e-9, abs=1e-300
    )


def confusion_of(truth: np.ndarray, predicted: np.ndarray, classes: int) -> list[list[int]]:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix.tolist()


def test_a_predictor_at_chance_is_flagged_at_the_stated_rate() -> None:
    """2000 simulated predictors that guess (uniformly, or always the most common class) on
    360 test examples: each is flagged with probability >= 1 - ALPHA = 0.999, so more than
    1990 of 2000 are, except with probability < 1e-4 (binomial)."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 10, size=360)
    flagged = 0
    for trial in range(2000):
        guesses = (
            rng.integers(0, 10, size=360)
            if trial % 2
            else np.full(360, np.bincount(truth).argmax())
        )
        result = verdict(confusion_of(truth, guesses, 10), diverged=False)
        flagged += result.flag == CHANCE
    assert flagged > 1990


def test_a_network_that_learned_is_not_flagged() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 10, size=360)
    # Right 30% of the time, else a guess: well above chance (about 37% correct).
    predicted = np.where(rng.random(360) < 0.3, truth, rng.integers(0, 10, size=360))
    result = verdict(confusion_of(truth, predicted, 10), diverged=False)
    assert result.flag == LEARNED and result.learned
    assert result.p_value < ALPHA


def test_chance_is_the_most_common_class_and_divergence_wins() -> None:
    # 90 of 100 test examples are class 0: always answering 0 scores 90% and is chance.
    confusion = [[90, 0], [10, 0]]
    result = verdict(confusion, diverged=False)
    assert result.chance_accuracy == 0.9 and result.flag == CHANCE
    assert verdict([[50, 0], [0, 50]], diverged=True).flag == DIVERGED
    empty = verdict([[0, 0], [0, 0]], diverged=False)
    assert empty.flag == LEARNED and math.isnan(empty.chance_accuracy)
