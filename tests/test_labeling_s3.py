"""Ray Data labeling end to end through a real S3 endpoint on loopback (moto's server):
pack -> phase 1 -> labels + bias -> phase 2 -> fused labels, run by the round loop with the Ray
executor (training replaced by a fixed classifier), checked against the documented run layout
and against the in-process computation on the same images, model and seeds.

The stages run once per module (fixtures below) and the tests inspect what they left in S3.
Order of work: phase 1 + round-0 labels, then a phase 2 that fails (corrupt classifier),
then the successful phase 2 + round-1 labels."""

from __future__ import annotations

import posixpath
from types import SimpleNamespace

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from conftest import attempts, make_classifier, run_to_round, tree

from ccd_ray.io.corpus import discover, read_ground_truth
from ccd_ray.io.decode import decode_image
from ccd_ray.io.packing import synthetic_records, write_shards
from ccd_ray.io.storage import MARKER, RunStore, filesystem_for, read_json
from ccd_ray.method import labels as label_ops
from ccd_ray.method.scoring import classifier_outputs, initial_scores, relabel_boxes, score_boxes
from ccd_ray.method.teacher import Teacher
from ccd_ray.stages import labeling, score_cache
from ccd_ray.stages.shards import committed_shards, shard_stage

pytestmark = [pytest.mark.ray, pytest.mark.slow]

N_IMAGES = 27
CORPUS = "roundtrip/corpus"
RUN_ID = "roundtrip"
CLASSIFIER_SEED = 7


@pytest.fixture(scope="module")
def corpus(s3_config):
    """27 synthetic 80 px scenes packed into three Parquet shards in S3."""
    cfg = s3_config(CORPUS, f"run_id={RUN_ID}")
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    records = list(synthetic_records(N_IMAGES, seed=5, size=80, max_objects=3))
    shards = write_shards(records, fs, root, images_per_shard=10)
    return SimpleNamespace(cfg=cfg, records=records, shards=shards, fs=fs, root=root)


@pytest.fixture(scope="module")
def phase0(ray_session, corpus):
    cfg = corpus.cfg
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    run_to_round(cfg, store, 0)
    return SimpleNamespace(cfg=cfg, store=store, raw=labeling.raw_folder(cfg, store, 0),
                           labels=store.committed(labeling.labels_stage(0)))


@pytest.fixture(scope="module")
def failed_relabel(phase0):
    """Phase 2 with a classifier checkpoint that does not load: the actors cannot start."""
    store, cfg = phase0.store, phase0.cfg
    before = tree(store.fs, store.root, "round-0")
    corrupt = b"\x80\x02 not a checkpoint"
    with pytest.raises(Exception) as failure:
        run_to_round(cfg, store, 1, corrupt)
    entry = score_cache.stage_name(score_cache.guided_key(
        cfg, corrupt, cfg.relabel.selection_threshold, 1))
    cache = score_cache.cache_store(cfg)
    return SimpleNamespace(error=failure.value, before=before,
                           after=tree(store.fs, store.root, "round-0"),
                           committed=store.committed(labeling.raw_stage(1)),
                           run_attempts=attempts(store, labeling.raw_stage(1)),
                           entry_committed=cache.committed(entry),
                           entry_files=tree(cache.fs, cache.path(entry)),
                           shards_committed=committed_shards(cache, entry))


@pytest.fixture(scope="module")
def phase1(phase0, failed_relabel):
    """The successful rerun of phase 2, after the failed one, then round-1 labels."""
    cfg, store = phase0.cfg, phase0.store
    model, checkpoint = make_classifier(list(cfg.classes.names), CLASSIFIER_SEED)
    run_to_round(cfg, store, 1, checkpoint)
    return SimpleNamespace(cfg=cfg, store=store, raw=labeling.raw_folder(cfg, store, 1),
                           labels=store.committed(labeling.labels_stage(1)), classifier=model,
                           checkpoint=checkpoint)


