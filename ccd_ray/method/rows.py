"""Joins of per-image rows by image id, and the training rows of stored inputs.

NumPy only (no torch): Ray Data's read workers, which decode the training inputs and attach
their targets every epoch, import this module, and a worker process that imported torch and
torchvision first would take seconds longer to start."""

from __future__ import annotations

import numpy as np

from ccd_ray.io.inputs_codec import decode_inputs

Chunk = dict[str, np.ndarray]


def find_rows(ids: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each id in sorted_ids, whether it is there): the one id join of the project,
    by binary search over sorted ids (no per-row dict). Rows of missing ids are meaningless."""
    rows = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    found = sorted_ids[rows] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
    return rows, found


def align_rows(ids: np.ndarray, reference_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Rows of matrix (ordered as the sorted reference_ids) for ids; every id must exist."""
    rows, found = find_rows(ids, reference_ids)
    if not found.all():
        missing = ids[~found]
        raise KeyError(f"{len(missing)} image(s) lack a previous label, e.g. {missing[0]!r}")
    return matrix[rows]


def attach_targets(ids: np.ndarray, holdout: np.ndarray, pixels: np.ndarray,
                   target_ids: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> Chunk:
    """The training rows of a chunk of stored inputs (not held out, with a target), joined with
    their soft targets and sample weights; target_ids is sorted, targets/weights follow it."""
    rows, found = find_rows(ids, target_ids)
    keep = ~np.asarray(holdout, dtype=bool) & found
    return {"pixels": pixels[keep], "targets": targets[rows[keep]],
            "weights": weights[rows[keep]]}


def training_rows(batch: Chunk, target_ids: np.ndarray, scores: np.ndarray,
                  weights: np.ndarray, image_size: int) -> Chunk:
    """A block of the train-inputs stage (image_id, image: encoded, holdout) as training rows:
    held-out rows are dropped before decoding (not worth it), the rest decoded and joined."""
    train = ~batch["holdout"].astype(bool)
    return attach_targets(batch["image_id"][train].astype(str), batch["holdout"][train],
                          decode_inputs(batch["image"][train], image_size), target_ids, scores,
                          weights)
