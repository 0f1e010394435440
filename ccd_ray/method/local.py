"""The in-process executor of the round loop: teacher scores from a `ScoreSource` (a teacher in
this process, or scores computed earlier), training in this process through the same
`fit_epochs` the Ray Train workers run, on the same stored inputs in the same row order.
Used by the tests' parity oracle and by sweep trials."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ccd_ray.config import CCDConfig
from ccd_ray.io.inputs_codec import resize_inputs, round_trip
from ccd_ray.method.classifier import CAMClassifier, normalise
from ccd_ray.method.rounds import RoundScores, RoundsResult, Targets, run_rounds
from ccd_ray.method.rows import Chunk, attach_targets
from ccd_ray.method.schedule import Segment, is_holdout, selection_threshold
from ccd_ray.method.scoring import classifier_outputs, initial_scores, relabel_boxes, score_boxes
from ccd_ray.method.training import fit_epochs, new_classifier

CHUNK_ROWS = 256  # rows per chunk of the in-memory input stream (the order does not depend on it)


@dataclass
class TrainingInputs:
    """Stored classifier inputs in their stream order (a train-inputs stage's row order):
    uint8 N x 3 x S x S pixels (decoded from their stored encoding) and the held-out flag of
    each image."""
    ids: np.ndarray
    pixels: np.ndarray
    holdout: np.ndarray

    @classmethod
    def from_images(cls, ids: list[str], images: list[torch.Tensor], cfg: CCDConfig
                    ) -> "TrainingInputs":
        """Inputs resized and encoded as the train-inputs stage stores them, decoded as the
        Train workers read them, split as a run splits them."""
        tc = cfg.train
        pixels = round_trip(resize_inputs(images, tc.image_size), tc.inputs_encoding,
                            tc.inputs_quality)
        return cls(np.asarray(ids), pixels,
                   np.array([is_holdout(i, cfg.train.holdout_fraction, cfg.seed) for i in ids]))

    def chunks(self, targets: Targets) -> Iterator[Chunk]:
        for start in range(0, len(self.ids), CHUNK_ROWS):
            part = slice(start, start + CHUNK_ROWS)
            yield attach_targets(self.ids[part], self.holdout[part], self.pixels[part],
                                 targets.ids, targets.scores, targets.weights)

    @property
    def training_pixels(self) -> np.ndarray:
        return self.pixels[~self.holdout]


@torch.no_grad()
def predict_pixels(model: CAMClassifier, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities of stored uint8 inputs (N x 3 x S x S)."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(normalise(torch.from_numpy(pixels[i:i + batch_size]).to(device)))[0])
           .float().cpu().numpy() for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


class ScoreSource(Protocol):
    def raw(self, cfg: CCDConfig, round_index: int, model: CAMClassifier | None,
            threshold: Callable[[], float]) -> np.ndarray:
        """N x C pooled teacher scores of a round, rows following the executor's sorted ids;
        threshold() gives the round's class-selection threshold when it is needed."""

    @property
    def teacher_passes(self) -> int:
        """Teacher forward passes this source ran in this process."""

    @property
    def teacher_seconds(self) -> float:
        """Wall time this source spent scoring views (crops + teacher) in this process."""


class CachedScores:
    """Scores computed before, one matrix per round: the trial's classifier is not consulted,
    so round R >= 1 uses the boxes of whatever classifier produced them, and no CLIP runs."""

    def __init__(self, raw: list[np.ndarray]):
        self.rounds = raw

    def raw(self, cfg, round_index, model, threshold) -> np.ndarray:
        return self.rounds[round_index]

    teacher_passes = 0
    teacher_seconds = 0.0


class TeacherScores:
    """A teacher in this process scoring every view of decoded images (rows follow ids)."""

    def __init__(self, images: list[torch.Tensor], ids: list[str],
                 teacher_factory: Callable[[], Any]):
        started = time.time()
        self.images, self.ids = images, ids
        self.teacher = teacher_factory()
        self.seconds = time.time() - started  # loading the teacher is part of its cost

    def raw(self, cfg, round_index, model, threshold) -> np.ndarray:
        started = time.time()
        if round_index == 0:
            scores = initial_scores(self.teacher, self.images, self.ids, cfg)
        else:
            probs, cams = classifier_outputs(model, self.images, cfg.train.image_size)
            boxes = relabel_boxes(probs, cams, self.images, self.ids, threshold(), round_index,
                                  cfg)
            scores = score_boxes(self.teacher, self.images, boxes, cfg)
        self.seconds += time.time() - started
        return scores.numpy()

    @property
    def teacher_passes(self) -> int:
        return self.teacher.forward_passes

    @property
    def teacher_seconds(self) -> float:
        return self.seconds


@dataclass
class Trained:
    """The in-process classifier between segments."""
    model: CAMClassifier
    optimizer: torch.optim.Optimizer


EpochReport = Callable[[dict[str, Any], Segment, CAMClassifier], None]


class LocalExecutor:
    """Runs the round loop's work in this process. ids: the images the source scores
    (sorted); inputs: the classifier's stored inputs; truth: N x C 0/1 following ids, for
    train.targets=ground_truth; on_epoch: called after every epoch (a sweep's Tune report)."""

    def __init__(self, cfg: CCDConfig, ids: list[str], source: ScoreSource,
                 inputs: TrainingInputs, truth: np.ndarray | None = None,
                 on_epoch: EpochReport | None = None, device: str | torch.device = "cpu"):
        if not np.all(np.asarray(ids[:-1]) <= np.asarray(ids[1:])):
            raise ValueError("LocalExecutor: ids must be sorted (the rows of every score matrix "
                             "follow them)")
        self.cfg, self.ids, self.source, self.inputs = cfg, np.asarray(ids), source, inputs
        self.truth, self.on_epoch = truth, on_epoch
        self.device = torch.device(device)
        self.history: list[dict[str, Any]] = []
        self.scored: dict[int, np.ndarray] = {}     # per round: the pooled raw scores
        self.published: dict[int, np.ndarray] = {}  # per round: the soft labels

    def score_round(self, round_index: int, trained: Trained | None) -> RoundScores:
        model = trained.model if trained is not None else None

        def threshold() -> float:
            return selection_threshold(
                self.cfg, lambda: predict_pixels(model, self.inputs.training_pixels))

        raw = np.asarray(self.source.raw(self.cfg, round_index, model, threshold), np.float32)
        self.scored[round_index] = raw
        return RoundScores(self.ids, raw)

    def publish_labels(self, round_index, ids, labels, bias, partials) -> None:
        self.published[round_index] = labels

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        if self.truth is None:
            raise ValueError("train.targets=ground_truth: no ground truth was given")
        return self.ids, self.truth

    def train_segment(self, segment: Segment, targets: Targets, trained: Trained | None
                      ) -> Trained:
        tc = self.cfg.train
        if trained is None:
            model, optimizer = new_classifier(self.cfg)  # as every Train worker starts
            trained = Trained(model.to(self.device), optimizer)

        def report(metrics: dict[str, Any]) -> None:
            entry = {**metrics, "labels_round": segment.labels_round}
            self.history.append(entry)
            if self.on_epoch is not None:
                self.on_epoch(entry, segment, trained.model)

        fit_epochs(trained.model, trained.optimizer, tc, self.cfg.seed, range(*segment.epochs),
                   lambda epoch: self.inputs.chunks(targets), report, self.device)
        return trained


def run_in_process(cfg: CCDConfig, images: list[torch.Tensor], ids: list[str], teacher
                   ) -> tuple[RoundsResult, LocalExecutor]:
    """The whole loop in this process on decoded images (ids sorted), scored by teacher."""
    executor = LocalExecutor(cfg, ids, TeacherScores(images, ids, lambda: teacher),
                             TrainingInputs.from_images(ids, images, cfg))
    return run_rounds(cfg, executor), executor
