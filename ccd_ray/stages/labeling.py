"""Ray Data stages of labeling: stream shards through the teacher (and classifier) actor pools
into each round's raw scores, and commit the labels the round loop derives from them. Every
stage is committed atomically and skipped when already committed, so a rerun resumes.

Run layout under `<output_uri>/<run_id>/` (each stage folder holds `_COMMITTED.json` and the
committed `attempt-*/`):
  round-0/raw       image_id, scores (pooled phase-1 teacher scores), views, error, error_stage
  round-0/labels    labels/*.parquet, errors.parquet, summary.json, bias.json
  round-R/raw       pooled scores of the CAM-guided views of relabel round R
  round-R/labels    labels fused with round R-1 (alpha) after debiasing (gamma)
"""

from __future__ import annotations

import collections
import json
import posixpath
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import torch

from ccd_ray.config import CCDConfig
from ccd_ray.io.storage import RunStore, write_json
from ccd_ray.method import labels as label_ops
from ccd_ray.stages.actors import CamBoxer, GuidedScorer, InitialScorer
from ccd_ray.stages.datasets import actor_pool_args, corpus_rows

LABELS_SCHEMA = pa.schema([("image_id", pa.string()), ("scores", pa.list_(pa.float32())),
                           ("labels", pa.list_(pa.string()))])
ERRORS_SCHEMA = pa.schema([("image_id", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string())])


class TooManyErrors(RuntimeError):
    """More images failed than data.max_error_fraction allows; nothing of the stage is committed."""


def raw_stage(round_index: int) -> str:
    return f"round-{round_index}/raw"


def labels_stage(round_index: int) -> str:
    return f"round-{round_index}/labels"


def _batch_summary(batch: pa.Table) -> pa.Table:
    errors = batch.column("error").to_pylist()
    reasons = collections.Counter(e.split(":")[0] for e in errors if e)
    return pa.table({"rows": [batch.num_rows], "errors": [sum(reasons.values())],
                     "reasons": [json.dumps(reasons)]})


def _count_rows(raw: ray.data.Dataset) -> dict[str, Any]:
    totals: collections.Counter = collections.Counter()
    rows = errors = 0
    for part in raw.map_batches(_batch_summary, batch_format="pyarrow").take_all():
        rows += part["rows"]
        errors += part["errors"]
        totals.update(json.loads(part["reasons"]))
    return {"images": rows, "errors": errors, "labeled": rows - errors,
            "errors_by_reason": dict(totals)}


def _write_raw_stage(cfg: CCDConfig, store: RunStore, stage: str, rows: ray.data.Dataset
                     ) -> dict[str, Any]:
    """Write rows to a new attempt, check the error fraction, commit; return the counts."""
    started = time.time()
    attempt = store.begin(stage)
    rows.write_parquet(attempt, filesystem=store.fs)
    counts = _count_rows(ray.data.read_parquet(attempt, filesystem=store.fs))
    if counts["labeled"] == 0:
        raise TooManyErrors(f"{stage}: no image of the corpus {cfg.data.corpus_uri} could be "
                            f"labeled ({counts['images']} rows, reasons: "
                            f"{counts['errors_by_reason']}); nothing was committed.")
    fraction = counts["errors"] / counts["images"]
    if fraction > cfg.data.max_error_fraction:
        raise TooManyErrors(
            f"{stage}: {counts['errors']} of {counts['images']} images failed "
            f"({fraction:.1%} > data.max_error_fraction={cfg.data.max_error_fraction}); "
            f"reasons: {counts['errors_by_reason']}. Nothing of this stage was committed.")
    info = {**counts, "seconds": round(time.time() - started, 2)}
    store.commit(stage, attempt, info)
    return info


def score_initial(cfg: CCDConfig, store: RunStore) -> str:
    """Phase 1 over the corpus -> the committed round-0/raw folder (skipped if committed)."""
    stage = raw_stage(0)
    if store.committed(stage) is None:
        rows = corpus_rows(cfg).map_batches(
            InitialScorer, fn_constructor_kwargs={"cfg_dict": cfg.to_dict()},
            **actor_pool_args(cfg, cfg.compute.clip_actors))
        _write_raw_stage(cfg, store, stage, rows)
    return store.committed(stage)


def score_relabel(cfg: CCDConfig, store: RunStore, round_index: int, classifier_bytes: bytes,
                  threshold: float) -> str:
    """Phase 2: CAM boxes (classifier pool) streamed into guided views (teacher pool)."""
    stage = raw_stage(round_index)
    if store.committed(stage) is None:
        rows = (corpus_rows(cfg)
                .map_batches(CamBoxer, fn_constructor_kwargs={
                    "cfg_dict": cfg.to_dict(), "classifier_bytes": classifier_bytes,
                    "threshold": threshold, "round_index": round_index},
                    **actor_pool_args(cfg, cfg.compute.cam_actors))
                .map_batches(GuidedScorer, fn_constructor_kwargs={"cfg_dict": cfg.to_dict()},
                             **actor_pool_args(cfg, cfg.compute.clip_actors)))
        _write_raw_stage(cfg, store, stage, rows)
    return store.committed(stage)


