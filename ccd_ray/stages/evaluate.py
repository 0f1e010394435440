"""The final stage: the final labels of every image (labels.final_source), then, where ground
truth exists, each round's pseudo-labels, the final labels and the classifier on the held-out
split scored; the final classifier, metrics.json and the report."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from ccd_ray.config import CCDConfig
from ccd_ray.io.corpus import corpus_truth
from ccd_ray.io.storage import RunStore, read_json, write_bytes, write_json
from ccd_ray.method import labels as label_ops
from ccd_ray.method.export import STANDALONE_FILE, export_standalone
from ccd_ray.method.metrics import score_rows, truth_matrix
from ccd_ray.method.rows import align_rows, find_rows, id_array, labels_table, list_matrix
from ccd_ray.method.schedule import is_holdout
from ccd_ray.method.thresholds import class_thresholds, count_thresholds
from ccd_ray.stages import labeling
from ccd_ray.stages.actors import InputsPredictor
from ccd_ray.stages.datasets import actor_pool_args, by_reference
from ccd_ray.stages.report import write_report

FINAL_STAGE = "final"


@dataclass
class ClassifierScores:
    """The classifier's probabilities over every training input, rows in sorted id order."""
    ids: np.ndarray       # N image ids, sorted
    probs: np.ndarray     # N x C float32
    holdout: np.ndarray   # N bool: held out of training


@dataclass
class ZeroShot:
    """The teacher's zero-shot scores of round 0's views (pooled raw scores), what the report's
    first rows score and what threshold_rule=count takes each class's label count from."""
    ids: np.ndarray       # N image ids, sorted
    scores: np.ndarray    # N x C float32

    @classmethod
    def read(cls, cfg: CCDConfig, store: RunStore) -> ZeroShot:
        ids, raw, _ = labeling.read_raw(cfg, store, 0)
        return cls(ids, raw)


def thresholds_of(cfg: CCDConfig, ids: np.ndarray, scores: np.ndarray, zero_shot: ZeroShot,
                  truth: dict[str, list[str]] | None = None) -> np.ndarray:
    """labels.threshold_rule's per-class thresholds of these rows' scores (ids: their images;
    the count rule reads the same images' zero-shot scores). A run trained on the ground truth
    (train.targets=ground_truth, the supervised bound) under the count rule takes each
    class's count from the truth of these images instead: the bound's thresholds then come
    from the labels it learned, not from the teacher it never saw."""
    lc = cfg.labels
    if lc.threshold_rule == "count" and cfg.train.targets == "ground_truth" and truth:
        known = [str(i) for i in ids if str(i) in truth]
        counts = truth_matrix(truth, known, cfg.classes.names).sum(axis=0)
        return count_thresholds(scores, counts)
    reference = (align_rows(ids, zero_shot.ids, zero_shot.scores)
                 if lc.threshold_rule == "count" else None)
    return class_thresholds(scores, lc.threshold_rule, lc.threshold, reference)


@dataclass
class FinalLabels:
    ids: np.ndarray         # N image ids, sorted
    scores: np.ndarray      # N x C float32
    thresholds: np.ndarray  # C: where a score becomes a label


def classifier_scores(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes
                      ) -> ClassifierScores:
    """The classifier over every training input, in one Ray Data pass. The classifier reaches
    the actors through the object store (see InputsPredictor); the result is read from Arrow
    blocks without a Python object per row (the driver holds the N x C matrix, as the round
    loop does)."""
    inputs = ray.data.read_parquet(store.committed("train-inputs"), filesystem=store.fs)
    rows = inputs.map_batches(
        InputsPredictor, fn_constructor_kwargs={"cfg_dict": cfg.to_dict(),
                                                "classifier": by_reference(classifier_bytes)},
        **actor_pool_args(cfg, cfg.compute.classifier_actors))
    blocks = [b for b in ray.get(rows.to_arrow_refs()) if b.num_rows]
    if not blocks:
        return ClassifierScores(np.zeros(0, str), np.zeros((0, len(cfg.classes.names)),
                                                           np.float32), np.zeros(0, bool))
    table = pa.concat_tables(blocks)
    ids = id_array(table.column("image_id"))
    probs = list_matrix(table.column("probs"), len(cfg.classes.names))
    holdout = table.column("holdout").to_numpy(zero_copy_only=False).astype(bool)
    order = np.argsort(ids, kind="stable")
    return ClassifierScores(ids[order], probs[order].astype(np.float32, copy=False),
                            holdout[order])


def training_probs(classifier: ClassifierScores) -> np.ndarray:
    """The classifier's probabilities over the training split (not the held-out one)."""
    return classifier.probs[~classifier.holdout]


def classifier_thresholds(cfg: CCDConfig, classifier: ClassifierScores, zero_shot: ZeroShot,
                          truth: dict[str, list[str]] | None = None) -> np.ndarray:
    """The classifier's per-class thresholds (labels.threshold_rule) from its probabilities
    over the training split only, so the held-out scores it is evaluated on do not set them."""
    return thresholds_of(cfg, classifier.ids[~classifier.holdout], training_probs(classifier),
                         zero_shot, truth)


def final_labels(cfg: CCDConfig, ids: np.ndarray, pseudo: np.ndarray,
                 classifier: ClassifierScores, zero_shot: ZeroShot,
                 truth: dict[str, list[str]] | None = None) -> FinalLabels:
    """Every image the last round labeled (ids, pseudo: its labels), scored by
    labels.final_source and thresholded by labels.threshold_rule (from the final scores
    themselves)."""
    rows, found = find_rows(ids, classifier.ids)
    if not found.all():
        raise RuntimeError(f"final labels: {int((~found).sum())} image(s) of the last round's "
                           f"labels have no training input to classify, e.g. {ids[~found][0]!r}")
    scores = label_ops.final_label_scores(cfg.labels.final_source, pseudo,
                                          classifier.probs[rows], cfg.labels.alpha)
    return FinalLabels(ids, scores, thresholds_of(cfg, ids, scores, zero_shot, truth))


