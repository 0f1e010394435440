"""One sweep trial in one process, without Ray: derive the trial's labels from teacher scores
(alpha, gamma), train the classifier through the method's schedule (beta), and score it after
every epoch, handing each epoch's metrics to a report callback (Ray Tune's, in a sweep).

Where the teacher scores come from is a `ScoreSource`: the base config's scores read from the
score cache (no CLIP at all), or a teacher run in this process (the naive sweep, exact for
every value). The trial is the job's own round loop (method.rounds) with the in-process
executor, whose training is the Ray Train workers' epoch loop on the same stored inputs in
the same order: a trial with a config's values trains the classifier the job trains."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ccd_ray.config import CCDConfig
from ccd_ray.method.classifier import CAMClassifier
from ccd_ray.method.local import LocalExecutor, ScoreSource, TrainingInputs, predict_pixels
from ccd_ray.method.metrics import mean_average_precision
from ccd_ray.method.rounds import run_rounds
from ccd_ray.method.schedule import Segment

Report = Callable[[dict[str, Any]], None]


@dataclass
class TrialData:
    """Everything a trial reads, built once by the driver and shared by all trials.

    Rows of `raw` (one N x C matrix per round, cached mode) follow `ids` (sorted); `inputs`
    are the stored classifier inputs in the train-inputs stage's row order; the proxy set is
    row indices into `ids` with their inputs; the validation set is inputs with true labels."""
    class_names: list[str]
    ids: list[str]
    inputs: TrainingInputs
    proxy_rows: np.ndarray
    proxy_pixels: np.ndarray
    raw: list[np.ndarray] | None = None              # cached scores per round (base boxes)
    images: list | None = None                       # decoded images (in-process scoring)
    val_pixels: np.ndarray | None = None
    val_truth: np.ndarray | None = None              # Nv x C 0/1, the user's labels
    info: dict[str, Any] = field(default_factory=dict)


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


def run_trial(cfg: CCDConfig, data: TrialData, source: ScoreSource, report: Report,
              objective: str) -> dict[str, Any]:
    """Run cfg's schedule, reporting metrics after every epoch; returns the last metrics with
    the teacher passes this trial ran."""
    started = time.time()
    last: dict[str, Any] = {}

    def on_epoch(entry: dict[str, Any], segment: Segment, model: CAMClassifier) -> None:
        # cached scores: judged against the base's last round; in-process: the latest round's
        raw = data.raw[-1] if data.raw is not None else executor.scored[segment.labels_round]
        metrics = objective_metrics(model, data, proxy_targets(raw, data.proxy_rows,
                                                               cfg.labels.threshold))
        last.clear()
        last.update({**entry, **metrics, "objective": metrics[objective],
                     "teacher_forward_passes": source.teacher_passes,
                     "teacher_seconds": round(source.teacher_seconds, 2),
                     "seconds": round(time.time() - started, 2)})
        report(dict(last))

    executor = LocalExecutor(cfg, data.ids, source, data.inputs, on_epoch=on_epoch)
    run_rounds(cfg, executor)
    return last