@pytest.fixture(scope="module")
def reference(corpus):
    """The in-process computation on the same images, teacher weights and seeds: round 0."""
    cfg = corpus.cfg
    teacher = Teacher.from_config(cfg.teacher, cfg.classes)
    ids = [r[0] for r in corpus.records]
    images = [torch.from_numpy(decode_image(r[1], cfg.data.max_image_pixels,
                                            cfg.data.max_image_side).image)
              for r in corpus.records]
    raw = initial_scores(teacher, images, ids, cfg)
    bias = label_ops.bias_vector(
        label_ops.bias_partials(raw, cfg.labels.threshold, cfg.initial.entropy_threshold),
        cfg.labels.bias_statistic)
    labels0 = label_ops.debias(raw, bias, cfg.labels.gamma, cfg.labels.debias)
    return SimpleNamespace(cfg=cfg, teacher=teacher, images=images, ids=ids, raw=raw, bias=bias,
                           labels0=labels0)


@pytest.fixture(scope="module")
def reference1(reference, phase1):
    """... and round 1, guided by the same classifier as the distributed phase 2."""
    r = reference
    probs, cams = classifier_outputs(phase1.classifier, r.images, r.cfg.train.image_size)
    boxes = relabel_boxes(probs, cams, r.images, r.ids, r.cfg.relabel.selection_threshold, 1,
                          r.cfg)
    local = score_boxes(r.teacher, r.images, boxes, r.cfg)
    labels1 = label_ops.round_labels(local, r.labels0, r.bias, r.cfg.labels.gamma,
                                     r.cfg.labels.alpha, r.cfg.labels.debias)
    return SimpleNamespace(ids=r.ids, labels1=labels1, local=local)


def _by_id(ids, matrix) -> dict[str, np.ndarray]:
    return dict(zip(ids, np.asarray(matrix)))


def _check_labels_stage(store: RunStore, cfg, round_index: int, attempt: str, ids: list[str]):
    """The documented round-R/labels layout; returns (labels table, summary)."""
    fs, stage = store.fs, labeling.labels_stage(round_index)
    assert store.committed(stage) == attempt
    assert read_json(fs, store.path(stage, MARKER))["attempt"] == posixpath.basename(attempt)
    files = tree(fs, attempt)
    assert "errors.parquet" in files and "summary.json" in files
    assert ("bias.json" in files) == (round_index == 0)
    assert any(f.startswith("labels/") and f.endswith(".parquet") for f in files)

    table = pads.dataset(posixpath.join(attempt, "labels"), filesystem=fs,
                         format="parquet").to_table()
    assert table.schema.equals(labeling.LABELS_SCHEMA)
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids)
    names = list(cfg.classes.names)
    for scores, labels in zip(table.column("scores").to_pylist(),
                              table.column("labels").to_pylist()):
        assert len(scores) == len(names)
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert labels == [n for n, s in zip(names, scores) if s >= cfg.labels.threshold]
    # a random teacher is confident, so some labels are output (and not every class everywhere)
    assert 0 < sum(map(len, table.column("labels").to_pylist())) < len(ids) * len(names)

    errors = pq.read_table(posixpath.join(attempt, "errors.parquet"), filesystem=fs)
    assert errors.schema.equals(labeling.ERRORS_SCHEMA) and errors.num_rows == 0
    summary = read_json(fs, posixpath.join(attempt, "summary.json"))
    assert summary["round"] == round_index
    assert (summary["images"], summary["errors"], summary["labeled"]) == (len(ids), 0, len(ids))
    assert summary["errors_by_reason"] == {}
    return table, summary


