"""Label a corpus with a trained classifier (jobs/predict.py) on Ray Data: read tasks -> the
classifier's actor pool (decode_image and the training inputs' resize, then the sigmoid of
the logits) -> writer tasks. Each read task's rows are one shard, committed as its own stage
once all its rows are written (stages/shards.py, shared with the score cache), so a rerun
with the same run id predicts only the shards that were not committed. The `predict` stage
then gathers them in the rounds' format.

Run layout under `<output_uri>/<run_id>/`:
  predict.json           the classifier (URI, SHA-256, classes, input size), the corpus (URI,
                         format, digest of its shards) and the settings that change labels; a
                         rerun must match it
  shards/shard-NNNNNN/   one stage per read task: labels-*.parquet, errors-*.parquet
  predict/               labels/*.parquet, errors.parquet, summary.json (as round-R/labels)

Memory: as stages/shards.py says, plus the error rows on the driver at the end (as the job
does)."""

from __future__ import annotations

import functools
import hashlib
import io
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from ccd_ray.cli import log
from ccd_ray.config import DEFAULT_CONFIG, CCDConfig, ConfigError, DataConfig, load_config
from ccd_ray.io.corpus import CorpusLayout, commit_manifest
from ccd_ray.io.storage import (
    MARKER,
    RunStore,
    exists,
    filesystem_for,
    read_bytes,
    read_json,
    write_json,
)
from ccd_ray.method.classifier import load_classifier, predict
from ccd_ray.method.rows import ERRORS_SCHEMA, list_column
from ccd_ray.method.scoring import pick_device
from ccd_ray.method.shards import shards_digest
from ccd_ray.stages import shards as per_shard  # `shards` is a count here
from ccd_ray.stages.actors import _DecodingStage
from ccd_ray.stages.datasets import actor_pool_args, by_reference
from ccd_ray.stages.pipeline import CLASSIFIER_FILE
from ccd_ray.stages.score_cache import check_errors

PREDICT_STAGE = "predict"
RUN_FILE = "predict.json"
PREDICTED_SCHEMA = pa.schema([("image_id", pa.string()), ("scores", pa.list_(pa.float32())),
                              ("error", pa.string()), ("error_stage", pa.string())])


def _classifier_path(uri: str, data_cfg: DataConfig) -> tuple[pafs.FileSystem, str]:
    """The classifier.pt file of uri: the file itself, or the one in a run's committed stage
    folder (such as `<run>/final`), whose marker names the attempt holding it."""
    fs, path = filesystem_for(uri, data_cfg)
    if exists(fs, posixpath.join(path, MARKER)):
        path = posixpath.join(path, read_json(fs, posixpath.join(path, MARKER))["attempt"],
                              CLASSIFIER_FILE)
    return fs, path


def read_classifier(uri: str, data_cfg: DataConfig) -> bytes:
    """classifier.pt bytes from a file, or from a run's committed stage folder."""
    try:
        fs, path = _classifier_path(uri, data_cfg)
        found = fs.get_file_info(path).type == pafs.FileType.File
        data = read_bytes(fs, path) if found else None
    except (OSError, ValueError) as exc:  # an unreachable store, an unsupported scheme
        raise ConfigError(f"--classifier {uri}: cannot read it ({exc})") from None
    if data is None:
        raise ConfigError(f"--classifier {uri}: no classifier file at {path}")
    return data


def read_thresholds(uri: str, cfg: CCDConfig) -> tuple[np.ndarray, str]:
    """Per-class thresholds and where they came from: the classifier's own, chosen by its run's
    labels.threshold_rule on its training split (metrics.json beside classifier.pt in a run's
    final folder), else labels.threshold for every class."""
    fs, path = _classifier_path(uri, cfg.data)
    metrics_path = posixpath.join(posixpath.dirname(path), "metrics.json")
    names = cfg.classes.names
    if exists(fs, metrics_path):
        metrics = read_json(fs, metrics_path)
        saved = metrics.get("thresholds", {}).get("classifier", {})
        if sorted(saved) == sorted(names):
            return (np.array([saved[n] for n in names], np.float32),
                    f"per class ({metrics.get('threshold_rule')} rule of its run)")
    return (np.full(len(names), cfg.labels.threshold, np.float32),
            f"labels.threshold={cfg.labels.threshold} for every class (no run metrics.json "
            "beside the classifier)")


