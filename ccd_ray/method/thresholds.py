"""Label-free per-class thresholds and labels from scores (NumPy only: the part writers of
Ray Data tasks import it, and a task process that imports torch takes seconds longer to start).

`labels.threshold_rule` picks the rule: none uses ground truth (`class_thresholds`)."""

from __future__ import annotations

import numpy as np


def binarize(scores: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Bool labels: score at or above threshold (one number, or one per class)."""
    scores = np.asarray(scores)
    return scores >= np.asarray(threshold, dtype=scores.dtype)


def label_indices(scores: np.ndarray, threshold: float | np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The labels of N x C scores (binarize) as Arrow-style lists, without a Python object per
    row: (offsets, classes), row i's label indices being classes[offsets[i]:offsets[i + 1]],
    in class order."""
    mask = binarize(scores, threshold)
    offsets = np.zeros(len(mask) + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=offsets[1:])
    return offsets, np.nonzero(mask)[1]


def avg_count_threshold(probs: np.ndarray, avg_count: int) -> float:
    """The authors' relabel class-selection rule: the probability threshold at which on average
    avg_count classes per image pass (the (N * avg_count)-th largest probability)."""
    flat = np.asarray(probs).ravel()
    k = min(len(flat), max(1, avg_count * len(probs)))
    return float(np.partition(flat, len(flat) - k)[len(flat) - k])


def count_thresholds(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per class c, the score of its counts[c]-th highest image (counts clipped to [1, N]):
    the counts[c] images that score c highest get it (ties at that score too)."""
    scores = np.asarray(scores, dtype=np.float32)
    n, num_classes = scores.shape
    if n == 0:
        raise ValueError("count thresholds need at least one image's scores")
    k = np.clip(np.asarray(counts, dtype=np.int64), 1, n)
    # one column copy at a time: O(N) memory beyond the matrix, O(N) time per class
    return np.array([np.partition(scores[:, c], n - k[c])[n - k[c]] for c in range(num_classes)],
                    dtype=np.float32)


def rate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Per class c, the score of its k_c-th highest image, k_c = round(sum_i s_ic) clipped to
    [1, N]: the scores, read as probabilities, expect k_c images of class c, and the k_c
    images that score it highest get it (a class is assumed to occur at least once)."""
    scores = np.asarray(scores, dtype=np.float32)
    return count_thresholds(scores, np.rint(scores.sum(axis=0, dtype=np.float64)))


def otsu_thresholds(scores: np.ndarray, bins: int = 256) -> np.ndarray:
    """Per class, Otsu's split of its score histogram over [0, 1]: the bin edge that maximises
    the between-group variance of the low and the high scores (two modes, absent and present;
    the middle of the run of edges that tie for it).
    A class whose scores all fall in one bin gets that bin's upper edge: nothing separates its
    images, and none is labeled with it."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape[0] == 0:
        raise ValueError("Otsu thresholds need at least one image's scores")
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    thresholds = np.empty(scores.shape[1], dtype=np.float32)
    for c in range(scores.shape[1]):
        counts = np.histogram(np.clip(scores[:, c], 0.0, 1.0), bins=edges)[0].astype(np.float64)
        low = np.cumsum(counts)[:-1]                       # images at or below each split
        high = counts.sum() - low
        low_mass = np.cumsum(counts * centres)[:-1]
        high_mass = (counts * centres).sum() - low_mass
        mean_low = np.divide(low_mass, low, out=np.zeros_like(low), where=low > 0)
        mean_high = np.divide(high_mass, high, out=np.zeros_like(high), where=high > 0)
        between = low * high * (mean_high - mean_low) ** 2
        if between.max() <= 0:  # one occupied bin: nothing to split
            thresholds[c] = edges[int(np.flatnonzero(counts)[-1]) + 1]
        else:
            # splits inside an empty gap between the modes tie; take the gap's middle, not
            # its lower edge next to the absent mode
            first = last = int(between.argmax())
            while last + 1 < len(between) and between[last + 1] == between[first]:
                last += 1
            thresholds[c] = edges[(first + last) // 2 + 1]
    return thresholds


def class_thresholds(scores: np.ndarray, rule: str, threshold: float,
                     zero_shot: np.ndarray | None = None) -> np.ndarray:
    """C thresholds for an N x C score matrix under labels.threshold_rule, none of which uses
    ground truth: 'fixed' = threshold for every class, 'rate' = rate_thresholds,
    'otsu' = otsu_thresholds of the matrix's own scores, 'count' = as many images per class as
    Otsu's split of the teacher's zero-shot scores of the same images (zero_shot, row for
    row) gives it, taken in the order of these scores (count_thresholds)."""
    num_classes = np.asarray(scores).shape[1]
    if rule == "fixed":
        return np.full(num_classes, threshold, dtype=np.float32)
    if rule == "rate":
        return rate_thresholds(scores)
    if rule == "otsu":
        return otsu_thresholds(scores)
    if rule == "count":
        if zero_shot is None or np.shape(zero_shot) != np.shape(scores):
            raise ValueError(f"threshold rule 'count' needs the teacher's zero-shot scores of "
                             f"the same {np.shape(scores)} rows, got "
                             f"{None if zero_shot is None else np.shape(zero_shot)}")
        counts = binarize(zero_shot, otsu_thresholds(zero_shot)).sum(axis=0)
        return count_thresholds(scores, counts)
    raise ValueError(f"threshold rule {rule!r}: expected 'fixed', 'rate', 'otsu' or 'count'")
