"""The round loop with the in-process executor on tiny synthetic scenes: shapes, ranges,
determinism, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TEST_CLASSES

from ccd_ray.method import labels as label_ops
from ccd_ray.method.local import run_in_process
from ccd_ray.method.views import crop_views, initial_boxes

# 64 px student input: a 2 x 2 CAM grid, so the CAM boxes are not all the whole image
SMALL = ["train.image_size=64", "train.epochs=2", "train.warmup_epochs=1", "relabel.rounds=1",
         "initial.random_crops=2", "relabel.views_per_box=2", "relabel.cam_resolution=16"]


@pytest.fixture(scope="module")
def run(make_config, tiny_teacher, tiny_scenes):
    """run(*overrides) -> (cfg, RoundsResult, executor) of the loop on the 8 tiny scenes."""
    images, ids = tiny_scenes

    def go(*overrides):
        cfg = make_config(*SMALL, *overrides, "train.holdout_fraction=0")
        return (cfg, *run_in_process(cfg, images, ids, tiny_teacher))

    return go


@pytest.fixture(scope="module")
def baseline(run):
    return run()


def test_runs_and_produces_labels_per_round(baseline, tiny_scenes):
    cfg, result, executor = baseline
    n, c = len(tiny_scenes[0]), len(TEST_CLASSES)
    assert len(result.labels) == 2
    for labels in result.labels:
        assert labels.shape == (n, c) and labels.dtype == np.float32
        assert (labels >= 0).all() and (labels <= 1).all() and np.isfinite(labels).all()
    assert result.final_labels is result.labels[-1]
    assert len(result.raw) == 2 and result.raw[1].shape == (n, c)
    assert result.raw[0].shape == (n, c) and result.bias.shape == (c,)
    assert [executor.published[r] is result.labels[r] for r in (0, 1)] == [True, True]
    history = executor.history
    assert [h["labels_round"] for h in history] == [0, 1]
    assert [h["epoch"] for h in history] == [0, 1]
    # every training image in one batch per epoch (batch_size 4: two batches of 4)
    assert [h["batches"] for h in history] == [2, 2]
    # the consistency term is off during warm-up and on after it
    assert history[0]["consistency"] == 0.0
    assert history[1]["consistency"] > 0.0
    assert all(np.isfinite(h["loss"]) for h in history)


def test_labels_follow_from_the_raw_scores(baseline):
    cfg, result, _ = baseline
    raw0, raw1 = (torch.from_numpy(r) for r in result.raw)
    bias = torch.from_numpy(result.bias)
    labels0 = label_ops.debias(raw0, bias, cfg.labels.gamma, cfg.labels.debias)
    torch.testing.assert_close(torch.from_numpy(result.labels[0]), labels0)
    local = label_ops.debias(raw1, bias, cfg.labels.gamma, cfg.labels.debias)
    torch.testing.assert_close(torch.from_numpy(result.labels[1]),
                               label_ops.fuse(labels0, local, cfg.labels.alpha))
    # relabelling changed something (alpha = 0.4 < 1)
    assert not np.allclose(result.labels[1], result.labels[0])


def test_initial_scores_are_the_max_over_views(baseline, tiny_teacher, tiny_scenes):
    cfg, result, _ = baseline
    images, ids = tiny_scenes
    for i in (0, 5):
        boxes = initial_boxes(images[i].shape[1], images[i].shape[2], cfg.initial.random_crops,
                              cfg.initial.crop_scale, cfg.seed, ids[i])
        assert len(boxes) == 1 + cfg.initial.random_crops
        views = crop_views(images[i], boxes, tiny_teacher.image_size, tiny_teacher.mean,
                           tiny_teacher.std)
        expected = tiny_teacher.score(views).max(dim=0).values
        torch.testing.assert_close(torch.from_numpy(result.raw[0][i]), expected, rtol=1e-4,
                                   atol=1e-5)


def test_deterministic(baseline, run):
    _, first, _ = baseline
    _, second, _ = run()
    for a, b in zip(first.raw + first.labels, second.raw + second.labels):
        assert np.array_equal(a, b)
    for a, b in zip(first.trained.model.state_dict().values(),
                    second.trained.model.state_dict().values()):
        assert torch.equal(a, b)


def test_seed_changes_the_run(baseline, run):
    _, first, _ = baseline
    _, other, _ = run("seed=1")
    assert not np.array_equal(first.raw[0], other.raw[0])  # other random crops


def test_alpha_one_keeps_the_initial_labels(run):
    _, result, _ = run("labels.alpha=1.0")
    assert len(result.labels) == 2
    assert np.array_equal(result.labels[1], result.labels[0])
    # the relabel round still ran and its local scores differ from the kept labels
    assert not np.allclose(result.raw[1], result.labels[0])


def test_no_relabel_rounds(run):
    _, result, executor = run("relabel.rounds=0")
    assert len(result.labels) == 1 and len(result.raw) == 1 and list(executor.scored) == [0]
