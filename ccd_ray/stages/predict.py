"""Label a corpus with a trained classifier (jobs/predict.py) on Ray Data: read tasks -> the
classifier's actor pool (decode_image and the training inputs' resize, then the sigmoid of
the logits) -> writer tasks. Each read task's rows are one shard, committed as its own stage
once all its rows are written, so a rerun with the same run id predicts only the shards
that were not committed. The `predict` stage then gathers them in the rounds' format.

Run layout under `<output_uri>/<run_id>/`:
  predict.json           the classifier (URI, SHA-256, classes, input size), the corpus (URI,
                         format, digest of its shards) and the settings that change labels; a
                         rerun must match it
  shards/shard-NNNNNN/   one stage per read task: labels-*.parquet, errors-*.parquet
  predict/               labels/*.parquet, errors.parquet, summary.json (as round-R/labels)

A read task holds its shard's rows in memory at once (to count them before they leave); the
driver holds per shard in progress its counts and file names, and the error rows at the end
(as the job does)."""

from __future__ import annotations

import hashlib
import io
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from ccd_ray.cli import log
from ccd_ray.config import DEFAULT_CONFIG, CCDConfig, ConfigError, DataConfig, load_config
from ccd_ray.io.corpus import CorpusLayout, corpus_layout, read_task_rows
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
from ccd_ray.method.predict import ShardProgress, ShardTally, shards_digest
from ccd_ray.method.scoring import pick_device
from ccd_ray.stages.actors import _DecodingStage
from ccd_ray.stages.datasets import actor_pool_args, by_reference
from ccd_ray.stages.labeling import ERRORS_SCHEMA, labels_table
from ccd_ray.stages.pipeline import CLASSIFIER_FILE
from ccd_ray.stages.score_cache import check_errors

PREDICT_STAGE = "predict"
RUN_FILE = "predict.json"
PREDICTED_SCHEMA = pa.schema([("image_id", pa.string()), ("scores", pa.list_(pa.float32())),
                              ("error", pa.string()), ("error_stage", pa.string()),
                              ("shard", pa.int64()), ("shard_rows", pa.int64())])
WRITTEN_SCHEMA = pa.schema([("shard", pa.int64()), ("shard_rows", pa.int64()),
                            ("rows", pa.int64()), ("reasons", pa.list_(pa.string())),
                            ("files", pa.list_(pa.string()))])


def shard_stage(shard: int) -> str:
    return f"shards/shard-{shard:06d}"


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


def _read_shards(batch: pa.Table, fs: pafs.FileSystem, layout: CorpusLayout):
    """Each read task's rows with its shard index and row count (all its rows are read
    first, so the count is known before the first row leaves)."""
    for shard, files in zip(batch.column("shard").to_pylist(), batch.column("files").to_pylist()):
        tables = [t for t in read_task_rows(fs, layout, files) if t.num_rows]
        expected = sum(t.num_rows for t in tables)
        for table in tables:
            n = table.num_rows
            yield (table.append_column("shard", pa.array([shard] * n, pa.int64()))
                   .append_column("shard_rows", pa.array([expected] * n, pa.int64())))


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
                        self.cfg.compute.images_per_batch).numpy()
        scores = [None] * batch.num_rows
        for slot, i in enumerate(good):
            scores[i] = probs[slot].tolist()
        return pa.Table.from_pydict({
            "image_id": batch.column("image_id"), "scores": scores, "error": errors,
            "error_stage": stages, "shard": batch.column("shard"),
            "shard_rows": batch.column("shard_rows")}, schema=PREDICTED_SCHEMA)