def probe_config(config_path: str | None, overrides: list[str]) -> CCDConfig:
    """The config before the classifier is read: only its data.* (where to read and write)
    is meant to be used, since validation needs class names and these are placeholders."""
    return load_config(config_path or DEFAULT_CONFIG, overrides,
                       base={"classes": {"names": ["from the classifier"]}})


def classifier_config(config_path: str | None, overrides: list[str], classifier: bytes,
                      classifier_uri: str) -> CCDConfig:
    """The YAML given (else the default config) and overrides, with classes.names the
    classifier's own. Names set by the user must equal them."""
    try:
        _, names, _ = load_classifier(io.BytesIO(classifier))
    except Exception as exc:  # torch.load's errors are many kinds; all mean "not our file"
        raise ConfigError(f"--classifier {classifier_uri}: not a ccd-ray classifier.pt "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    cfg = load_config(config_path or DEFAULT_CONFIG, overrides, base={"classes": {"names": names}})
    if cfg.classes.names != names:
        raise ConfigError(f"classes.names {cfg.classes.names} differ from the classifier's "
                          f"{names}; leave classes.names unset to use the classifier's")
    return cfg


class ClassifierPredictor(_DecodingStage):
    """The classifier's probabilities of every decodable image of a batch: decode_image, then
    classifier.predict (the training inputs' resize and normalisation). Rows that arrive with
    an error, or fail to decode, leave with it and no scores. classifier: see InputsPredictor."""

    def __init__(self, cfg_dict: dict, classifier: Callable[[], bytes]):
        super().__init__(cfg_dict)
        self.model, _, self.image_size = load_classifier(io.BytesIO(classifier()),
                                                         pick_device(self.cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        probs = predict(self.model, images, self.image_size,
                        self.cfg.compute.images_per_batch).float().numpy()
        missing = np.ones(batch.num_rows, bool)
        missing[good] = False
        scores = list_column(probs, np.where(missing, 0, probs.shape[1]), missing)
        return pa.Table.from_arrays([batch.column("image_id"), scores,
                                     pa.array(errors, pa.string()), pa.array(stages, pa.string())],
                                    schema=PREDICTED_SCHEMA)


def check_predict_run(store: RunStore, identity: dict) -> None:
    """Write the run's identity once; a rerun with the same run id must match it."""
    path = store.path(RUN_FILE)
    if exists(store.fs, path):
        previous = read_json(store.fs, path)
        changed = sorted(k for k in identity if previous.get(k) != identity[k])
        if changed:
            raise ConfigError(f"run {store.root} was started with different {changed}; use a "
                              "new --run-id or the original classifier, corpus and settings")
        return
    write_json(store.fs, path, identity)


def _predict_shards(cfg: CCDConfig, store: RunStore, fs: pafs.FileSystem, layout: CorpusLayout,
                    pending: list[int], classifier: bytes, thresholds: np.ndarray) -> None:
    """Stream the pending shards through the pool, committing each shard once written."""
    # a ref, not the bytes: see InputsPredictor
    predicted = per_shard.carry_shard(
        per_shard.shard_rows(fs, layout, pending), ClassifierPredictor,
        {"cfg_dict": cfg.to_dict(), "classifier": by_reference(classifier)},
        actor_pool_args(cfg, cfg.compute.classifier_actors))
    per_shard.run_shards(store, "", predicted, pending, functools.partial(
        per_shard.write_labels, class_names=cfg.classes.names, thresholds=thresholds.tolist()))


def _gather(cfg: CCDConfig, store: RunStore, shards: int, summary: dict) -> str:
    """The predict stage: every shard's labels rewritten into labels/ (by Ray Data), their
    errors into errors.parquet, the totals into summary.json."""
    markers, counts = per_shard.shard_totals(store, "", shards,
                                             lambda c: check_errors(cfg, PREDICT_STAGE, c))
    files = [store.path(f) for f in per_shard.shard_files(store, "", markers)]
    label_files = [f for f in files if posixpath.basename(f).startswith("labels-")]
    error_files = [f for f in files if posixpath.basename(f).startswith("errors-")]
    attempt = store.begin(PREDICT_STAGE)
    ray.data.read_parquet(label_files, filesystem=store.fs).write_parquet(
        posixpath.join(attempt, "labels"), filesystem=store.fs)
    errors = (pads.dataset(error_files, filesystem=store.fs, format="parquet",
                           schema=ERRORS_SCHEMA).to_table() if error_files
              else ERRORS_SCHEMA.empty_table())
    pq.write_table(errors, posixpath.join(attempt, "errors.parquet"), filesystem=store.fs)
    write_json(store.fs, posixpath.join(attempt, "summary.json"), {**counts, **summary})
    store.commit(PREDICT_STAGE, attempt, counts)
    return attempt


@dataclass
class PredictResult:
    folder: str             # the committed predict stage: labels/, errors.parquet, summary.json
    shards: int             # read tasks of the corpus
    shards_skipped: int     # already committed when this invocation started
    counts: dict            # images, labeled, errors, errors_by_reason


def predict_corpus(cfg: CCDConfig, classifier_uri: str, classifier: bytes) -> PredictResult:
    """Label cfg.data.corpus_uri with the classifier into <output_uri>/<run_id>/ (resumes)."""
    started = time.time()
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    _, names, image_size = load_classifier(io.BytesIO(classifier))
    thresholds, threshold_source = read_thresholds(classifier_uri, cfg)
    fs, layout, _ = commit_manifest(cfg, store, work_done=exists(store.fs, store.path(RUN_FILE)))
    shards = len(layout.tasks)
    check_predict_run(store, {
        "classifier_sha256": hashlib.sha256(classifier).hexdigest(), "class_names": names,
        "image_size": image_size, "corpus_uri": cfg.data.corpus_uri, "corpus_format": layout.kind,
        "shards": shards, "shards_sha256": shards_digest(layout.root, layout.tasks),
        "thresholds": thresholds.tolist(), "max_image_side": cfg.data.max_image_side,
        "max_image_pixels": cfg.data.max_image_pixels})
    log(f"predict {cfg.run_id!r}: corpus {cfg.data.corpus_uri} ({layout.kind}, {shards} shards)"
        f" with {classifier_uri} -> {store.root}; thresholds {threshold_source}")
    if store.committed(PREDICT_STAGE) is not None:
        log(f"{PREDICT_STAGE}: skipped (already committed)")
        counts = {k: v for k, v in store.marker(PREDICT_STAGE).items() if k != "attempt"}
        return PredictResult(store.committed(PREDICT_STAGE), shards, shards, counts)
    done = per_shard.committed_shards(store)
    pending = [i for i in range(shards) if i not in done]
    log(f"shards: {len(done)} already committed, {len(pending)} to predict")
    if pending:
        _predict_shards(cfg, store, fs, layout, pending, classifier, thresholds)
    folder = _gather(cfg, store, shards, {
        "classifier": classifier_uri, "thresholds": dict(zip(names, thresholds.tolist())),
        "thresholds_from": threshold_source, "shards": shards,
        "shards_resumed": len(done), "seconds": round(time.time() - started, 2)})
    counts = {k: v for k, v in store.marker(PREDICT_STAGE).items() if k != "attempt"}
    log(f"{PREDICT_STAGE}: done in {time.time() - started:.1f} s; {counts['labeled']} labeled, "
        f"{counts['errors']} errors")
    return PredictResult(folder, shards, len(done), counts)
