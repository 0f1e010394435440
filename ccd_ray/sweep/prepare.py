"""The driver's half of a sweep before any trial starts: the stages every trial shares
(training inputs, and with the cache the base config's teacher scores), the labeled
validation subset or the proxy set, gathered into one TrialData for the object store.

Base stages are committed under `<sweep>/base/`; each `base/round-R/raw` marker names the cache
entry its scores came from, so a rerun finds them without retraining or rescoring."""

from __future__ import annotations

import posixpath
import warnings
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import torch

from ccd_ray.config import CCDConfig, ConfigError
from ccd_ray.io.corpus import corpus_layout, corpus_truth, read_task_rows
from ccd_ray.io.decode import decoded_rows
from ccd_ray.io.inputs_codec import decode_inputs
from ccd_ray.io.storage import RunStore, filesystem_for, read_json
from ccd_ray.method.classifier import CAMClassifier, classifier_bytes
from ccd_ray.method.local import LocalExecutor, TrainingInputs
from ccd_ray.method.metrics import truth_matrix
from ccd_ray.method.rounds import run_rounds
from ccd_ray.method.rows import align_rows
from ccd_ray.stages import labeling
from ccd_ray.stages.train_inputs import build_inputs, input_files
from ccd_ray.sweep.spec import SweepSpec, ValidationSpec
from ccd_ray.sweep.trial import TrialData

BASE = "base"


def read_inputs(store: RunStore, folder: str, image_size: int) -> TrainingInputs:
    """A train-inputs stage in its row order (the order the Train workers stream it), decoded
    (image_size: the run's train.image_size)."""
    table = pads.dataset(input_files(store, folder), filesystem=store.fs,
                         format="parquet").to_table()
    ids = np.asarray(table.column("image_id").to_pylist(), dtype=str)
    return TrainingInputs(ids, decode_inputs(table.column("image").to_pylist(), image_size),
                          np.asarray(table.column("holdout").to_pylist(), bool))


def validation_truth(cfg: CCDConfig, spec: ValidationSpec, holdout_ids: list[str]
                     ) -> dict[str, list[str]]:
    """image_id -> true class names of the labeled validation subset (empty: none given)."""
    if spec.labels_uri:
        fs, path = filesystem_for(spec.labels_uri, cfg.data)
        try:
            with fs.open_input_stream(path) as stream:
                import json

                truth = json.loads(stream.read())
        except FileNotFoundError:
            raise ConfigError(f"sweep.validation.labels_uri: {spec.labels_uri} not found") from None
        if not isinstance(truth, dict) or not all(isinstance(v, list) for v in truth.values()):
            raise ConfigError("sweep.validation.labels_uri: expected a JSON object "
                              "{image_id: [class names]}")
        return truth
    if spec.from_corpus:
        truth = corpus_truth(cfg)
        chosen = [i for i in holdout_ids if i in truth][:spec.from_corpus]
        if not chosen:
            raise ConfigError("sweep.validation.from_corpus: the corpus carries no ground truth "
                              "for its held-out images")
        return {i: truth[i] for i in chosen}
    return {}


class BaseScores:
    """The base config's teacher scores through the score cache: round 0 from the phase-1
    views, round R from the views around the CAM boxes of the base classifier (trained in
    this process on the base's labels). Each round is committed in the base store as a run's
    raw stage is (a `round-R/raw` marker naming its cache entry, stages.labeling), so the base
    and a run with its config share entries. Rows follow `ids` (round 0's images, sorted)."""

    def __init__(self, store: RunStore):
        self.store = store
        self.ids: np.ndarray | None = None
        self.passes = 0
        self.memo: dict[int, np.ndarray] = {}

    def raw(self, cfg: CCDConfig, round_index: int, model: CAMClassifier | None,
            threshold=lambda: 0.0) -> np.ndarray:
        if round_index not in self.memo:
            if labeling.raw_folder(cfg, self.store, round_index) is None:
                if round_index == 0:
                    labeling.score_initial(cfg, self.store)
                else:
                    labeling.score_relabel(cfg, self.store, round_index,
                                           classifier_bytes(model, cfg.classes.names,
                                                            cfg.train.image_size), threshold())
                marker = self.store.marker(labeling.raw_stage(round_index))
                self.passes += marker["teacher_passes_run"]
            ids, matrix, _ = labeling.read_raw(cfg, self.store, round_index)
            if self.ids is None:
                self.ids = ids
            else:
                matrix = align_rows(self.ids, ids, matrix)
            self.memo[round_index] = matrix
        return self.memo[round_index]

    @property
    def teacher_passes(self) -> int:
        return self.passes

    @property
    def teacher_seconds(self) -> float:
        return 0.0  # the base's scoring runs in Ray Data actors; its stages time themselves


