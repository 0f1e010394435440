"""Row-level resume of the teacher-scoring stages: a score-cache entry commits per corpus shard,
so a phase-1 stage whose driver dies after some shard commits redoes, on its rerun, only the
other shards, and its pooled scores equal an uninterrupted run's exactly. Plus, without Ray,
the entry's refusal of another corpus layout and the uncommit of error shards when the
stage's error rule fails."""

from __future__ import annotations

import posixpath
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import tree

from ccd_ray.io.packing import synthetic_records, write_shards
from ccd_ray.io.storage import MARKER, RunStore, filesystem_for
from ccd_ray.method.shards import ShardProgress
from ccd_ray.stages import labeling, score_cache
from ccd_ray.stages import shards as shard_stages
from ccd_ray.stages.pipeline import RayExecutor

CORPUS = "resume/corpus"
IMAGES, PER_SHARD = 24, 4
SHARDS = IMAGES // PER_SHARD
KILL_AFTER = 2  # shard commits before the driver "dies"


class Killed(Exception):
    """The test's stand-in for a driver killed between two shard commits."""


@pytest.fixture(scope="module")
def corpus(s3_config):
    cfg = s3_config(CORPUS)
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    write_shards(list(synthetic_records(IMAGES, seed=8, size=64, max_objects=2)), fs, root,
                 images_per_shard=PER_SHARD)
    return cfg


def _run(s3_config, s3_server, name: str):
    """A config and store of its own output URI, so it has its own score cache. One image per
    actor batch: every image's views then go through the teacher in a batch of the same
    shape in every run, so the scores can be compared bit for bit."""
    cfg = s3_config(CORPUS, f"data.output_uri=s3://{s3_server['bucket']}/{name}",
                    "compute.images_per_batch=1", f"run_id={name}")
    return SimpleNamespace(cfg=cfg, store=RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data),
                           cache=score_cache.cache_store(cfg))


def _shard_markers(cache, entry: str) -> dict[int, dict]:
    return {i: cache.marker(shard_stages.shard_stage(i, entry))
            for i in shard_stages.committed_shards(cache, entry)}


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_scoring_stage_rescores_only_the_uncommitted_shards(
        ray_session, corpus, s3_config, s3_server, monkeypatch, capsys):
    reference = _run(s3_config, s3_server, "resume-reference")
    ref_scores = RayExecutor(reference.cfg, reference.store).score_round(0, None)
    ref_marker = reference.store.marker(labeling.raw_stage(0))
    assert (ref_marker["shards"], ref_marker["shards_resumed"]) == (SHARDS, 0)
    assert ref_marker["images_run"] == IMAGES and ref_marker["teacher_passes_run"] > 0

    # the driver dies after KILL_AFTER shard commits: those stay, the entry is not committed
    run = _run(s3_config, s3_server, "resume-killed")
    real_commit = shard_stages.commit_shard
    committed_now: list[int] = []

    def commit_then_die(store, under, shard, attempt, progress):
        if len(committed_now) == KILL_AFTER:
            raise Killed("killed by the test")
        real_commit(store, under, shard, attempt, progress)
        committed_now.append(shard)

    monkeypatch.setattr(shard_stages, "commit_shard", commit_then_die)
    with pytest.raises(Killed):
        RayExecutor(run.cfg, run.store).score_round(0, None)
    entry = score_cache.stage_name(score_cache.initial_key(run.cfg))
    first = _shard_markers(run.cache, entry)
    assert sorted(first) == sorted(committed_now) and len(first) == KILL_AFTER
    assert run.cache.committed(entry) is None
    assert run.store.committed(labeling.raw_stage(0)) is None

    # the rerun scores only the other shards, and says so
    committed_now.clear()

    def commit_and_record(store, under, shard, attempt, progress):
        real_commit(store, under, shard, attempt, progress)
        committed_now.append(shard)

    monkeypatch.setattr(shard_stages, "commit_shard", commit_and_record)
    capsys.readouterr()
    scores = RayExecutor(run.cfg, run.store).score_round(0, None)
    line = [x for x in capsys.readouterr().out.splitlines() if "round-0/raw: done" in x]
    assert sorted(committed_now) == sorted(set(range(SHARDS)) - set(first))
    after = _shard_markers(run.cache, entry)
    assert {i: after[i] for i in first} == first  # the first run's shards were not redone
    marker = run.store.marker(labeling.raw_stage(0))
    assert (marker["shards"], marker["shards_resumed"]) == (SHARDS, KILL_AFTER)
    assert (marker["images"], marker["errors"]) == (IMAGES, 0)
    # the teacher's work counted is this run's only: the shards it committed
    assert marker["images_run"] == sum(after[i]["images"] for i in committed_now) < IMAGES
    now = sum(after[i]["teacher_passes"] for i in committed_now)
    assert marker["teacher_passes_run"] == now < ref_marker["teacher_passes_run"]
    assert marker["teacher_passes"] == ref_marker["teacher_passes"]
    assert len(line) == 1 and f"{now} teacher passes ({KILL_AFTER} of {SHARDS} shards resumed)" \
        in line[0], line

    # the pooled scores are the uninterrupted run's, bit for bit, each image once
    assert scores.ids.tolist() == ref_scores.ids.tolist() and len(scores.ids) == IMAGES
    np.testing.assert_array_equal(scores.raw, ref_scores.raw)
    # the entry lists exactly its committed shards' files; each shard kept one attempt
    folder = run.cache.committed(entry)
    listed = {posixpath.relpath(f, run.cache.path(entry))
              for f in score_cache.entry_files(run.cache.fs, folder)}
    assert listed == {posixpath.join(shard_stages.shard_stage(i), m["attempt"], f)
                      for i, m in after.items() for f in m["files"]}
    parquet = {f for f in tree(run.cache.fs, run.cache.path(entry)) if f.endswith(".parquet")}
    assert parquet == listed


