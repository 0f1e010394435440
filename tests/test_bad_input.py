"""Bad input through the Ray Data labeling job, over S3: every kind of broken or odd image and
unreadable shards are recorded with their reason while every good image is labeled; too many
errors stop a stage without committing anything of it."""

from __future__ import annotations

import posixpath
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ZOO_MAX_PIXELS, attempts, image_zoo, make_classifier, run_to_round, tree

from ccd_ray.config import config_from_dict
from ccd_ray.io.corpus import UNREADABLE_SHARD
from ccd_ray.io.decode import decode_image
from ccd_ray.io.packing import synthetic_records, write_shards
from ccd_ray.io.storage import RunStore, filesystem_for, read_json, write_bytes
from ccd_ray.method import labels as label_ops
from ccd_ray.method.scoring import initial_scores
from ccd_ray.method.teacher import Teacher
from ccd_ray.stages import labeling, score_cache
from ccd_ray.stages.shards import committed_shards, shard_stage

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CORPUS = "bad-input/corpus"
RUN_ID = "bad-input"
GOOD_SCENES = 6


@pytest.fixture(scope="module")
def bad_run(ray_session, s3_config):
    """A Parquet corpus of good scenes, the image zoo and two unreadable shards, labeled once."""
    cfg = s3_config(CORPUS, f"run_id={RUN_ID}", f"data.max_image_pixels={ZOO_MAX_PIXELS}",
                    "data.max_error_fraction=0.5")
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    scenes = list(synthetic_records(GOOD_SCENES, seed=9, size=64, max_objects=2))
    zoo = image_zoo()
    write_shards(scenes + [(name, data, None) for name, data, _ in zoo], fs, root,
                 images_per_shard=12)
    garbage = posixpath.join(root, "x.parquet")
    write_bytes(fs, garbage, b"PAR1 this is not a parquet file")
    no_image = posixpath.join(root, "y.parquet")  # a real Parquet file, but not of the format
    with fs.open_output_stream(no_image) as out:
        pq.write_table(pa.table({"image_id": ["y0"], "pixels": [b"\x00"]}), out)

    expected = {name: ("decode", reason) for name, _, reason in zoo if reason}
    expected[garbage] = ("read", UNREADABLE_SHARD)
    expected[no_image] = ("read", UNREADABLE_SHARD + ": ValueError: missing column(s) ['image']")
    good = [r[0] for r in scenes] + [name for name, _, reason in zoo if reason is None]
    data = {r[0]: r[1] for r in scenes} | {name: b for name, b, _ in zoo}

    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    run_to_round(cfg, store, 0)
    raw, labels = labeling.raw_folder(cfg, store, 0), store.committed(labeling.labels_stage(0))
    return SimpleNamespace(cfg=cfg, store=store, raw=raw, labels=labels, good=good,
                           expected_errors=expected, data=data)


def _labels(run) -> pa.Table:
    return pads.dataset(posixpath.join(run.labels, "labels"), filesystem=run.store.fs,
                        format="parquet").to_table()


def test_every_good_image_is_labeled(bad_run):
    table = _labels(bad_run)
    assert sorted(table.column("image_id").to_pylist()) == sorted(bad_run.good)
    names = list(bad_run.cfg.classes.names)
    for scores, labels in zip(table.column("scores").to_pylist(),
                              table.column("labels").to_pylist()):
        assert len(scores) == len(names) and all(np.isfinite(scores))
        assert labels == [n for n, s in zip(names, scores) if s >= bad_run.cfg.labels.threshold]


def test_each_bad_input_is_recorded_with_its_reason_and_stage(bad_run):
    errors = pq.read_table(posixpath.join(bad_run.labels, "errors.parquet"),
                           filesystem=bad_run.store.fs)
    assert errors.schema.equals(labeling.ERRORS_SCHEMA)
    got = {row["image_id"]: (row["stage"], row["reason"]) for row in errors.to_pylist()}
    assert errors.num_rows == len(got) == len(bad_run.expected_errors)
    assert set(got) == set(bad_run.expected_errors)
    for image_id, (stage, prefix) in bad_run.expected_errors.items():
        assert got[image_id][0] == stage, image_id
        assert got[image_id][1].startswith(prefix), (image_id, got[image_id][1])
    # reasons are short enough to read in a table
    assert all(len(reason) <= 300 for _, reason in got.values())


