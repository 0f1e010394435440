"""The CCD round loop over Ray: initial labels -> warm-up training -> relabel round(s) ->
training with consistency -> final classifier, evaluation and report.

Every stage is committed in the run's storage and skipped when a rerun finds it committed,
so running the same command with the same run id again resumes where it stopped."""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from ccd_ray.stages import labeling
from ccd_ray.method import labels as label_ops
from ccd_ray.method.cam import avg_count_threshold
from ccd_ray.config import CCDConfig, ConfigError
from ccd_ray.stages.evaluate import FINAL_STAGE, corpus_truth, finish_run, predict_inputs, truth_matrix
from ccd_ray.io.storage import RunStore, exists, read_bytes, read_json, write_bytes, write_json
from ccd_ray.stages.train import build_inputs, checkpoint_at, export_classifier, fit_segment, \
    training_dataset

CLASSIFIER_FILE = "classifier.pt"


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


def log(message: str) -> None:
    print(f"[ccd-ray] {message}", flush=True)


def check_run_config(cfg: CCDConfig, store: RunStore) -> None:
    """Write the run's config once; a rerun with the same run id must not change the method."""
    path = store.path("config.yaml")
    if exists(store.fs, path):
        previous = yaml.safe_load(read_bytes(store.fs, path))
        current = cfg.to_dict()
        changed = sorted(k for k in ("classes", "teacher", "initial", "labels", "relabel", "train")
                         if previous.get(k) != json.loads(json.dumps(current[k])))
        if changed:
            raise ConfigError(f"run {cfg.run_id!r} already exists with different settings in "
                              f"{changed}; use a new run_id or the original config")
        return
    write_bytes(store.fs, path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    write_json(store.fs, store.path("classes.json"), cfg.classes.names)


def _starting(name: str, committed: bool) -> float:
    if not committed:
        log(f"{name}: started")
    return time.time()


def _stage(name: str, committed: bool, started: float, detail: str = "") -> None:
    verb = "skipped (already committed)" if committed else f"done in {time.time() - started:.1f} s"
    log(f"{name}: {verb}{'; ' + detail if detail else ''}")


def _label_counts(store: RunStore, round_index: int) -> str:
    summary = read_json(store.fs, posixpath.join(
        store.committed(labeling.labels_stage(round_index)), "summary.json"))
    return f"{summary['labeled']} labeled, {summary['errors']} errors"


def _labels_round(cfg: CCDConfig, store: RunStore, round_index: int,
                  classifier_bytes: bytes | None) -> None:
    raw_name = labeling.raw_stage(round_index)
    was_committed = store.committed(raw_name) is not None
    started = _starting(raw_name, was_committed)
    if round_index == 0:
        labeling.score_initial(cfg, store)
    else:
        threshold = selection_threshold(cfg, store, classifier_bytes)
        labeling.score_relabel(cfg, store, round_index, classifier_bytes, threshold)
    _stage(raw_name, was_committed, started)
    name = labeling.labels_stage(round_index)
    was_committed = store.committed(name) is not None
    started = _starting(name, was_committed)
    labeling.write_labels(cfg, store, round_index)
    _stage(name, was_committed, started, _label_counts(store, round_index))


def selection_threshold(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes) -> float:
    """The relabel class-selection threshold: fixed, or the authors' average-count rule
    estimated from the classifier's probabilities on the training inputs."""
    if cfg.relabel.class_selection == "threshold":
        return cfg.relabel.selection_threshold
    probs = predict_inputs(cfg, store, classifier_bytes, holdout=False)
    return avg_count_threshold(torch.from_numpy(np.stack(list(probs.values()))),
                               cfg.relabel.avg_count)


def _sample_weights(cfg: CCDConfig, store: RunStore) -> dict[str, float]:
    if cfg.initial.uncertain_weight == 1.0:
        return {}
    ids, raw, _ = labeling.read_scores(store.fs, store.committed(labeling.raw_stage(0)))
    weights = label_ops.sample_weights(torch.from_numpy(raw), cfg.initial.entropy_threshold,
                                       cfg.initial.uncertain_weight)
    return dict(zip(ids, weights.tolist()))


def _training_targets(cfg: CCDConfig, store: RunStore, labels_round: int
                      ) -> dict[str, np.ndarray]:
    """image_id -> soft targets: a round's pseudo-labels, or the corpus's ground truth."""
    if cfg.train.targets == "ground_truth":
        truth = corpus_truth(cfg)
        if not truth:
            raise ConfigError(f"train.targets=ground_truth: the corpus {cfg.data.corpus_uri} "
                              "has no ground-truth labels")
        ids = sorted(truth)
        matrix = truth_matrix(truth, ids, cfg.classes.names).astype(np.float32)
        return dict(zip(ids, matrix))
    labels = labeling.read_labels(store, labels_round)
    return {k: label_ops.smoothing_floor(torch.from_numpy(v), cfg.labels.smoothing_floor).numpy()
            for k, v in labels.items()}


def _train_segment(cfg: CCDConfig, store: RunStore, segment: Segment, inputs_path: str,
                   weights: dict[str, float]) -> bytes:
    """Fit one segment (or reuse its committed result); return its exported classifier."""
    name = f"train/segment-{segment.index}"
    committed = store.committed(name)
    was_committed = committed is not None
    started = _starting(name, was_committed)
    if committed is None:
        start_from = None
        if segment.index > 0:
            previous = store.marker(f"train/segment-{segment.index - 1}")
            start_from = checkpoint_at(store, previous["checkpoint"])
        targets = _training_targets(cfg, store, segment.labels_round)
        dataset = training_dataset(cfg, inputs_path, store, targets, weights)
        result = fit_segment(cfg, store, dataset, segment.index, segment.epochs, start_from)
        attempt = store.begin(name)
        classifier = export_classifier(result.checkpoint, cfg)
        write_bytes(store.fs, posixpath.join(attempt, CLASSIFIER_FILE), classifier)
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
        store.commit(name, attempt, {"checkpoint": result.checkpoint.path,
                                     "epochs": list(segment.epochs), "metrics": metrics})
        committed = attempt
    marker = store.marker(name)
    _stage(name, was_committed, started,
           f"epochs {marker['epochs'][0]}..{marker['epochs'][1] - 1} on round-"
           f"{segment.labels_round} labels, last loss {marker['metrics'].get('loss', float('nan')):.4f}")
    return read_bytes(store.fs, posixpath.join(committed, CLASSIFIER_FILE))


def run_ccd(cfg: CCDConfig) -> RunStore:
    """Run (or resume) the whole job; returns the run's store."""
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    log(f"run {cfg.run_id!r}: corpus {cfg.data.corpus_uri} -> {store.root}")
    check_run_config(cfg, store)
    segments = schedule(cfg)
    _labels_round(cfg, store, 0, None)
    was_committed = store.committed("train-inputs") is not None
    started = _starting("train-inputs", was_committed)
    inputs_path = build_inputs(cfg, store)
    _stage("train-inputs", was_committed, started)
    weights = _sample_weights(cfg, store)
    classifier = None
    for segment in segments:
        if segment.labels_round > 0:
            _labels_round(cfg, store, segment.labels_round, classifier)
        classifier = _train_segment(cfg, store, segment, inputs_path, weights)
    was_committed = store.committed(FINAL_STAGE) is not None
    started = _starting(FINAL_STAGE, was_committed)
    final = finish_run(cfg, store, classifier, inputs_path)
    _stage(FINAL_STAGE, was_committed, started)
    log(f"outputs: {final} (classifier.pt, metrics.json, report.md); labels per round in "
        f"{store.root}/round-*/labels")
    return store
