"""The single-process CCD loop on tiny synthetic scenes: shapes, ranges, determinism, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd_ray.method import labels as label_ops
from ccd_ray.method.reference import run_reference
from ccd_ray.method.views import crop_views, initial_boxes

from conftest import TEST_CLASSES

# 64 px student input: a 2 x 2 CAM grid, so the CAM boxes are not all the whole image
SMALL = ["train.image_size=64", "train.epochs=2", "train.warmup_epochs=1", "relabel.rounds=1",
         "initial.random_crops=2", "relabel.views_per_box=2", "relabel.cam_resolution=16"]


@pytest.fixture(scope="module")
def run(make_config, tiny_teacher, tiny_scenes):
    """run(*overrides) -> (cfg, ReferenceResult) of the reference on the 8 tiny scenes."""
    images, ids = tiny_scenes

    def go(*overrides):
        cfg = make_config(*SMALL, *overrides)
        return cfg, run_reference(cfg, images, ids, tiny_teacher)

    return go


@pytest.fixture(scope="module")
def baseline(run):
    return run()


def test_runs_and_produces_labels_per_round(baseline, tiny_scenes):
    cfg, result = baseline
    n, c = len(tiny_scenes[0]), len(TEST_CLASSES)
    assert len(result.labels) == 2
    for labels in result.labels:
        assert labels.shape == (n, c) and labels.dtype == torch.float32
        assert bool((labels >= 0).all()) and bool((labels <= 1).all())
        assert bool(torch.isfinite(labels).all())
    assert result.final_labels is result.labels[-1]
    assert len(result.local_raw) == 1 and result.local_raw[0].shape == (n, c)
    assert result.initial_raw.shape == (n, c) and result.bias.shape == (c,)
    assert [h["labels_round"] for h in result.history] == [0, 1]
    assert [h["epoch"] for h in result.history] == [0, 1]
    # the consistency term is off during warm-up and on after it
    assert result.history[0]["consistency"] == 0.0
    assert result.history[1]["consistency"] > 0.0
    assert all(np.isfinite(h["loss"]) for h in result.history)


def test_labels_follow_from_the_raw_scores(baseline):
    cfg, result = baseline
    torch.testing.assert_close(result.labels[0],
                               label_ops.debias(result.initial_raw, result.bias, cfg.labels.gamma))
    local = label_ops.debias(result.local_raw[0], result.bias, cfg.labels.gamma)
    torch.testing.assert_close(result.labels[1],
                               label_ops.fuse(result.labels[0], local, cfg.labels.alpha))
    # relabelling changed something (alpha = 0.4 < 1)
    assert not torch.allclose(result.labels[1], result.labels[0])


def test_initial_scores_are_the_max_over_views(baseline, tiny_teacher, tiny_scenes):
    cfg, result = baseline
    images, ids = tiny_scenes
    for i in (0, 5):
        boxes = initial_boxes(images[i].shape[1], images[i].shape[2], cfg.initial.random_crops,
                              cfg.initial.crop_scale, cfg.seed, ids[i])
        assert len(boxes) == 1 + cfg.initial.random_crops
        views = crop_views(images[i], boxes, tiny_teacher.image_size, tiny_teacher.mean,
                           tiny_teacher.std)
        expected = tiny_teacher.score(views).max(dim=0).values
        torch.testing.assert_close(result.initial_raw[i], expected, rtol=1e-4, atol=1e-5)


def test_deterministic(baseline, run):
    _, first = baseline
    _, second = run()
    assert torch.equal(first.initial_raw, second.initial_raw)
    assert torch.equal(first.local_raw[0], second.local_raw[0])
    assert torch.equal(first.final_labels, second.final_labels)
    for a, b in zip(first.classifier.state_dict().values(),
                    second.classifier.state_dict().values()):
        assert torch.equal(a, b)


def test_seed_changes_the_run(baseline, run):
    _, first = baseline
    _, other = run("seed=1")
    assert not torch.equal(first.initial_raw, other.initial_raw)  # other random crops


def test_alpha_one_keeps_the_initial_labels(run):
    _, result = run("labels.alpha=1.0")
    assert len(result.labels) == 2
    assert torch.equal(result.labels[1], result.labels[0])
    # the relabel round still ran and its local scores differ from the kept labels
    assert not torch.allclose(result.local_raw[0], result.labels[0])


def test_no_relabel_rounds(run):
    _, result = run("relabel.rounds=0")
    assert len(result.labels) == 1 and result.local_raw == []
