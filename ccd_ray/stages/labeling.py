"""Ray Data stages of labeling: stream shards through the teacher's actor pool (in a relabel
round each actor also holds the classifier, for the CAM boxes) into each round's raw scores,
and commit the labels the round loop derives from them. Every stage is committed atomically
and skipped when already committed, so a rerun resumes.

Run layout under `<output_uri>/<run_id>/` (each stage folder holds `_COMMITTED.json` and the
committed `attempt-*/`):
  round-R/raw       a marker naming the round's score-cache entry (`<output_uri>/score-cache/`:
                    per image its view boxes and every view's scores, or its error) + counts,
                    and what this run did: teacher_passes_run, images_run, shards_resumed
  round-0/labels    labels/*.parquet, errors.parquet, summary.json, bias.json
  round-R/labels    labels fused with round R-1 (alpha) after debiasing (gamma)
"""

from __future__ import annotations

import posixpath
import time

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ccd_ray.config import CCDConfig
from ccd_ray.io.storage import RunStore, write_json
from ccd_ray.method.rows import ERRORS_SCHEMA, LABELS_SCHEMA, id_array, labels_table, list_matrix
from ccd_ray.stages import score_cache
from ccd_ray.stages.score_cache import TooManyErrors

__all__ = ["ERRORS_SCHEMA", "LABELS_SCHEMA", "TooManyErrors", "commit_labels", "labels_stage",
           "raw_stage", "read_labels", "read_raw", "score_initial", "score_relabel"]


def raw_stage(round_index: int) -> str:
    return f"round-{round_index}/raw"


def labels_stage(round_index: int) -> str:
    return f"round-{round_index}/labels"


def raw_folder(cfg: CCDConfig, store: RunStore, round_index: int) -> str | None:
    """The committed score-cache entry a round's raw stage names (None: not committed, or the
    entry was deleted from the cache since, so the round is scored again)."""
    if store.committed(raw_stage(round_index)) is None:
        return None
    entry = store.marker(raw_stage(round_index))["cache_entry"]
    return score_cache.cache_store(cfg).committed(entry)


def _commit_raw(cfg: CCDConfig, store: RunStore, round_index: int, score) -> str:
    """round-R/raw: score the round into the score cache (a hit scores nothing), then commit
    the run's marker naming the entry, with its counts; returns the entry's folder."""
    folder = raw_folder(cfg, store, round_index)
    if folder is None:
        started = time.time()
        cache = score_cache.cache_store(cfg)
        scored = score(cache)
        folder = scored.folder
        entry = posixpath.basename(posixpath.dirname(folder))
        counts = {k: v for k, v in cache.marker(entry).items()
                  if k not in ("attempt", "key", "shards_resumed")}
        attempt = store.begin(raw_stage(round_index))
        # what ran now (a cache hit: nothing), apart from the entry's counts
        info = {**counts, "cache_entry": entry, "teacher_passes_run": scored.teacher_passes,
                "images_run": scored.images, "shards_resumed": scored.shards_resumed,
                "seconds": round(time.time() - started, 2)}
        write_json(store.fs, posixpath.join(attempt, "entry.json"), info)
        store.commit(raw_stage(round_index), attempt, info)
    return folder


def score_initial(cfg: CCDConfig, store: RunStore) -> str:
    """Phase 1 over the corpus: every image's global view and random crops, every view's
    scores (the round-0 score-cache entry's folder)."""
    return _commit_raw(cfg, store, 0, lambda cache: score_cache.initial_view_scores(cfg, cache))


def score_relabel(cfg: CCDConfig, store: RunStore, round_index: int, classifier_bytes: bytes,
                  threshold: float) -> str:
    """Phase 2: the teacher's scores of the views around the classifier's CAM boxes (one
    actor pool holding both models)."""
    return _commit_raw(cfg, store, round_index, lambda cache: score_cache.guided_view_scores(
        cfg, classifier_bytes, threshold, round_index, cache))


def read_raw(cfg: CCDConfig, store: RunStore, round_index: int
             ) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(ids sorted, N x C pooled raw scores, error rows) of a committed round."""
    folder = raw_folder(cfg, store, round_index)
    if folder is None:
        raise RuntimeError(f"{raw_stage(round_index)} is not committed")
    # the cache shares the run's output URI, so the run's filesystem reads it
    return score_cache.read_pooled(store.fs, score_cache.entry_files(store.fs, folder),
                                   len(cfg.classes.names), cfg.labels.aggregation)


def read_scores(fs, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted, N x C scores) of a folder of labels files, read zero-copy from the list
    column: 4*N*C bytes on the driver (10^6 images x 80 classes = 320 MB), no per-row Python
    objects."""
    table = pads.dataset(folder, filesystem=fs, format="parquet").to_table(
        columns=["image_id", "scores"]).sort_by("image_id")
    ids = id_array(table.column("image_id"))
    return ids, list_matrix(table.column("scores"))


def write_parquet_rows(fs, folder: str, table: pa.Table, rows_per_file: int = 200_000) -> None:
    fs.create_dir(folder, recursive=True)
    for part, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        with fs.open_output_stream(posixpath.join(folder, f"part-{part:05d}.parquet")) as out:
            pq.write_table(table.slice(start, rows_per_file), out)


def commit_labels(cfg: CCDConfig, store: RunStore, round_index: int, ids: np.ndarray,
                  labels: np.ndarray, bias: np.ndarray, partials: dict[str, np.ndarray]) -> str:
    """round-R/labels: the round's soft labels (derived by the round loop), its raw stage's
    error rows and counts, and for round 0 the bias vector with its partial sums."""
    stage = labels_stage(round_index)
    if store.committed(stage) is not None:
        return store.committed(stage)
    started = time.time()
    if store.committed(raw_stage(round_index)) is None:
        raise RuntimeError(f"{stage}: {raw_stage(round_index)} is not committed")
    attempt = store.begin(stage)
    if round_index == 0:
        write_json(store.fs, posixpath.join(attempt, "bias.json"),
                   {"statistic": cfg.labels.bias_statistic, "bias": bias.tolist(),
                    "partials": {k: np.asarray(v).tolist() for k, v in partials.items()},
                    "classes": cfg.classes.names})
    write_parquet_rows(store.fs, posixpath.join(attempt, "labels"),
                       labels_table(ids, labels, cfg.classes.names, cfg.labels.threshold))
    _, _, errors = read_raw(cfg, store, round_index)
    with store.fs.open_output_stream(posixpath.join(attempt, "errors.parquet")) as stream:
        pq.write_table(errors, stream)
    summary = {**store.marker(raw_stage(round_index)), "round": round_index,
               "labels_seconds": round(time.time() - started, 2)}
    for key in ("attempt", "cache_entry", "teacher_passes_run", "images_run", "shards_resumed"):
        summary.pop(key, None)
    write_json(store.fs, posixpath.join(attempt, "summary.json"), summary)
    store.commit(stage, attempt, {"round": round_index})
    return attempt


def read_labels(store: RunStore, round_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids, N x C soft labels) of a committed round."""
    return read_scores(store.fs, posixpath.join(store.committed(labels_stage(round_index)),
                                                "labels"))