def read_scores(fs, folder: str) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(ids sorted, N x C scores) of a stage's good rows, and its error rows (image_id, stage,
    reason). The matrix is read zero-copy from the list column: 4*N*C bytes on the driver
    (10^6 images x 80 classes = 320 MB), no per-row Python objects."""
    table = pads.dataset(folder, filesystem=fs, format="parquet").to_table()
    if "error" in table.column_names:
        bad = pc.is_valid(table.column("error"))
        errors = table.filter(bad)
        errors = pa.table({"image_id": errors.column("image_id"),
                           "stage": errors.column("error_stage"),
                           "reason": errors.column("error")}, schema=ERRORS_SCHEMA)
        table = table.filter(pc.invert(bad))
    else:
        errors = ERRORS_SCHEMA.empty_table()
    table = table.sort_by("image_id")
    ids = np.asarray(table.column("image_id").to_numpy(zero_copy_only=False), dtype=str)
    scores = table.column("scores").combine_chunks()
    matrix = scores.values.to_numpy(zero_copy_only=False).astype(np.float32)  # writable
    return ids, matrix.reshape(len(ids), -1), errors


def write_parquet_rows(fs, folder: str, table: pa.Table, rows_per_file: int = 200_000) -> None:
    fs.create_dir(folder, recursive=True)
    for part, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        with fs.open_output_stream(posixpath.join(folder, f"part-{part:05d}.parquet")) as out:
            pq.write_table(table.slice(start, rows_per_file), out)


def labels_table(ids: np.ndarray, scores: np.ndarray, class_names: list[str], threshold: float
                 ) -> pa.Table:
    flat = pa.array(scores.astype(np.float32).ravel())
    offsets = pa.array(np.arange(0, scores.size + 1, max(scores.shape[1], 1), dtype=np.int32)
                       if len(ids) else np.zeros(1, np.int32))
    return pa.Table.from_arrays([
        pa.array(ids, pa.string()), pa.ListArray.from_arrays(offsets, flat),
        pa.array(label_ops.label_names(torch.from_numpy(scores), class_names, threshold),
                 pa.list_(pa.string()))], schema=LABELS_SCHEMA)


def commit_labels(cfg: CCDConfig, store: RunStore, round_index: int, ids: np.ndarray,
                  labels: np.ndarray, bias: np.ndarray, partials: dict[str, np.ndarray]) -> str:
    """round-R/labels: the round's soft labels (derived by the round loop), its raw stage's
    error rows and counts, and for round 0 the bias vector with its partial sums."""
    stage = labels_stage(round_index)
    if store.committed(stage) is not None:
        return store.committed(stage)
    started = time.time()
    raw_path = store.committed(raw_stage(round_index))
    if raw_path is None:
        raise RuntimeError(f"{stage}: {raw_stage(round_index)} is not committed")
    attempt = store.begin(stage)
    if round_index == 0:
        write_json(store.fs, posixpath.join(attempt, "bias.json"),
                   {"statistic": cfg.labels.bias_statistic, "bias": bias.tolist(),
                    "partials": {k: np.asarray(v).tolist() for k, v in partials.items()},
                    "classes": cfg.classes.names})
    write_parquet_rows(store.fs, posixpath.join(attempt, "labels"),
                       labels_table(ids, labels, cfg.classes.names, cfg.labels.threshold))
    errors = pads.dataset(raw_path, filesystem=store.fs, format="parquet").to_table(
        columns=["image_id", "error", "error_stage"], filter=pc.is_valid(pc.field("error")))
    with store.fs.open_output_stream(posixpath.join(attempt, "errors.parquet")) as stream:
        pq.write_table(pa.table({"image_id": errors.column("image_id"),
                                 "stage": errors.column("error_stage"),
                                 "reason": errors.column("error")}, schema=ERRORS_SCHEMA), stream)
    summary = {**store.marker(raw_stage(round_index)), "round": round_index,
               "labels_seconds": round(time.time() - started, 2)}
    summary.pop("attempt", None)
    write_json(store.fs, posixpath.join(attempt, "summary.json"), summary)
    store.commit(stage, attempt, {"round": round_index})
    return attempt


def read_labels(store: RunStore, round_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids, N x C soft labels) of a committed round."""
    ids, scores, _ = read_scores(store.fs, posixpath.join(
        store.committed(labels_stage(round_index)), "labels"))
    return ids, scores