def test_an_entry_refuses_to_resume_from_another_corpus_layout(tmp_path, make_config):
    store = RunStore.open(str(tmp_path), "score-cache", make_config().data)
    score_cache._check_layout(store, "initial-abc", {"shards": 3, "shards_sha256": "a" * 64})
    score_cache._check_layout(store, "initial-abc", {"shards": 3, "shards_sha256": "a" * 64})
    with pytest.raises(RuntimeError, match="another layout of the corpus"):
        score_cache._check_layout(store, "initial-abc", {"shards": 4, "shards_sha256": "b" * 64})


def test_a_failed_error_rule_uncommits_only_the_shards_with_errors(tmp_path, make_config):
    """So a rerun after their files are fixed scores them again instead of finding the same
    errors committed; the clean shards stay committed."""
    store = RunStore.open(str(tmp_path), "score-cache", make_config().data)
    clean = ShardProgress(2, rows=2, files=["views-a.parquet"])
    broken = ShardProgress(2, rows=2, errors=2, reasons={"not an image": 2},
                           files=["views-b.parquet"])
    for shard, progress in enumerate([clean, broken, clean]):
        shard_stages.commit_shard(store, "entry", shard, "attempt-x", progress)

    def rule(counts):
        assert counts["images"] == 6 and counts["errors_by_reason"] == {"not an image": 2}
        raise score_cache.TooManyErrors("2 of 6 failed")

    with pytest.raises(score_cache.TooManyErrors):
        shard_stages.shard_totals(store, "entry", 3, rule)
    assert shard_stages.committed_shards(store, "entry") == {0, 2}
    assert not (tmp_path / "score-cache" / "entry" / "shards" / "shard-000001" / MARKER).exists()
    markers, counts = shard_stages.shard_totals(store, "entry", 1, lambda c: None)
    assert counts["images"] == 2 and [m["files"] for m in markers] == [["views-a.parquet"]]
