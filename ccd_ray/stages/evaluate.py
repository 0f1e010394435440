"""Evaluate a run where ground truth exists: each round's pseudo-labels and the classifier on
the held-out split; then write the final classifier, metrics.json and the report."""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import ray

from ccd_ray.config import CCDConfig
from ccd_ray.io.corpus import corpus_truth
from ccd_ray.io.storage import RunStore, write_bytes, write_json
from ccd_ray.method.metrics import score_predictions
from ccd_ray.method.schedule import is_holdout
from ccd_ray.stages import labeling
from ccd_ray.stages.actors import InputsPredictor
from ccd_ray.stages.datasets import actor_pool_args
from ccd_ray.stages.report import write_report

FINAL_STAGE = "final"


def predict_inputs(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes, holdout: bool
                   ) -> dict[str, np.ndarray]:
    """image_id -> classifier probabilities over the held-out (or the training) inputs."""
    inputs = ray.data.read_parquet(store.committed("train-inputs"), filesystem=store.fs)
    rows = inputs.filter(lambda row: row["holdout"] == holdout).map_batches(
        InputsPredictor, fn_constructor_kwargs={"cfg_dict": cfg.to_dict(),
                                                "classifier_bytes": classifier_bytes},
        **actor_pool_args(cfg, cfg.compute.cam_actors))
    return {r["image_id"]: np.asarray(r["probs"], dtype=np.float32) for r in rows.take_all()}


def evaluate_run(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes) -> dict[str, Any]:
    truth = corpus_truth(cfg)
    names, threshold = cfg.classes.names, cfg.labels.threshold
    metrics: dict[str, Any] = {"ground_truth_images": len(truth), "rounds": []}
    if not truth:
        return metrics
    # pseudo-labels are scored on the training split, the classifier on the held-out one
    held_out = {i for i in truth if is_holdout(i, cfg.train.holdout_fraction, cfg.seed)}
    train_truth = {i: v for i, v in truth.items() if i not in held_out}
    holdout_truth = {i: v for i, v in truth.items() if i in held_out}
    initial = dict(zip(*labeling.read_raw(cfg, store, 0)[:2]))
    metrics["teacher_before_debias"] = score_predictions(initial, train_truth, names, threshold)
    metrics["teacher_holdout"] = score_predictions(initial, holdout_truth, names, threshold)
    for round_index in range(cfg.relabel.rounds + 1):
        labels = dict(zip(*labeling.read_labels(store, round_index)))
        metrics["rounds"].append({"round": round_index, **(score_predictions(
            labels, train_truth, names, threshold) or {})})
    holdout = predict_inputs(cfg, store, classifier_bytes, holdout=True)
    metrics["classifier_holdout"] = score_predictions(holdout, truth, names, threshold)
    return metrics


def finish_run(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes, inputs_path: str
               ) -> str:
    """The final stage: classifier.pt, metrics.json, report.md and its plots, committed."""
    if store.committed(FINAL_STAGE) is not None:
        return store.committed(FINAL_STAGE)
    attempt = store.begin(FINAL_STAGE)
    write_bytes(store.fs, posixpath.join(attempt, "classifier.pt"), classifier_bytes)
    metrics = evaluate_run(cfg, store, classifier_bytes)
    write_json(store.fs, posixpath.join(attempt, "metrics.json"), metrics)
    write_report(cfg, store, attempt, metrics, classifier_bytes, inputs_path)
    store.commit(FINAL_STAGE, attempt)
    return attempt