def test_corpus_is_in_s3_with_ground_truth(corpus, s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1")
    keys = [o["Key"] for o in client.list_objects_v2(
        Bucket=s3_server["bucket"], Prefix=CORPUS + "/")["Contents"]]
    assert sorted(k for k in keys if k.endswith(".parquet")) == [
        f"{CORPUS}/shard-{i:05d}.parquet" for i in range(3)]
    layout = discover(corpus.fs, corpus.root, corpus.cfg.data.files_per_task)
    assert layout.kind == "parquet" and len(layout.tasks) == 3
    assert read_ground_truth(corpus.fs, layout) == {r[0]: r[2] for r in corpus.records}


def test_phase1_raw_stage_is_committed(phase0):
    store = phase0.store
    marker = store.marker(labeling.raw_stage(0))
    # the run's raw stage names its score-cache entry, which holds every view's scores
    cache = score_cache.cache_store(phase0.cfg)
    assert phase0.raw == cache.committed(marker["cache_entry"])
    assert marker["cache_entry"].startswith("initial-") and marker["teacher_passes_run"] > 0
    assert (marker["images"], marker["errors"], marker["labeled"]) == (N_IMAGES, 0, N_IMAGES)
    assert (marker["shards"], marker["shards_resumed"]) == (3, 0)  # one per corpus shard
    raw = pads.dataset(score_cache.entry_files(store.fs, phase0.raw), filesystem=store.fs,
                       format="parquet").to_table()
    assert raw.num_rows == N_IMAGES
    views = 1 + phase0.cfg.initial.random_crops
    assert set(raw.column("views").to_pylist()) == {views}
    assert {len(s) for s in raw.column("view_scores").to_pylist()} == {views * 4}
    assert raw.column("error").null_count == N_IMAGES


def test_round0_labels_layout_in_s3(phase0, corpus, s3_server):
    ids = [r[0] for r in corpus.records]
    _check_labels_stage(phase0.store, phase0.cfg, 0, phase0.labels, ids)
    bias = read_json(phase0.store.fs, posixpath.join(phase0.labels, "bias.json"))
    assert bias["classes"] == list(phase0.cfg.classes.names)
    assert bias["statistic"] == phase0.cfg.labels.bias_statistic
    assert len(bias["bias"]) == len(phase0.cfg.classes.names)
    assert bias["partials"]["images"] == N_IMAGES

    # the objects really are behind the S3 endpoint
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server["endpoint"], region_name="us-east-1")
    prefix = f"runs/{RUN_ID}/round-0/labels/"
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_server["bucket"],
                                                     Prefix=prefix)["Contents"]}
    attempt = posixpath.basename(phase0.labels)
    assert {prefix + MARKER, f"{prefix}{attempt}/summary.json", f"{prefix}{attempt}/bias.json",
            f"{prefix}{attempt}/errors.parquet"} <= keys


def test_round0_matches_the_single_process_reference(phase0, reference):
    bias = read_json(phase0.store.fs, posixpath.join(phase0.labels, "bias.json"))["bias"]
    np.testing.assert_allclose(bias, reference.bias.numpy(), atol=1e-5)
    ids, raw, _ = labeling.read_raw(phase0.cfg, phase0.store, 0)
    expected_raw = _by_id(reference.ids, reference.raw)
    np.testing.assert_allclose(raw, np.stack([expected_raw[i] for i in ids]), atol=1e-5)
    got = dict(zip(*labeling.read_labels(phase0.store, 0)))
    assert sorted(got) == sorted(reference.ids)
    np.testing.assert_allclose(np.stack([got[i] for i in reference.ids]),
                               reference.labels0.numpy(), atol=1e-5)


def test_failed_stage_propagates_and_commits_nothing(failed_relabel, phase0):
    # the stage had begun (its cache entry recorded the corpus layout) but nothing of it is
    # visible: neither the entry, nor any of its shards, nor the run's raw stage is committed
    assert failed_relabel.entry_committed is None and failed_relabel.shards_committed == set()
    assert score_cache.LAYOUT_FILE in failed_relabel.entry_files
    assert not any(f.endswith(MARKER) for f in failed_relabel.entry_files)
    assert failed_relabel.committed is None and failed_relabel.run_attempts == set()
    # the cause (the checkpoint does not load) reaches the caller
    message = str(failed_relabel.error)
    assert "unpickl" in message.lower() or "checkpoint" in message, message[-2000:]
    # the committed stages before it are untouched
    assert failed_relabel.after == failed_relabel.before
    assert labeling.raw_folder(phase0.cfg, phase0.store, 0) == phase0.raw
    assert phase0.store.committed(labeling.labels_stage(0)) == phase0.labels


