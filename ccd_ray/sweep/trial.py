"""One sweep trial in one process, without Ray: derive the trial's labels from teacher scores
(alpha, gamma), train the classifier through the method's schedule (beta), and score it after
every epoch, handing each epoch's metrics to a report callback (Ray Tune's, in a sweep).

Where the teacher scores come from is a `ScoreSource`: the cached scores of the base config
(no CLIP at all), or a teacher run in this process (the naive sweep, exact for every value).
Training is the single-process loop of `reference.py`/`training.py` on the stored training
inputs, so every trial of a sweep is trained and judged the same way."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ccd_ray.method import labels as label_ops
from ccd_ray.method.cam import avg_count_threshold
from ccd_ray.method.classifier import CAMClassifier, normalise, save_classifier
from ccd_ray.config import CCDConfig
from ccd_ray.method.metrics import mean_average_precision
from ccd_ray.stages.pipeline import schedule
from ccd_ray.method.scoring import classifier_outputs, initial_scores, relabel_boxes, score_boxes
from ccd_ray.method.training import batch_indices, train_epoch

Report = Callable[[dict[str, Any]], None]


@dataclass
class TrialData:
    """Everything a trial reads, built once by the driver and shared by all trials.

    Rows of `raw` (one N x C matrix per round, cached mode) and of `images` (in-process mode)
    follow `ids`; the training, validation and proxy sets are row indices into `ids` with
    their classifier inputs (uint8, train.image_size)."""
    class_names: list[str]
    ids: list[str]
    train_rows: np.ndarray
    train_pixels: np.ndarray
    proxy_rows: np.ndarray
    proxy_pixels: np.ndarray
    raw: list[np.ndarray] | None = None              # cached scores per round (base boxes)
    images: list[torch.Tensor] | None = None         # decoded images (in-process scoring)
    val_pixels: np.ndarray | None = None
    val_truth: np.ndarray | None = None              # Nv x C 0/1, the user's labels
    info: dict[str, Any] = field(default_factory=dict)


class ScoreSource(Protocol):
    def raw(self, cfg: CCDConfig, round_index: int, model: CAMClassifier | None) -> np.ndarray:
        """N x C pooled teacher scores of a round, rows following TrialData.ids."""

    @property
    def teacher_passes(self) -> int:
        """Teacher forward passes this source ran in this process."""

    @property
    def teacher_seconds(self) -> float:
        """Wall time this source spent scoring views (crops + teacher) in this process."""


class CachedScores:
    """Scores computed once for the base config: the trial's classifier is not consulted, so
    round R >= 1 uses the base classifier's boxes, and no CLIP runs here."""

    def __init__(self, data: TrialData):
        if data.raw is None:
            raise ValueError("cached scores are missing from the trial data")
        self.data = data

    def raw(self, cfg: CCDConfig, round_index: int, model: CAMClassifier | None) -> np.ndarray:
        return self.data.raw[round_index]

    @property
    def teacher_passes(self) -> int:
        return 0

    @property
    def teacher_seconds(self) -> float:
        return 0.0


class InProcessScores:
    """A teacher in this process scoring every view itself: exact for every parameter value,
    and the cost a sweep without the cache pays in every trial."""

    def __init__(self, data: TrialData, teacher_factory: Callable[[], Any]):
        if data.images is None:
            raise ValueError("decoded images are missing from the trial data")
        self.data = data
        started = time.time()
        self.teacher = teacher_factory()
        self.seconds = time.time() - started  # loading the teacher is part of its cost

    def raw(self, cfg: CCDConfig, round_index: int, model: CAMClassifier | None) -> np.ndarray:
        images, ids = self.data.images, self.data.ids
        started = time.time()
        if round_index == 0:
            scores = initial_scores(self.teacher, images, ids, cfg).numpy()
        else:
            probs, cams = classifier_outputs(model, images, cfg.train.image_size)
            threshold = selection_threshold(cfg, model, self.data.train_pixels)
            boxes = relabel_boxes(probs, cams, images, ids, threshold, round_index, cfg)
            scores = score_boxes(self.teacher, images, boxes, cfg).numpy()
        self.seconds += time.time() - started
        return scores

    @property
    def teacher_passes(self) -> int:
        return self.teacher.forward_passes

    @property
    def teacher_seconds(self) -> float:
        return self.seconds


@torch.no_grad()
def predict_pixels(model: CAMClassifier, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities of stored uint8 inputs (N x 3 x S x S)."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(normalise(torch.from_numpy(pixels[i:i + batch_size]).to(device)))[0])
           .float().cpu().numpy() for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.num_classes), np.float32)


def selection_threshold(cfg: CCDConfig, model: CAMClassifier, train_pixels: np.ndarray) -> float:
    """The relabel class-selection threshold, as pipeline.selection_threshold computes it."""
    if cfg.relabel.class_selection == "threshold":
        return cfg.relabel.selection_threshold
    probs = predict_pixels(model, train_pixels)
    return avg_count_threshold(torch.from_numpy(probs), cfg.relabel.avg_count)


