"""The CCD round loop, written once over an executor: initial labels -> warm-up training ->
relabel round(s) guided by the classifier's CAMs -> training with consistency.

An executor does the heavy work (scoring views with the teacher, training the classifier)
where it runs it: `stages.pipeline.RayExecutor` over Ray Data and Ray Train with every stage
committed, `method.local.LocalExecutor` in this process (tests, the parity oracle, sweep
trials). The label math between the two (bias, debias, fusion, smoothing, sample weights)
happens here, so every executor derives the same labels from the same scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ccd_ray.config import CCDConfig
from ccd_ray.method import labels as label_ops
from ccd_ray.method.rows import align_rows, find_rows
from ccd_ray.method.schedule import Segment, schedule


@dataclass
class RoundScores:
    """Pooled teacher scores of a round: rows follow ids (sorted), one per scored image."""
    ids: np.ndarray   # N image ids, sorted
    raw: np.ndarray   # N x C float32


@dataclass
class Targets:
    """What a segment trains on: soft targets and sample weights, rows following sorted ids."""
    ids: np.ndarray
    scores: np.ndarray   # N x C float32
    weights: np.ndarray  # N float32


class Executor(Protocol):
    def score_round(self, round_index: int, trained: Any) -> RoundScores:
        """Round 0: phase-1 views; round R: views around the CAM boxes of `trained` (the
        classifier after the previous segment, as train_segment returned it)."""

    def publish_labels(self, round_index: int, ids: np.ndarray, labels: np.ndarray,
                       bias: np.ndarray, partials: dict[str, np.ndarray]) -> None:
        """Keep a round's labels (a Ray run commits them as round-R/labels)."""

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted ids, N x C 0/1) of the corpus's own labels, for train.targets=ground_truth."""

    def train_segment(self, segment: Segment, targets: Targets, trained: Any) -> Any:
        """Train the segment's epochs from `trained` (None: fresh weights); return the result."""


@dataclass
class RoundsResult:
    ids: np.ndarray                                     # round 0's scored images, sorted
    bias: np.ndarray                                    # C
    raw: list[np.ndarray] = field(default_factory=list)     # per round: pooled raw scores
    labels: list[np.ndarray] = field(default_factory=list)  # per round: soft labels
    trained: Any = None                                 # the last segment's result

    @property
    def final_labels(self) -> np.ndarray:
        return self.labels[-1]


def _targets(cfg: CCDConfig, executor: Executor, ids: np.ndarray, labels: np.ndarray,
             weight_ids: np.ndarray, weights: np.ndarray) -> Targets:
    if cfg.train.targets == "ground_truth":
        ids, scores = executor.ground_truth()
        scores = scores.astype(np.float32)
    else:
        scores = label_ops.smoothing_floor(torch.from_numpy(labels),
                                           cfg.labels.smoothing_floor).numpy()
    rows, known = find_rows(ids, weight_ids)
    return Targets(ids, scores, np.where(known, weights[rows], 1.0).astype(np.float32))


def run_rounds(cfg: CCDConfig, executor: Executor, stop_at_round: int | None = None
               ) -> RoundsResult:
    """Run the schedule; stop_at_round: return as soon as that round's scores are known,
    before training on them (how a sweep computes its base config's scores)."""
    lc = cfg.labels
    scores = executor.score_round(0, None)
    raw0 = torch.from_numpy(scores.raw)
    bias, partials = label_ops.initial_bias(raw0, lc.threshold, cfg.initial.entropy_threshold,
                                            lc.bias_statistic)
    ids = scores.ids
    labels = label_ops.round_labels(raw0, None, bias, lc.gamma, lc.alpha, lc.debias).numpy()
    result = RoundsResult(ids=ids, bias=bias.numpy(), raw=[scores.raw], labels=[labels])
    executor.publish_labels(0, ids, labels, result.bias,
                            {k: v.numpy() for k, v in partials.items()})
    if stop_at_round == 0:
        return result
    weights = label_ops.sample_weights(raw0, cfg.initial.entropy_threshold,
                                       cfg.initial.uncertain_weight).numpy()
    weight_ids = ids
    for segment in schedule(cfg):
        if segment.labels_round > 0:
            scores = executor.score_round(segment.labels_round, result.trained)
            previous = align_rows(scores.ids, ids, labels)
            ids = scores.ids
            labels = label_ops.round_labels(torch.from_numpy(scores.raw),
                                            torch.from_numpy(previous), bias, lc.gamma,
                                            lc.alpha, lc.debias).numpy()
            result.raw.append(scores.raw)
            result.labels.append(labels)
            executor.publish_labels(segment.labels_round, ids, labels, result.bias, {})
            if stop_at_round == segment.labels_round:
                return result
        targets = _targets(cfg, executor, ids, labels, weight_ids, weights)
        result.trained = executor.train_segment(segment, targets, result.trained)
    return result
