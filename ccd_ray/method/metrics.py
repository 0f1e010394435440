"""Multi-label metrics: average precision per class, mAP, and CF1/OF1 at a threshold.

A class with no positive image has no defined AP (recall is 0/0): its AP is NaN and mAP is
the mean over the classes that have positives. The authors' code scores such a class 0;
`mean_average_precision(..., empty_class="zero")` reproduces that.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ccd_ray.method.thresholds import binarize


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: sum over distinct score thresholds of (recall step) x precision,
    with tied scores entering together (the step-wise definition sklearn also uses)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    true_pos = np.cumsum(targets)
    # the last index of each run of tied scores is where a threshold takes effect
    run_ends = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = true_pos[run_ends]
    precision = tp / (run_ends + 1)
    recall_step = np.diff(np.r_[0, tp]) / positives
    return float(np.sum(recall_step * precision))


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """N x C scores and 0/1 targets -> C APs (NaN for classes without positives)."""
    scores, targets = np.asarray(scores), np.asarray(targets)
    return np.array([average_precision(scores[:, c], targets[:, c])
                     for c in range(scores.shape[1])])


def mean_average_precision(scores: np.ndarray, targets: np.ndarray,
                           empty_class: str = "exclude") -> float:
    """mAP over classes; classes without positives are excluded, or scored 0 ('zero')."""
    aps = per_class_ap(scores, targets)
    if empty_class == "zero":
        return float(np.nan_to_num(aps, nan=0.0).mean())
    if empty_class != "exclude":
        raise ValueError(f"empty_class {empty_class!r}: expected 'exclude' or 'zero'")
    return float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")


def f1_scores(scores: np.ndarray, targets: np.ndarray, threshold: float | np.ndarray
              ) -> dict[str, float]:
    """Per-class (C*) and overall (O*) precision, recall and F1 of predictions >= threshold
    (one number, or C per-class thresholds).
    A class with no predictions has precision 0; with no positives, recall 0. The predictions
    are thresholds.binarize's, so a metric counts exactly the labels a run writes."""
    predicted = binarize(scores, threshold)
    truth = np.asarray(targets).astype(bool)
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    n_pred, n_true = predicted.sum(axis=0), truth.sum(axis=0)
    class_p = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)
    class_r = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)
    cp, cr = class_p.mean(), class_r.mean()
    op = tp.sum() / n_pred.sum() if n_pred.sum() else 0.0
    orc = tp.sum() / n_true.sum() if n_true.sum() else 0.0

    def f1(p: float, r: float) -> float:
        return float(2 * p * r / (p + r)) if p + r > 0 else 0.0

    return {"CP": float(cp), "CR": float(cr), "CF1": f1(cp, cr),
            "OP": float(op), "OR": float(orc), "OF1": f1(op, orc)}


def ranks(values: list[float] | np.ndarray) -> np.ndarray:
    """1-based ranks, ties getting the mean of the ranks they span (as Spearman needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    result = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        result[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(x: list[float] | np.ndarray, y: list[float] | np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of the tie-averaged ranks); NaN when
    fewer than two pairs or either side is constant, where it is undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman: {x.shape} and {y.shape} values")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def truth_matrix(truth: dict[str, list[str]], ids: list[str], class_names: list[str]
                 ) -> np.ndarray:
    index = {name: c for c, name in enumerate(class_names)}
    matrix = np.zeros((len(ids), len(class_names)), dtype=np.int8)
    for row, image_id in enumerate(ids):
        for name in truth[image_id]:
            if name in index:  # ground-truth classes outside the config are not scored
                matrix[row, index[name]] = 1
    return matrix


def score_rows(ids: np.ndarray, scores: np.ndarray, truth: dict[str, list[str]],
               class_names: list[str], threshold: float | np.ndarray) -> dict[str, Any] | None:
    """mAP, per-class AP and CF1/OF1 of the rows of an N x C score matrix (row i: image
    ids[i]) whose image has truth; threshold is one number or one per class."""
    ids = np.asarray(ids)
    keep = np.fromiter((str(i) in truth for i in ids), dtype=bool, count=len(ids))
    if not keep.any():
        return None
    kept_ids = [str(i) for i in ids[keep]]
    scores = np.asarray(scores)[keep]
    targets = truth_matrix(truth, kept_ids, class_names)
    aps = per_class_ap(scores, targets)
    return {"images": len(kept_ids), "mAP": 100 * mean_average_precision(scores, targets),
            "per_class_AP": {n: (None if np.isnan(a) else 100 * float(a))
                             for n, a in zip(class_names, aps)},
            **{k: 100 * v for k, v in f1_scores(scores, targets, threshold).items()}}