def classifier_bytes(model: CAMClassifier, cfg: CCDConfig) -> bytes:
    buffer = io.BytesIO()
    save_classifier(buffer, model, cfg.classes.names, cfg.train.image_size)
    return buffer.getvalue()


def proxy_targets(raw_last: np.ndarray, rows: np.ndarray, threshold: float) -> np.ndarray:
    """The teacher's verdict on the proxy images: the classes its pooled scores of the last
    round's (box-guided) views put at or above the label threshold, and always its top class
    (a softmax teacher may put no class above 0.5, which would leave no positive to rank).
    Taken before any debias or fusion, so the target does not move with alpha and gamma."""
    scores = raw_last[rows]
    top = scores == scores.max(axis=1, keepdims=True)
    return ((scores >= threshold) | top).astype(np.int8)


def objective_metrics(model: CAMClassifier, data: TrialData, targets: np.ndarray
                      ) -> dict[str, float]:
    """proxy_mAP always; val_mAP when a labeled validation subset is given (percent)."""
    metrics = {"proxy_mAP": 100 * mean_average_precision(predict_pixels(model, data.proxy_pixels),
                                                         targets)}
    if data.val_truth is not None and len(data.val_truth):
        metrics["val_mAP"] = 100 * mean_average_precision(predict_pixels(model, data.val_pixels),
                                                          data.val_truth)
    return metrics


def trial_labels(raw: np.ndarray, previous: np.ndarray | None, bias: torch.Tensor,
                 cfg: CCDConfig) -> np.ndarray:
    """A round's soft labels from its raw scores: debias (gamma), fuse with the previous
    round (alpha) from round 1 on; the same math as labeling.write_labels."""
    scores = label_ops.debias(torch.from_numpy(raw), bias, cfg.labels.gamma)
    if previous is not None:
        scores = label_ops.fuse(torch.from_numpy(previous), scores, cfg.labels.alpha)
    return scores.numpy()


def run_trial(cfg: CCDConfig, data: TrialData, source: ScoreSource, report: Report,
              objective: str, stop_at_round: int | None = None) -> dict[str, Any]:
    """Train through cfg's schedule, reporting metrics after every epoch; returns the last
    metrics with the teacher passes this trial ran. stop_at_round: return as soon as that
    round's raw scores are known, before training on them (used to build the base's cache)."""
    started = time.time()
    tc, lc = cfg.train, cfg.labels
    raw0 = source.raw(cfg, 0, None)
    bias = label_ops.bias_vector(label_ops.bias_partials(
        torch.from_numpy(raw0), lc.threshold, cfg.initial.entropy_threshold), lc.bias_statistic)
    labels = trial_labels(raw0, None, bias, cfg)
    raws = [raw0]
    weights = label_ops.sample_weights(torch.from_numpy(raw0[data.train_rows]),
                                       cfg.initial.entropy_threshold, cfg.initial.uncertain_weight)
    torch.manual_seed(cfg.seed)  # the same initial weights for every trial
    model = CAMClassifier(tc.backbone, len(data.class_names), tc.backbone_weights)
    optimizer = torch.optim.Adam(model.param_groups(tc.lr, tc.head_lr_mult),
                                 weight_decay=tc.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    inputs = normalise(torch.from_numpy(data.train_pixels))
    last: dict[str, Any] = {}
    if stop_at_round == 0:
        return {"raw": raws, "model": model}
    for segment in schedule(cfg):
        if segment.labels_round > 0:
            raws.append(source.raw(cfg, segment.labels_round, model))
            labels = trial_labels(raws[-1], labels, bias, cfg)
            if stop_at_round == segment.labels_round:
                return {"raw": raws, "model": model}
        targets = label_ops.smoothing_floor(torch.from_numpy(labels[data.train_rows]),
                                            lc.smoothing_floor)
        proxy = proxy_targets(data.raw[-1] if data.raw is not None else raws[-1],
                              data.proxy_rows, lc.threshold)
        for epoch in range(*segment.epochs):
            order = torch.randperm(len(inputs), generator=generator)
            batches = [(inputs[idx], targets[idx], weights[idx])
                       for idx in batch_indices(order, tc.batch_size)]
            losses = train_epoch(model, optimizer, batches, epoch, tc.beta, tc.warmup_epochs,
                                 generator)
            metrics = objective_metrics(model, data, proxy)
            last = {"epoch": epoch, "labels_round": segment.labels_round, **losses, **metrics,
                    "objective": metrics[objective],
                    "teacher_forward_passes": source.teacher_passes,
                    "teacher_seconds": round(source.teacher_seconds, 2),
                    "seconds": round(time.time() - started, 2)}
            report(last)
    return last
