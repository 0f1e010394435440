"""Driver-side label derivation stays within a small multiple of its float32 matrices.

A synthetic score-cache entry of 200,000 images x 2 views x 20 classes (the Parquet layout the
teacher actors write, stages.actors.views_table) is pooled with score_cache.read_pooled, the
bias and the round's labels are derived (labels.initial_bias, labels.round_labels), and a
labels folder is read back with labeling.read_scores. tracemalloc sees every Python object and
numpy array the driver makes (not Arrow's or torch's own buffers, which hold data zero-copy or
in C): a per-row Python object, such as a list per row from `to_pylist()` or `tolist()`,
costs tens of bytes per element and breaks the bound, which the last test checks on a
list-based pooling. (An RSS bound was tried and dropped: the first call's RSS rise carries
pyarrow's and torch's one-time pools, 337 MB here, and later calls reuse freed pages, 1-61 MB,
so it bounds nothing.)"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ccd_ray.method import labels as label_ops
from ccd_ray.stages import labeling, score_cache
from ccd_ray.stages.actors import views_table

IMAGES, VIEWS, CLASSES, ERRORS, FILES = 200_000, 2, 20, 10, 8
# ids: one fixed-width numpy unicode array, 4 bytes a character (rows.id_array converts the
# Arrow column through its bytes, with no Python str per row)
ID_BYTES = 4 * 13


def pool_bound(images: int) -> int:
    """A small multiple of the pooled matrix read (the actors stored it, 16 MB for IMAGES):
    its copy out of Arrow, the bias's chunks and both rounds' labels, plus the ids."""
    return images * (4 * CLASSES * 4 + ID_BYTES)


POOL_BOUND = pool_bound(IMAGES)
LABELS_BOUND = IMAGES * (4 * CLASSES * 4 + ID_BYTES)   # 4x the 16 MB matrix, plus the ids
SECONDS_BOUND = 60.0   # generous for a busy 2-core machine; the memory bounds are the test


def _ids(count: int) -> np.ndarray:
    return np.char.add("img-", np.char.zfill(np.arange(count).astype(str), 9))  # 13 chars


@pytest.fixture(scope="module")
def cache_entry(tmp_path_factory) -> str:
    """A score-cache entry folder of IMAGES rows (ERRORS of them failed), in FILES files,
    written in shuffled id order as actors would."""
    folder = tmp_path_factory.mktemp("entry")
    rng = np.random.default_rng(0)
    ids = _ids(IMAGES)[rng.permutation(IMAGES)]
    views = np.full(IMAGES, VIEWS, np.int32)
    views[:ERRORS] = 0
    scores = rng.random((int(views.sum()), CLASSES), dtype=np.float32)
    error = pa.array([f"decode: broken {i}" for i in range(ERRORS)] + [None] * (IMAGES - ERRORS),
                     pa.string())
    sides = np.full(IMAGES, 96, np.int32)
    table = views_table(pa.array(ids), views, sides, sides,
                        np.zeros((int(views.sum()), 4), np.int32), scores,
                        np.ones(IMAGES, np.int64), error,
                        pa.array(["decode"] * ERRORS + [None] * (IMAGES - ERRORS), pa.string()))
    for part, start in enumerate(range(0, IMAGES, IMAGES // FILES)):
        pq.write_table(table.slice(start, IMAGES // FILES), folder / f"part-{part}.parquet")
    return str(folder)


def _traced(fn):
    """(fn's result, peak bytes traced while it ran, seconds)."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak, seconds


def _fs():
    import pyarrow.fs as pafs
    return pafs.LocalFileSystem()


def test_pooling_and_label_derivation_stay_within_a_small_multiple_of_the_matrix(cache_entry):
    def derive():
        ids, raw, errors = score_cache.read_pooled(_fs(), cache_entry, CLASSES, "mean")
        raw_t = torch.from_numpy(raw)
        bias, partials = label_ops.initial_bias(raw_t, 0.5, 2.5, "count")
        round0 = label_ops.round_labels(raw_t, None, bias, 1.0, 0.4, "logit_shift")
        round1 = label_ops.round_labels(raw_t, round0, bias, 1.0, 0.4, "logit_shift")
        return ids, raw, errors, round1

    (ids, raw, errors, round1), peak, seconds = _traced(derive)
    labeled = IMAGES - ERRORS
    assert raw.shape == (labeled, CLASSES) and raw.dtype == np.float32
    assert round1.shape == (labeled, CLASSES) and errors.num_rows == ERRORS
    assert np.all(ids[:-1] < ids[1:])   # sorted
    assert peak <= POOL_BOUND, (f"driver-side pooling + label derivation peaked at "
                                f"{peak / 1e6:.0f} MB traced, bound {POOL_BOUND / 1e6:.0f} MB")
    assert seconds <= SECONDS_BOUND


def test_reading_a_labels_folder_stays_within_a_small_multiple_of_the_matrix(tmp_path):
    rng = np.random.default_rng(1)
    ids = _ids(IMAGES)
    scores = rng.random((IMAGES, CLASSES), dtype=np.float32)
    table = pa.table({"image_id": pa.array(ids), "scores": pa.ListArray.from_arrays(
        pa.array(np.arange(0, scores.size + 1, CLASSES, dtype=np.int32)),
        pa.array(scores.ravel()))})
    labeling.write_parquet_rows(_fs(), str(tmp_path / "labels"), table, rows_per_file=50_000)
    del table

    (read_ids, read), peak, seconds = _traced(
        lambda: labeling.read_scores(_fs(), str(tmp_path / "labels")))
    np.testing.assert_array_equal(read_ids, ids)
    np.testing.assert_array_equal(read, scores)
    assert peak <= LABELS_BOUND, (f"reading labels peaked at {peak / 1e6:.0f} MB traced, "
                                  f"bound {LABELS_BOUND / 1e6:.0f} MB")
    assert seconds <= SECONDS_BOUND


def test_the_bound_catches_per_row_python_objects(cache_entry):
    """The same pooling through to_pylist (one Python list of floats per row, as the label
    code once read its scores) exceeds the same bound: the bound can fail. On one file of
    the entry (the bound is linear in the rows), to keep the test short."""
    one_file = sorted(Path(cache_entry).glob("*.parquet"))[-1]

    def pool_by_lists():
        table = pq.read_table(one_file, columns=["image_id", "view_scores", "views", "error"])
        table = table.filter(table.column("error").is_null())
        rows = table.column("view_scores").to_pylist()
        views = table.column("views").to_pylist()
        return [np.asarray(r, np.float32).reshape(v, CLASSES).mean(axis=0)
                for r, v in zip(rows, views)]

    pooled, peak, _ = _traced(pool_by_lists)
    images = IMAGES // FILES
    assert len(pooled) == images
    assert peak > pool_bound(images), (f"list-based pooling peaked at only {peak / 1e6:.0f} MB, "
                                       f"bound {pool_bound(images) / 1e6:.0f} MB")


def test_the_scale_benchmarks_job_config_is_a_valid_config(tmp_path):
    """benchmarks/scale.py's job: the embedded default's YAML with its overrides, loadable by
    the job (a broken config would only show after minutes of corpus writing)."""
    import yaml
    from script_modules import load_script

    from ccd_ray.config import load_config

    scale = load_script(Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py",
                        "scale_benchmark")
    config = scale.job_config("local-dir:/nowhere/teacher")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    assert cfg.teacher.model == "local-dir:/nowhere/teacher"
    assert (cfg.initial.random_crops, cfg.relabel.rounds, cfg.train.image_size) == (2, 1, 64)
    assert (cfg.compute.clip_actors, cfg.compute.train_workers) == (1, 1)
