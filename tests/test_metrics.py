"""Metrics against sklearn (an independent oracle) and a hand-computed F1 example."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from ccd_ray.method.metrics import (
    average_precision,
    f1_scores,
    mean_average_precision,
    per_class_ap,
    score_rows,
)


def _sk(targets, scores):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the all-negative column
        return average_precision_score(targets, scores, average=None)


def _random_problem(seed, n=60, c=6, decimals=None, empty_column=None):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[0] = 1  # every class has a positive ...
    if empty_column is not None:
        targets[:, empty_column] = 0  # ... except this one
    scores = np.clip(0.35 * targets + rng.random((n, c)) * 0.8, 0, 1)
    if decimals is not None:
        scores = np.round(scores, decimals)
    return scores, targets


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("decimals", [None, 1])
def test_per_class_ap_matches_sklearn(seed, decimals):
    scores, targets = _random_problem(seed, decimals=decimals)
    if decimals == 1:  # really heavy ties: at most 11 distinct values for 60 images
        assert len(np.unique(scores[:, 0])) <= 11
    ours = per_class_ap(scores, targets)
    np.testing.assert_allclose(ours, _sk(targets, scores), rtol=1e-12, atol=1e-12)
    assert mean_average_precision(scores, targets) == pytest.approx(
        average_precision_score(targets, scores, average="macro"), abs=1e-12)
    for c in range(scores.shape[1]):
        assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(ours[c], abs=0)


def test_ties_matter():
    """All scores tied: precision at the single threshold is the positive rate."""
    targets = np.array([1, 0, 0, 1, 0])
    assert average_precision(np.full(5, 0.5), targets) == pytest.approx(0.4)
    # sklearn agrees, and an order-dependent (tie-breaking) AP would not be 0.4
    assert average_precision_score(targets, np.full(5, 0.5)) == pytest.approx(0.4)


def test_hand_example():
    # ranking: 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = 1/2 * 1 + 1/2 * 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]),
                             np.array([1, 0, 1, 0])) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(np.array([0.2, 0.9]), np.array([1, 0])) == pytest.approx(0.5)
    assert average_precision(np.array([0.9, 0.2]), np.array([True, False])) == 1.0


@pytest.mark.parametrize("decimals", [None, 1])
def test_all_negative_class(decimals):
    scores, targets = _random_problem(7, decimals=decimals, empty_column=2)
    sk = _sk(targets, scores)
    ours = per_class_ap(scores, targets)
    # sklearn returns 0 for a column without positives (with a warning); ours is NaN
    assert sk[2] == 0.0
    assert math.isnan(ours[2])
    assert math.isnan(average_precision(scores[:, 2], targets[:, 2]))
    others = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(ours[others], sk[others], rtol=1e-12, atol=1e-12)
    # mAP excludes the empty class ...
    m = mean_average_precision(scores, targets)
    assert m == pytest.approx(np.mean(sk[others]), abs=1e-12)
    assert m != pytest.approx(np.mean(sk), abs=1e-6)
    # ... or scores it 0 like the authors' code (= sklearn's macro mean here)
    assert mean_average_precision(scores, targets, empty_class="zero") == pytest.approx(
        np.mean(sk), abs=1e-12)
    assert mean_average_precision(scores, targets, empty_class="zero") < m


def test_map_all_classes_empty_and_bad_mode():
    scores = np.random.default_rng(0).random((5, 3))
    targets = np.zeros((5, 3), dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" warning either
        assert math.isnan(mean_average_precision(scores, targets))
    assert mean_average_precision(scores, targets, empty_class="zero") == 0.0
    with pytest.raises(ValueError, match="empty_class"):
        mean_average_precision(scores, targets, empty_class="drop")


def test_f1_scores_hand_example():
    scores = np.array([[0.9, 0.2, 0.6],
                       [0.7, 0.8, 0.1],
                       [0.1, 0.6, 0.3],
                       [0.4, 0.1, 0.2]])
    targets = np.array([[1, 0, 1],
                        [0, 1, 0],
                        [1, 1, 0],
                        [0, 0, 0]])
    # threshold 0.5: predictions [[1,0,1],[1,1,0],[0,1,0],[0,0,0]]
    # class 0: tp 1, pred 2, true 2 -> P 1/2, R 1/2
    # class 1: tp 2, pred 2, true 2 -> P 1,   R 1
    # class 2: tp 1, pred 1, true 1 -> P 1,   R 1
    out = f1_scores(scores, targets, 0.5)
    cp, cr = (0.5 + 1 + 1) / 3, (0.5 + 1 + 1) / 3
    assert out["CP"] == pytest.approx(cp)
    assert out["CR"] == pytest.approx(cr)
    assert out["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    # overall: tp 4, predicted 5, true 5
    assert out["OP"] == pytest.approx(4 / 5)
    assert out["OR"] == pytest.approx(4 / 5)
    assert out["OF1"] == pytest.approx(4 / 5)


def test_f1_scores_asymmetric_and_edge_cases():
    scores = np.array([[0.9, 0.9], [0.9, 0.1], [0.1, 0.1]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    out = f1_scores(scores, targets, 0.5)
    # class 0: tp 1, pred 2, true 2; class 1: tp 0, pred 1, true 0 (recall 0 by convention)
    assert out["CP"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["CR"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["OP"] == pytest.approx(1 / 3)
    assert out["OR"] == pytest.approx(1 / 2)
    assert out["OF1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # the threshold is inclusive
    assert f1_scores(np.array([[0.5]]), np.array([[1]]), 0.5)["OF1"] == 1.0
    # nothing predicted, nothing true: all zeros, no division warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = f1_scores(np.zeros((3, 2)), np.zeros((3, 2)), 0.5)
    assert all(v == 0.0 for v in empty.values())



def test_f1_scores_per_class_thresholds():
    scores = np.array([[0.30, 0.90], [0.20, 0.70], [0.05, 0.95]])
    targets = np.array([[1, 1], [1, 0], [0, 1]])
    # class 0 at 0.1: predicts rows 0, 1 (tp 2); class 1 at 0.8: rows 0, 2 (tp 2): all right
    out = f1_scores(scores, targets, np.array([0.1, 0.8]))
    assert out["CF1"] == pytest.approx(1.0) and out["OF1"] == pytest.approx(1.0)
    # the same vector reversed is not the same rule: class 0 at 0.8 predicts nothing
    swapped = f1_scores(scores, targets, np.array([0.8, 0.1]))
    assert swapped["CP"] == pytest.approx((0 + 2 / 3) / 2)
    # one number is every class at that number
    assert f1_scores(scores, targets, 0.5) == f1_scores(scores, targets, np.array([0.5, 0.5]))


def test_f1_scores_count_the_labels_a_run_writes_at_float32_edges():
    # float32(0.7) < 0.7: a float32 score equal to the float32 threshold is a written label
    # (labels.binarize compares in the scores' dtype), so the metric must count it as one
    scores = np.array([[np.float32(0.7)], [np.float32(0.2)]], np.float32)
    truth = np.array([[1], [0]])
    result = f1_scores(scores, truth, 0.7)
    assert result["CR"] == 1.0 and result["CP"] == 1.0


def test_score_rows_keeps_only_rows_with_truth():
    ids = np.array(["a", "b", "c", "d"])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.1]])
    truth = {"a": ["cat"], "b": ["dog"], "d": ["cat", "bird"], "z": ["dog"]}
    out = score_rows(ids, scores, truth, ["cat", "dog"], 0.5)
    assert out["images"] == 3  # c has no truth, z no scores; 'bird' is not a configured class
    kept = scores[[0, 1, 3]]
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    assert out["mAP"] == pytest.approx(100 * mean_average_precision(kept, targets))
    assert out["CF1"] == pytest.approx(100 * f1_scores(kept, targets, 0.5)["CF1"])
    assert set(out["per_class_AP"]) == {"cat", "dog"}
    assert score_rows(ids, scores, {"z": ["dog"]}, ["cat", "dog"], 0.5) is None
