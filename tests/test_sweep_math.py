"""Summary math of sweeps: ranks with ties, Spearman, the best trial, tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ccd_ray.method.metrics import ranks, spearman
from ccd_ray.sweep.summary_math import (
    DEPENDENCIES,
    best_trial,
    dependencies_markdown,
    markdown_table,
)


def test_ranks_average_ties():
    assert ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # monotone but non-linear: still 1
    assert spearman([1, 2, 3, 4, 5], [1, 4, 9, 16, 1000]) == pytest.approx(1.0)
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    # NaN pairs are dropped
    assert spearman([1, 2, float("nan"), 3], [1, 2, 5, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2, 3])


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 12).astype(float)
        y = x + rng.integers(-3, 4, 12)
        expected = scipy_stats.spearmanr(x, y).statistic
        got = spearman(x, y)
        assert (math.isnan(expected) and math.isnan(got)) or got == pytest.approx(expected)


def test_best_trial_prefers_completed_and_is_stable():
    rows = [{"trial": "a", "objective": 50.0, "status": "completed"},
            {"trial": "b", "objective": 90.0, "status": "stopped"},
            {"trial": "c", "objective": 70.0, "status": "completed"},
            {"trial": "d", "objective": 70.0, "status": "completed"},
            {"trial": "e", "objective": float("nan"), "status": "completed"}]
    assert best_trial(rows, "objective")["trial"] == "c"
    assert best_trial(rows, "objective", "min")["trial"] == "a"
    assert best_trial(rows[1:2], "objective")["trial"] == "b"  # none completed: best of all
    with pytest.raises(ValueError):
        best_trial(rows[4:], "objective")


def test_tables():
    text = markdown_table([{"a": 1.23456, "b": None}, {"a": float("nan"), "b": "x"}], ["a", "b"])
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| 1.235 |  |", "| nan | x |"]
    deps = dependencies_markdown()
    assert len(deps.splitlines()) == len(DEPENDENCIES) + 2 and "gamma" in deps