def _write_parts(batch: pa.Table, fs: pafs.FileSystem, root: str, attempt: str,
                 class_names: list[str], thresholds: list[float]) -> pa.Table:
    """Write each shard's rows of the batch into the shard's attempt folder (labels in the
    rounds' schema, errors as errors.parquet rows); report what was written per shard."""
    reports = []
    for shard in pc.unique(batch.column("shard")).to_pylist():
        rows = batch.filter(pc.equal(batch.column("shard"), shard))
        folder = posixpath.join(root, shard_stage(shard), attempt)
        fs.create_dir(folder, recursive=True)
        part = uuid.uuid4().hex[:12]
        good = rows.filter(pc.is_null(rows.column("error")))
        bad = rows.filter(pc.is_valid(rows.column("error")))
        files = []
        if good.num_rows:
            scores = pc.list_flatten(good.column("scores")).to_numpy(zero_copy_only=False)
            table = labels_table(np.asarray(good.column("image_id").to_pylist()),
                                 scores.reshape(good.num_rows, len(class_names)), class_names,
                                 np.asarray(thresholds, np.float32))
            files.append(f"labels-{part}.parquet")
            pq.write_table(table, posixpath.join(folder, files[-1]), filesystem=fs)
        if bad.num_rows:
            errors = pa.table({"image_id": bad.column("image_id"),
                               "stage": bad.column("error_stage"),
                               "reason": bad.column("error")}, schema=ERRORS_SCHEMA)
            files.append(f"errors-{part}.parquet")
            pq.write_table(errors, posixpath.join(folder, files[-1]), filesystem=fs)
        reports.append({"shard": shard, "shard_rows": rows.column("shard_rows")[0].as_py(),
                        "rows": rows.num_rows, "reasons": bad.column("error").to_pylist(),
                        "files": files})
    return pa.Table.from_pylist(reports, schema=WRITTEN_SCHEMA)


def commit_shard(store: RunStore, shard: int, attempt: str, progress: ShardProgress) -> None:
    """Commit one shard whose rows are all written (an empty shard: an empty attempt)."""
    folder = store.path(shard_stage(shard), attempt)
    store.fs.create_dir(folder, recursive=True)
    store.commit(shard_stage(shard), folder, {**progress.counts(), "files": progress.files})


def committed_shards(store: RunStore) -> set[int]:
    """Shards with a commit marker, from one listing of the shards folder."""
    folder = store.path("shards")
    if not exists(store.fs, folder):
        return set()
    return {int(posixpath.basename(posixpath.dirname(i.path)).split("-")[1])
            for i in store.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
            if posixpath.basename(i.path) == MARKER}


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
    attempt = f"attempt-{uuid.uuid4().hex[:12]}"
    items = [{"shard": i, "files": layout.tasks[i]} for i in pending]
    # a ref, not the bytes: see InputsPredictor
    fetch_classifier = by_reference(classifier)
    written = (ray.data.from_items(items, override_num_blocks=len(items))
               .map_batches(_read_shards, batch_size=1, batch_format="pyarrow",
                            fn_kwargs={"fs": fs, "layout": layout.without_tasks()}, num_cpus=0.5)
               .map_batches(ClassifierPredictor, fn_constructor_kwargs={
                   "cfg_dict": cfg.to_dict(), "classifier": fetch_classifier},
                   **actor_pool_args(cfg, cfg.compute.cam_actors))
               .map_batches(_write_parts, batch_format="pyarrow", num_cpus=0.5, fn_kwargs={
                   "fs": store.fs, "root": store.root, "attempt": attempt,
                   "class_names": cfg.classes.names, "thresholds": thresholds.tolist()}))
    tally = ShardTally(pending)
    for report in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in report.to_pylist():
            done = tally.add(row["shard"], row["shard_rows"], row["rows"], row["reasons"],
                             row["files"])
            if done is not None:
                commit_shard(store, row["shard"], attempt, done)
    if tally.in_progress:
        raise RuntimeError(f"shards {sorted(tally.in_progress)[:5]}: rows were read but not all "
                           "written; rerun to redo them")
    for shard in sorted(tally.unseen):  # read tasks that produced no row
        commit_shard(store, shard, attempt, ShardProgress(0))


def _gather(cfg: CCDConfig, store: RunStore, shards: int, summary: dict) -> str:
    """The predict stage: every shard's labels rewritten into labels/ (by Ray Data), their
    errors into errors.parquet, the totals into summary.json."""
    markers = [store.marker(shard_stage(i)) for i in range(shards)]
    counts = {"images": 0, "labeled": 0, "errors": 0, "errors_by_reason": {}}
    for marker in markers:
        for key in ("images", "labeled", "errors"):
            counts[key] += marker[key]
        for reason, n in marker["errors_by_reason"].items():
            counts["errors_by_reason"][reason] = counts["errors_by_reason"].get(reason, 0) + n
    check_errors(cfg, PREDICT_STAGE, counts)
    files = [store.path(shard_stage(i), m["attempt"], f)
             for i, m in enumerate(markers) for f in m["files"]]
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
    fs, layout = corpus_layout(cfg)
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
    done = committed_shards(store)
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