def decode_corpus(cfg: CCDConfig) -> dict[str, torch.Tensor]:
    """Every decodable image of the corpus, in this process (for in-process scoring only)."""
    fs, layout = corpus_layout(cfg)
    images = {}
    for files in layout.tasks:
        for table in read_task_rows(fs, layout, files):
            for image_id, image in decoded_rows(table, cfg.data.max_image_pixels,
                                                cfg.data.max_image_side):
                images[image_id] = torch.from_numpy(image)
    return images


def _rows(ids, wanted: list[str]) -> np.ndarray:
    index = {image_id: row for row, image_id in enumerate(ids)}
    return np.array([index[i] for i in wanted if i in index], dtype=np.int64)


def prepare(cfg: CCDConfig, spec: SweepSpec, store: RunStore,
            log=print) -> tuple[TrialData, dict[str, Any]]:
    """(the trials' shared data, facts about the base stages for the summary). With the
    cache, the base config's scores of every round; without it, the decoded corpus that
    each trial's own teacher scores."""
    base_store = RunStore(store.fs, store.path(BASE))
    inputs = read_inputs(base_store, build_inputs(cfg, base_store), cfg.train.image_size)
    if not len(inputs.ids):
        raise RuntimeError("the corpus has no decodable image to sweep over")
    base_scores = BaseScores(base_store) if spec.cache else None
    images = None
    if base_scores is not None:
        base_scores.raw(cfg, 0, None)
        ids = list(base_scores.ids)
    else:
        decoded = decode_corpus(cfg)
        ids = sorted(decoded)
        images = [decoded[i] for i in ids]
    pixel_of = dict(zip(inputs.ids, range(len(inputs.ids))))
    scored = set(ids)
    held = [i for i, h in zip(inputs.ids, inputs.holdout) if h and i in scored]
    train = [i for i, h in zip(inputs.ids, inputs.holdout) if not h and i in scored]
    if not train:
        raise RuntimeError("no training image left after the held-out split")
    proxy_ids = held or train  # no held-out split: the proxy judges the training images
    truth = validation_truth(cfg, spec.validation, held)
    val_ids = sorted(i for i in truth if i in pixel_of)
    if truth and not val_ids:
        raise ConfigError("sweep.validation: none of the labeled image ids is in the corpus")
    unknown = sorted({c for i in val_ids for c in truth[i]} - set(cfg.classes.names))
    if unknown:
        warnings.warn(f"validation labels name classes outside classes.names, ignored: {unknown}",
                      stacklevel=2)
    data = TrialData(
        class_names=list(cfg.classes.names), ids=ids, inputs=inputs,
        proxy_rows=_rows(ids, proxy_ids), images=images,
        proxy_pixels=inputs.pixels[[pixel_of[i] for i in proxy_ids]],
        val_pixels=inputs.pixels[[pixel_of[i] for i in val_ids]] if val_ids else None,
        val_truth=truth_matrix(truth, val_ids, cfg.classes.names) if val_ids else None)
    facts: dict[str, Any] = {"images": len(ids), "train_images": len(train),
                             "proxy_images": len(data.proxy_rows),
                             "proxy_on": "held-out images" if held else "training images",
                             "validation_images": len(val_ids)}
    if base_scores is not None:
        result = run_rounds(cfg, LocalExecutor(cfg, ids, base_scores, inputs),
                            stop_at_round=cfg.relabel.rounds)
        data.raw = result.raw
        entries = {r: base_store.marker(labeling.raw_stage(r))
                   for r in range(cfg.relabel.rounds + 1)}
        facts["base_rounds"] = {str(r): {"cache_entry": m["cache_entry"],
                                         "teacher_passes_when_computed": m["teacher_passes_run"]}
                                for r, m in entries.items()}
        facts["base_teacher_passes_this_run"] = base_scores.passes
        log(f"base scores ready: {len(ids)} images, rounds 0..{cfg.relabel.rounds}, "
            f"{base_scores.passes} teacher forward passes run now (0 = all from the cache)")
    return data, facts


def read_trial_result(store: RunStore, stage: str) -> dict[str, Any] | None:
    folder = store.committed(stage)
    return None if folder is None else read_json(store.fs, posixpath.join(folder, "result.json"))