def test_rerun_after_failure_commits_one_attempt(phase1, failed_relabel):
    store, cfg = phase1.store, phase1.cfg
    assert labeling.raw_folder(cfg, store, 1) == phase1.raw
    # the rerun committed one entry (keyed by the good classifier), one attempt per shard, and
    # one run marker; the failed run stays in its own, never committed entry (keyed by the
    # corrupt classifier)
    marker = store.marker(labeling.raw_stage(1))
    cache = score_cache.cache_store(cfg)
    assert attempts(cache, marker["cache_entry"]) == {posixpath.basename(phase1.raw)}
    for shard in range(marker["shards"]):
        stage = shard_stage(shard, marker["cache_entry"])
        assert attempts(cache, stage) == {posixpath.basename(cache.committed(stage))}
    for stage in (labeling.raw_stage(0), labeling.raw_stage(1), labeling.labels_stage(0),
                  labeling.labels_stage(1)):
        assert attempts(store, stage) == {posixpath.basename(store.committed(stage))}
    marker = store.marker(labeling.raw_stage(1))
    assert (marker["images"], marker["errors"]) == (N_IMAGES, 0)


def test_round1_labels_layout_in_s3(phase1, corpus):
    table, summary = _check_labels_stage(phase1.store, phase1.cfg, 1, phase1.labels,
                                         [r[0] for r in corpus.records])
    # every image was scored on views around its CAM boxes: views_per_box per box
    raw = pads.dataset(score_cache.entry_files(phase1.store.fs, phase1.raw),
                       filesystem=phase1.store.fs, format="parquet").to_table()
    views = raw.column("views").to_pylist()
    assert all(v >= phase1.cfg.relabel.views_per_box and v % phase1.cfg.relabel.views_per_box == 0
               for v in views)


def test_round1_matches_the_single_process_reference(phase1, reference1):
    ids, local, _ = labeling.read_raw(phase1.cfg, phase1.store, 1)
    expected_local = _by_id(reference1.ids, reference1.local)
    np.testing.assert_allclose(local, np.stack([expected_local[i] for i in ids]), atol=1e-5)
    got = dict(zip(*labeling.read_labels(phase1.store, 1)))
    np.testing.assert_allclose(np.stack([got[i] for i in reference1.ids]),
                               reference1.labels1.numpy(), atol=1e-5)
    # the fusion moved the labels (alpha < 1): round 1 is not a copy of round 0
    round0 = dict(zip(*labeling.read_labels(phase1.store, 0)))
    assert not np.allclose(np.stack([got[i] for i in reference1.ids]),
                           np.stack([round0[i] for i in reference1.ids]))


def test_rerun_of_committed_stages_does_no_work(phase1, monkeypatch):
    cfg, store = phase1.cfg, phase1.store
    before = tree(store.fs, store.root)
    markers = {s: store.marker(s) for s in (labeling.raw_stage(0), labeling.labels_stage(0),
                                            labeling.raw_stage(1), labeling.labels_stage(1))}

    def no_work(*args, **kwargs):
        raise AssertionError("a committed stage was recomputed")

    monkeypatch.setattr(labeling, "write_parquet_rows", no_work)
    for name in ("run_shards", "_score_into_cache"):
        monkeypatch.setattr(score_cache, name, no_work)
    # a fresh handle on the same run, as a restarted job would open it
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    run_to_round(cfg, store, 1, b"unused: round 1 is committed")
    assert tree(store.fs, store.root) == before
    assert {s: store.marker(s) for s in markers} == markers
