"""The Ray Data actor classes called directly (no Ray) on pyarrow batches mixing good rows,
rows that fail to decode and rows that arrive with a read error: every view's scores and
boxes, errors carried with their stage, phase 2's CAM boxes and teacher on one decode."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import ZOO_MAX_PIXELS, image_zoo, make_classifier

from ccd_ray.io.corpus import ROW_SCHEMA, UNREADABLE_SHARD
from ccd_ray.io.decode import decode_image
from ccd_ray.method.scoring import (
    classifier_outputs,
    initial_scores,
    phase1_boxes,
    relabel_boxes,
    score_boxes,
)
from ccd_ray.stages.actors import (
    VIEW_SCHEMA,
    ClassifierLoadError,
    GuidedViewScorer,
    InitialViewScorer,
)

ACTOR_CONFIG = ["train.image_size=64", "initial.random_crops=2", "relabel.views_per_box=2",
                f"data.max_image_pixels={ZOO_MAX_PIXELS}", "compute.device=cpu"]
READ_ERROR = f"{UNREADABLE_SHARD}: OSError: gone"


@pytest.fixture(scope="module")
def cfg(make_config):
    return make_config(*ACTOR_CONFIG)


@pytest.fixture(scope="module")
def batch():
    """Reader rows (image_id, image, error): the zoo plus one shard the reader could not open."""
    zoo = image_zoo()
    ids = [z[0] for z in zoo] + ["bucket/corpus/x.parquet"]
    return pa.Table.from_pydict({"image_id": ids, "image": [z[1] for z in zoo] + [None],
                                 "error": [None] * len(zoo) + [READ_ERROR]}, schema=ROW_SCHEMA)


@pytest.fixture(scope="module")
def expected():
    """image_id -> (error stage, error prefix), None for the rows that must be scored."""
    out = {name: (("decode", reason) if reason else None) for name, _, reason in image_zoo()}
    out["bucket/corpus/x.parquet"] = ("read", READ_ERROR)
    return out


@pytest.fixture(scope="module")
def initial_scorer(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random teacher weights
        return InitialViewScorer(cfg.to_dict())


def _check_errors(out: pa.Table, expected) -> list[int]:
    """Error columns as expected; returns the indices of the good rows."""
    good = []
    for i, row in enumerate(out.to_pylist()):
        want = expected[row["image_id"]]
        if want is None:
            assert row["error"] is None and row["error_stage"] is None, row["image_id"]
            good.append(i)
        else:
            assert row["error_stage"] == want[0], row["image_id"]
            assert row["error"].startswith(want[1]), (row["image_id"], row["error"])
    return good


def _decoded(batch: pa.Table, rows: list[int], cfg) -> list[torch.Tensor]:
    images = batch.column("image").to_pylist()
    return [torch.from_numpy(decode_image(images[i], cfg.data.max_image_pixels,
                                          cfg.data.max_image_side).image) for i in rows]


def _pooled(out: pa.Table, rows: list[int], num_classes: int) -> np.ndarray:
    """Max over each row's views, as the label step pools them; the stored pooled columns
    (max and mean, null on failed rows) must say the same as the per-view scores."""
    per_view = [np.asarray(out.column("view_scores")[i].as_py()).reshape(-1, num_classes)
                for i in rows]
    for how, pool in (("max", np.max), ("mean", np.mean)):
        stored = out.column(f"{how}_scores").to_pylist()
        assert [i for i, v in enumerate(stored) if v is not None] == rows
        np.testing.assert_allclose([stored[i] for i in rows], [pool(v, axis=0) for v in per_view],
                                   rtol=1e-6, atol=1e-7)
    return np.stack([v.max(axis=0) for v in per_view])


def test_initial_scorer_scores_every_view_and_carries_errors(initial_scorer, batch, expected,
                                                            cfg):
    out = initial_scorer(batch)
    assert out.schema.equals(VIEW_SCHEMA) and out.num_rows == batch.num_rows
    assert out.column("image_id").to_pylist() == batch.column("image_id").to_pylist()
    good = _check_errors(out, expected)
    assert len(good) == sum(v is None for v in expected.values())

    views = out.column("views").to_pylist()
    scores = out.column("view_scores").to_pylist()
    for i in range(out.num_rows):
        if i in good:
            assert views[i] == 1 + cfg.initial.random_crops and len(scores[i]) == 4 * views[i]
        else:
            assert views[i] == 0 and scores[i] is None
    assert out.column("teacher_passes")[0].as_py() >= 1

    ids = [batch.column("image_id")[i].as_py() for i in good]
    images = _decoded(batch, good, cfg)
    want_boxes = phase1_boxes(images, ids, cfg)
    for i, w in zip(good, want_boxes):
        assert out.column("boxes")[i].as_py() == w.astype(np.int32).ravel().tolist()
        assert (out.column("height")[i].as_py(), out.column("width")[i].as_py()) == \
            tuple(images[good.index(i)].shape[1:])
    reference = initial_scores(initial_scorer.teacher, images, ids, cfg)
    np.testing.assert_allclose(_pooled(out, good, 4), reference.numpy(), atol=1e-6)
    # the same image scores the same wherever it sits in a batch (views seeded by image id)
    single = initial_scorer(batch.slice(0, 1))
    np.testing.assert_allclose(single.column("view_scores")[0].as_py(), scores[0], atol=1e-6)


def test_initial_scorer_on_a_batch_without_good_rows(initial_scorer, batch, expected):
    bad = batch.filter(pa.array([expected[i] is not None
                                 for i in batch.column("image_id").to_pylist()]))
    out = initial_scorer(bad)
    assert out.num_rows == bad.num_rows and out.column("view_scores").null_count == bad.num_rows
    assert out.column("max_scores").null_count == bad.num_rows
    assert _check_errors(out, expected) == []


def test_guided_scorer_boxes_and_scores_on_one_decode(cfg, batch, expected, monkeypatch):
    """Phase 2 in one actor: per good row the views around the classifier's CAM boxes (as the
    method computes them from the decoded image) and the teacher's scores of those views;
    errors carried with their stage; each image decoded once."""
    model, checkpoint = make_classifier(list(cfg.classes.names), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = GuidedViewScorer(cfg.to_dict(), lambda: checkpoint, 0.5, 1)

    import ccd_ray.stages.actors as actors

    decoded = []

    def counting_decode(data, *args, **kwargs):
        decoded.append(data)
        return decode_image(data, *args, **kwargs)

    monkeypatch.setattr(actors, "decode_image", counting_decode)
    out = scorer(batch)
    assert out.schema.equals(VIEW_SCHEMA) and out.num_rows == batch.num_rows
    good = _check_errors(out, expected)
    assert len(good) == sum(v is None for v in expected.values())
    arriving_good = [i for i, e in enumerate(batch.column("error").to_pylist()) if e is None]
    assert len(decoded) == len(arriving_good) == len(set(decoded))

    images = _decoded(batch, good, cfg)
    ids = [batch.column("image_id")[i].as_py() for i in good]
    probs, cams = classifier_outputs(model, images, cfg.train.image_size)
    want = relabel_boxes(probs, cams, images, ids, 0.5, 1, cfg)
    boxes, views = out.column("boxes").to_pylist(), out.column("views").to_pylist()
    for i in range(out.num_rows):
        if i in good:
            w = want[good.index(i)]
            assert boxes[i] == w.astype(np.int32).ravel().tolist() and views[i] == len(w)
            assert len(w) % cfg.relabel.views_per_box == 0
        else:
            assert boxes[i] is None and views[i] == 0
    assert out.column("teacher_passes")[0].as_py() >= 1
    reference = score_boxes(scorer.teacher, images, want, cfg)
    np.testing.assert_allclose(_pooled(out, good, 4), reference.numpy(), atol=1e-6)


def test_guided_scorer_names_a_corrupt_classifier_checkpoint(cfg):
    """A classifier that does not load is the run's own file: ClassifierLoadError, which the
    job does not report as the teacher failing to load."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ClassifierLoadError, match="round 1's classifier checkpoint"):
            GuidedViewScorer(cfg.to_dict(), lambda: b"not a checkpoint", 0.5, 1)