def write_final_labels(cfg: CCDConfig, store: RunStore, folder: str, final: FinalLabels
                       ) -> None:
    """labels/*.parquet (the rounds' schema), the last round's errors.parquet, summary.json."""
    labeling.write_parquet_rows(store.fs, posixpath.join(folder, "labels"), labels_table(
        final.ids, final.scores, cfg.classes.names, final.thresholds))
    last_round = store.committed(labeling.labels_stage(cfg.relabel.rounds))
    store.fs.copy_file(posixpath.join(last_round, "errors.parquet"),
                       posixpath.join(folder, "errors.parquet"))
    round_summary = read_json(store.fs, posixpath.join(last_round, "summary.json"))
    positives = final.scores >= final.thresholds
    write_json(store.fs, posixpath.join(folder, "summary.json"), {
        "source": cfg.labels.final_source, "threshold_rule": cfg.labels.threshold_rule,
        "thresholds": dict(zip(cfg.classes.names, final.thresholds.tolist())),
        "images": round_summary["images"], "labeled": len(final.ids),
        "errors": round_summary["errors"], "errors_by_reason": round_summary["errors_by_reason"],
        "labels_per_image": float(positives.sum(axis=1).mean()) if len(final.ids) else 0.0})


def _scored(ids: np.ndarray, scores: np.ndarray, truth: dict[str, list[str]], cfg: CCDConfig,
            zero_shot: ZeroShot, thresholds: np.ndarray | None = None) -> dict[str, Any] | None:
    """score_rows at thresholds (default: labels.threshold_rule over these scores' own rows;
    the teacher's and the rounds' rows are never a ground-truth run's own labels)."""
    if thresholds is None:
        thresholds = thresholds_of(cfg, ids, scores, zero_shot)
    return score_rows(ids, scores, truth, cfg.classes.names, thresholds)


def evaluate_run(cfg: CCDConfig, round_labels: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 truth: dict[str, list[str]], classifier: ClassifierScores, final: FinalLabels,
                 zero_shot: ZeroShot) -> dict[str, Any]:
    """Every score matrix of the run against the truth (round_labels(R): round R's (ids,
    labels), read one round at a time), each thresholded by labels.threshold_rule from its own
    scores (the classifier's from its training split). The job and benchmarks/quality.py both
    score runs here."""
    metrics: dict[str, Any] = {
        "ground_truth_images": len(truth), "rounds": [],
        "final_source": cfg.labels.final_source, "threshold_rule": cfg.labels.threshold_rule,
        "thresholds": {"final_labels": dict(zip(cfg.classes.names, final.thresholds.tolist())),
                       "classifier": dict(zip(cfg.classes.names,
                                              classifier_thresholds(cfg, classifier, zero_shot,
                                                                    truth).tolist()))}}
    if not truth:
        return metrics
    # labels are scored on the training split, the classifier on the held-out one
    held_out = {i for i in truth if is_holdout(i, cfg.train.holdout_fraction, cfg.seed)}
    train_truth = {i: v for i, v in truth.items() if i not in held_out}
    holdout_truth = {i: v for i, v in truth.items() if i in held_out}
    ids, raw = zero_shot.ids, zero_shot.scores
    metrics["teacher_before_debias"] = _scored(ids, raw, train_truth, cfg, zero_shot)
    metrics["teacher_holdout"] = _scored(ids, raw, holdout_truth, cfg, zero_shot)
    for round_index in range(cfg.relabel.rounds + 1):
        ids, labels = round_labels(round_index)
        metrics["rounds"].append({"round": round_index,
                                  **(_scored(ids, labels, train_truth, cfg, zero_shot) or {})})
    metrics["final_labels"] = _scored(final.ids, final.scores, train_truth, cfg, zero_shot,
                                      final.thresholds)
    holdout = classifier.holdout
    metrics["classifier_holdout"] = _scored(
        classifier.ids[holdout], classifier.probs[holdout], truth, cfg, zero_shot,
        np.asarray(list(metrics["thresholds"]["classifier"].values()), np.float32))
    return metrics


def finish_run(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes, inputs_path: str
               ) -> str:
    """The final stage: classifier.pt, the final labels (labels/, errors.parquet,
    summary.json), metrics.json, report.md and its plots, committed."""
    if store.committed(FINAL_STAGE) is not None:
        return store.committed(FINAL_STAGE)
    attempt = store.begin(FINAL_STAGE)
    write_bytes(store.fs, posixpath.join(attempt, "classifier.pt"), classifier_bytes)
    write_bytes(store.fs, f"{attempt}/{STANDALONE_FILE}", export_standalone(classifier_bytes))
    classifier = classifier_scores(cfg, store, classifier_bytes)
    zero_shot = ZeroShot.read(cfg, store)
    truth = corpus_truth(cfg)
    final = final_labels(cfg, *labeling.read_labels(store, cfg.relabel.rounds), classifier,
                         zero_shot, truth)
    write_final_labels(cfg, store, attempt, final)
    metrics = evaluate_run(cfg, lambda r: labeling.read_labels(store, r), truth, classifier,
                           final, zero_shot)
    write_json(store.fs, posixpath.join(attempt, "metrics.json"), metrics)
    write_report(cfg, store, attempt, metrics, classifier_bytes, inputs_path, truth)
    store.commit(FINAL_STAGE, attempt)
    return attempt