def test_summary_counts_every_row(bad_run):
    summary = read_json(bad_run.store.fs, posixpath.join(bad_run.labels, "summary.json"))
    n_errors = len(bad_run.expected_errors)
    assert summary["images"] == len(bad_run.good) + n_errors
    assert summary["errors"] == n_errors
    assert summary["labeled"] == len(bad_run.good)
    by_reason: dict[str, int] = {}
    for _, prefix in bad_run.expected_errors.values():
        key = prefix.split(":")[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    assert summary["errors_by_reason"] == by_reason
    assert summary["round"] == 0
    # the committed raw stage carries the same counts
    marker = bad_run.store.marker(labeling.raw_stage(0))
    assert (marker["images"], marker["errors"]) == (summary["images"], summary["errors"])


def test_good_images_of_any_mode_match_the_reference(bad_run):
    cfg = bad_run.cfg
    teacher = Teacher.from_config(cfg.teacher, cfg.classes)
    ids = sorted(bad_run.good)
    images = [torch.from_numpy(decode_image(bad_run.data[i], cfg.data.max_image_pixels,
                                            cfg.data.max_image_side).image) for i in ids]
    raw = initial_scores(teacher, images, ids, cfg)
    bias = label_ops.bias_vector(
        label_ops.bias_partials(raw, cfg.labels.threshold, cfg.initial.entropy_threshold),
        cfg.labels.bias_statistic)
    expected = label_ops.debias(raw, bias, cfg.labels.gamma, cfg.labels.debias).numpy()
    got = dict(zip(*labeling.read_labels(bad_run.store, 0)))
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, atol=1e-5)


def test_too_many_errors_stops_the_stage_and_commits_nothing(bad_run):
    """Phase 2 on the same corpus with a 20 % error budget: 9 of 25 rows are bad."""
    store = bad_run.store
    data = bad_run.cfg.to_dict()
    data["data"]["max_error_fraction"] = 0.2
    strict = config_from_dict(data)
    before = tree(store.fs, store.root, "round-0")
    _, checkpoint = make_classifier(list(strict.classes.names), seed=3)
    n_errors = len(bad_run.expected_errors)
    n_rows = n_errors + len(bad_run.good)
    with pytest.raises(labeling.TooManyErrors) as failure:
        labeling.score_relabel(strict, store, 1, checkpoint, strict.relabel.selection_threshold)
    message = str(failure.value)
    assert f"{n_errors} of {n_rows} images failed" in message
    assert "data.max_error_fraction=0.2" in message
    assert "unreadable shard" in message and "Nothing of this stage was committed" in message

    assert store.committed(labeling.raw_stage(1)) is None
    assert store.committed(labeling.labels_stage(1)) is None
    assert tree(store.fs, store.root, "round-0") == before
    assert store.committed(labeling.labels_stage(0)) == bad_run.labels
    with pytest.raises(RuntimeError, match="not committed"):
        labeling.commit_labels(strict, store, 1, np.array([], str), np.zeros((0, 4), np.float32),
                               np.ones(4, np.float32), {})

    # the abandoned cache entry's shard files show the errors went through both phase-2
    # actor pools intact; the shards with errors were uncommitted, so a rerun rescores them
    cache = score_cache.cache_store(strict)
    entry = score_cache.stage_name(score_cache.guided_key(
        strict, checkpoint, strict.relabel.selection_threshold, 1))
    assert cache.committed(entry) is None and attempts(cache, entry) == set()
    files = [cache.path(entry, f) for f in tree(cache.fs, cache.path(entry))
             if f.endswith(".parquet")]
    rows = pads.dataset(files, filesystem=cache.fs, format="parquet").to_table().to_pylist()
    assert all(cache.marker(shard_stage(i, entry))["errors"] == 0
               for i in committed_shards(cache, entry))
    assert {r["image_id"]: (r["error_stage"], r["error"].split(":")[0])
            for r in rows if r["error"]} == {
        k: (stage, prefix.split(":")[0]) for k, (stage, prefix) in bad_run.expected_errors.items()}
    assert all(r["views"] >= strict.relabel.views_per_box for r in rows if not r["error"])
