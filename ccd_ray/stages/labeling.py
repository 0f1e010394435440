"""Ray Data stages of labeling: stream shards through the teacher (and classifier) actor pools,
then turn raw scores into each round's labels. Every stage is committed atomically and
skipped when already committed, so a rerun of the same run resumes.

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

from ccd_ray.method import labels as label_ops
from ccd_ray.stages.actors import CamBoxer, GuidedScorer, InitialScorer
from ccd_ray.config import CCDConfig
from ccd_ray.io.corpus import CorpusLayout, discover, read_task_rows
from ccd_ray.io.storage import RunStore, filesystem_for, list_files, read_json, write_json

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


def _read_task(batch: pa.Table, fs, layout: CorpusLayout):
    for files in batch.column("files").to_pylist():
        yield from read_task_rows(fs, layout, files)


def corpus_rows(cfg: CCDConfig) -> ray.data.Dataset:
    """Rows (image_id, image, error) of the whole corpus, one read task per shard."""
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    layout = discover(fs, root, cfg.data.files_per_task)
    items = [{"files": files} for files in layout.tasks]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_task, batch_size=1, batch_format="pyarrow", fn_kwargs={"fs": fs, "layout": layout},
        num_cpus=0.5)


def actor_pool_args(cfg: CCDConfig, size: int) -> dict[str, Any]:
    """map_batches arguments of an actor pool of at most size actors."""
    gpus = cfg.compute.gpus_per_actor
    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=size),
            "batch_size": cfg.compute.images_per_batch, "batch_format": "pyarrow",
            "num_cpus": cfg.compute.cpus_per_actor, **({"num_gpus": gpus} if gpus > 0 else {})}


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


def _ok(row: dict) -> bool:
    return row["error"] is None


def _scores_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_pylist(), dtype=np.float32)


def _bias_partials_batch(batch: pa.Table, threshold: float, entropy_threshold: float) -> pa.Table:
    parts = label_ops.bias_partials(torch.from_numpy(_scores_matrix(batch.column("scores"))),
                                    threshold, entropy_threshold)
    return pa.table({k: [v.numpy().ravel().tolist()] for k, v in parts.items()})


def compute_bias(cfg: CCDConfig, raw_path: str, fs) -> tuple[torch.Tensor, dict]:
    """The bias vector from per-block partial sums (computed where the blocks are), reduced
    on the driver."""
    ok = ray.data.read_parquet(raw_path, filesystem=fs).filter(_ok)
    parts = ok.map_batches(_bias_partials_batch, batch_format="pyarrow", fn_kwargs={
        "threshold": cfg.labels.threshold,
        "entropy_threshold": cfg.initial.entropy_threshold}).take_all()
    merged = label_ops.merge_bias_partials(
        [{k: torch.tensor(p[k], dtype=torch.float64).reshape(-1 if k != "images" else ())
          for k in p} for p in parts])
    bias = label_ops.bias_vector(merged, cfg.labels.bias_statistic)
    return bias, {k: v.tolist() for k, v in merged.items()}


def read_scores(fs, folder: str) -> tuple[list[str], np.ndarray, pa.Table]:
    """(ids, N x C scores) of a stage's good rows, and its error rows (image_id, stage, reason).

    Label derivation below runs on the driver over these matrices: 4*N*C bytes per round
    (1M images x 80 classes = 320 MB), cheap next to the teacher's work and reusable by
    sweeps without any Ray Data pass."""
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
    return table.column("image_id").to_pylist(), _scores_matrix(table.column("scores")), errors


def align(ids: list[str], reference_ids: list[str], matrix: np.ndarray) -> np.ndarray:
    """Rows of matrix (ordered as reference_ids) reordered to follow ids; every id must exist."""
    index = {image_id: row for row, image_id in enumerate(reference_ids)}
    missing = [i for i in ids if i not in index]
    if missing:
        raise KeyError(f"{len(missing)} image(s) lack a previous label, e.g. {missing[0]!r}")
    return matrix[[index[i] for i in ids]]


def write_parquet_rows(fs, folder: str, table: pa.Table, rows_per_file: int = 200_000) -> None:
    fs.create_dir(folder, recursive=True)
    for part, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file)):
        with fs.open_output_stream(posixpath.join(folder, f"part-{part:05d}.parquet")) as out:
            pq.write_table(table.slice(start, rows_per_file), out)


def labels_table(ids: list[str], scores: np.ndarray, class_names: list[str], threshold: float
                 ) -> pa.Table:
    return pa.Table.from_pydict({
        "image_id": ids, "scores": scores.astype(np.float32).tolist(),
        "labels": label_ops.label_names(torch.from_numpy(scores), class_names, threshold)},
        schema=LABELS_SCHEMA)


def write_labels(cfg: CCDConfig, store: RunStore, round_index: int) -> str:
    """round-R/labels from round-R/raw: debias, fuse with round R-1 (R >= 1), threshold."""
    stage = labels_stage(round_index)
    if store.committed(stage) is not None:
        return store.committed(stage)
    started = time.time()
    raw_path = store.committed(raw_stage(round_index))
    if raw_path is None:
        raise RuntimeError(f"{stage}: {raw_stage(round_index)} is not committed")
    attempt = store.begin(stage)
    ids, raw, errors = read_scores(store.fs, raw_path)
    if round_index == 0:
        bias, partials = compute_bias(cfg, raw_path, store.fs)
        write_json(store.fs, posixpath.join(attempt, "bias.json"),
                   {"statistic": cfg.labels.bias_statistic, "bias": bias.tolist(),
                    "partials": partials, "classes": cfg.classes.names})
    else:
        bias = torch.tensor(read_bias(store))
    scores = label_ops.debias(torch.from_numpy(raw), bias, cfg.labels.gamma)
    if round_index > 0:
        prev_ids, prev, _ = read_scores(store.fs, posixpath.join(
            store.committed(labels_stage(round_index - 1)), "labels"))
        scores = label_ops.fuse(torch.from_numpy(align(ids, prev_ids, prev)), scores,
                                cfg.labels.alpha)
    write_parquet_rows(store.fs, posixpath.join(attempt, "labels"),
                       labels_table(ids, scores.numpy(), cfg.classes.names, cfg.labels.threshold))
    with store.fs.open_output_stream(posixpath.join(attempt, "errors.parquet")) as stream:
        pq.write_table(errors, stream)
    summary = {**store.marker(raw_stage(round_index)), "round": round_index,
               "labels_seconds": round(time.time() - started, 2)}
    summary.pop("attempt", None)
    write_json(store.fs, posixpath.join(attempt, "summary.json"), summary)
    store.commit(stage, attempt, {"round": round_index})
    return attempt


def read_bias(store: RunStore) -> list[float]:
    return read_json(store.fs, posixpath.join(store.committed(labels_stage(0)), "bias.json"))["bias"]


def read_labels(store: RunStore, round_index: int) -> dict[str, np.ndarray]:
    """image_id -> soft label vector of a committed round."""
    ids, scores, _ = read_scores(store.fs, posixpath.join(
        store.committed(labels_stage(round_index)), "labels"))
    return dict(zip(ids, scores))
