"""The CCD schedule: which epochs train on which round's labels, the held-out split, and the
relabel round's class-selection threshold. No torch: the train-inputs tasks split with it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ccd_ray.config import CCDConfig
from ccd_ray.method.thresholds import avg_count_threshold


@dataclass(frozen=True)
class Segment:
    index: int
    labels_round: int          # the round whose labels this segment trains on
    epochs: tuple[int, int]    # [first, end)


def schedule(cfg: CCDConfig) -> list[Segment]:
    """Training segments: warm-up on round-0 labels, then one epoch per relabel round, then
    the remaining epochs on the last round's labels (the authors relabel at epochs 2..)."""
    warmup, rounds, epochs = cfg.train.warmup_epochs, cfg.relabel.rounds, cfg.train.epochs
    if rounds == 0:
        return [Segment(0, 0, (0, epochs))]
    bounds = [0, warmup] + [warmup + r for r in range(1, rounds)] + [epochs]
    return [Segment(i, i, (bounds[i], bounds[i + 1])) for i in range(rounds + 1)]


def is_holdout(image_id: str, fraction: float, seed: int) -> bool:
    """A stable split: the same image is held out on every run with the same seed."""
    digest = hashlib.sha256(f"holdout\x1f{seed}\x1f{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def selection_threshold(cfg: CCDConfig, training_probs: Callable[[], np.ndarray]) -> float:
    """The relabel class-selection threshold: relabel.selection_threshold, or the authors'
    average-count rule on the classifier's probabilities over the training images (computed
    only when that rule asks for them)."""
    if cfg.relabel.class_selection == "threshold":
        return cfg.relabel.selection_threshold
    return avg_count_threshold(training_probs(), cfg.relabel.avg_count)
