"""One sweep trial in one process (no Ray): labels re-derived from cached teacher scores run
no CLIP forward pass, and equal a trial that scores every view itself wherever the cache is
documented as exact (alpha changes, and the base values)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd_ray.method import labels as label_ops
from ccd_ray.method.local import CachedScores, LocalExecutor, TeacherScores, TrainingInputs
from ccd_ray.method.rounds import run_rounds
from ccd_ray.method.teacher import Teacher
from ccd_ray.sweep.spec import apply_params
from ccd_ray.sweep.trial import TrialData, proxy_targets, run_trial


@pytest.fixture(scope="module")
def base_cfg(make_config):
    return make_config("train.image_size=32", "train.epochs=2", "train.warmup_epochs=1",
                       "train.batch_size=3", "labels.gamma=1.0", "labels.alpha=0.4",
                       "train.beta=1.0")


@pytest.fixture(scope="module")
def data(tiny_scenes, base_cfg):
    images, ids = tiny_scenes
    inputs = TrainingInputs.from_images(ids, images, base_cfg)
    inputs.holdout = np.arange(len(ids)) >= 6  # the last two are held out
    truth = np.zeros((2, 4), np.int8)
    truth[0, 0] = truth[1, 1] = truth[1, 2] = 1
    return TrialData(class_names=list(base_cfg.classes.names), ids=ids, inputs=inputs,
                     proxy_rows=np.arange(6, 8), proxy_pixels=inputs.pixels[6:], images=images,
                     val_pixels=inputs.pixels[6:], val_truth=truth)


@pytest.fixture(scope="module")
def base_raw(data, base_cfg, tiny_teacher):
    """The base config's scores of rounds 0 and 1, as the sweep's base stage computes them."""
    source = TeacherScores(data.images, data.ids, lambda: tiny_teacher)
    result = run_rounds(base_cfg, LocalExecutor(base_cfg, data.ids, source, data.inputs),
                        stop_at_round=base_cfg.relabel.rounds)
    assert len(result.raw) == base_cfg.relabel.rounds + 1
    return result.raw


def _cached(data, raw):
    return TrialData(**{**data.__dict__, "raw": raw, "images": None})


def _in_process(cfg, data, teacher, reports=None):
    return run_trial(cfg, data, TeacherScores(data.images, data.ids, lambda: teacher),
                     (reports.append if reports is not None else lambda m: None), "val_mAP")


@pytest.fixture
def no_clip(monkeypatch):
    """Counts every teacher forward pass in this process (there must be none)."""
    calls = []

    def counted(self, views):
        calls.append(len(views))
        raise AssertionError("a CLIP forward pass ran in a cached trial")

    monkeypatch.setattr(Teacher, "score", counted)
    return calls


@pytest.mark.parametrize("params", [{"alpha": 0.1, "gamma": 0.3}, {"alpha": 0.9, "gamma": 2.0}])
def test_cached_trial_runs_no_clip_forward_pass(base_cfg, data, base_raw, no_clip, params):
    reports = []
    final = run_trial(apply_params(base_cfg, params), _cached(data, base_raw),
                      CachedScores(base_raw), reports.append, "val_mAP")
    assert no_clip == []
    assert final["teacher_forward_passes"] == 0
    assert [r["epoch"] for r in reports] == list(range(base_cfg.train.epochs))
    assert all(np.isfinite(r["val_mAP"]) and np.isfinite(r["proxy_mAP"]) for r in reports)
    assert final["objective"] == final["val_mAP"]


def test_in_process_trial_counts_its_forward_passes(base_cfg, data, tiny_teacher):
    before = tiny_teacher.forward_passes
    final = _in_process(base_cfg, data, tiny_teacher)
    # round 0 and round 1 over 8 images, batch_size 32 views: at least one pass each
    assert final["teacher_forward_passes"] - before >= 2


@pytest.mark.parametrize("params", [{}, {"alpha": 0.1, "beta": 0.2}])
def test_cached_trial_is_exact_where_the_boxes_are_the_bases(base_cfg, data, base_raw,
                                                            tiny_teacher, params):
    """With one relabel round the boxes come from the warm-up classifier, which depends on
    gamma alone: a cached trial with the base's gamma equals a trial that scores itself."""
    cfg = apply_params(base_cfg, params)
    exact_reports, cached_reports = [], []
    _in_process(cfg, data, tiny_teacher, exact_reports)
    run_trial(cfg, _cached(data, base_raw), CachedScores(base_raw),
              cached_reports.append, "val_mAP")
    for exact, cached in zip(exact_reports, cached_reports, strict=True):
        for key in ("loss", "val_mAP", "proxy_mAP"):
            assert cached[key] == pytest.approx(exact[key], rel=1e-5, abs=1e-6), key


def test_round_labels_follow_the_method_math(base_cfg, base_raw):
    raw0, raw1 = base_raw
    cfg = apply_params(base_cfg, {"alpha": 0.25, "gamma": 0.5})
    bias = label_ops.bias_vector(label_ops.bias_partials(
        torch.from_numpy(raw0), cfg.labels.threshold, cfg.initial.entropy_threshold), "count")
    lc = cfg.labels
    labels0 = label_ops.round_labels(torch.from_numpy(raw0), None, bias, lc.gamma, lc.alpha,
                                        lc.debias)
    labels1 = label_ops.round_labels(torch.from_numpy(raw1), labels0, bias, lc.gamma, lc.alpha,
                                        lc.debias)
    assert lc.debias == "logit_shift"

    def shifted(raw):  # the odds of each class multiplied by bias^-gamma
        odds = raw.astype(np.float64) / (1 - raw) / bias.double().numpy() ** 0.5
        return odds / (1 + odds)

    expected0 = shifted(raw0)
    np.testing.assert_allclose(labels0, expected0, rtol=1e-5)
    expected1 = 0.25 * expected0 + 0.75 * shifted(raw1)
    np.testing.assert_allclose(labels1, expected1, rtol=1e-5)


def test_proxy_targets_ignore_alpha_and_gamma(base_raw):
    targets = proxy_targets(base_raw[-1], np.array([6, 7]), 0.5)
    assert targets.shape == (2, 4) and set(np.unique(targets)) <= {0, 1}
    scores = base_raw[-1][[6, 7]]
    expected = (scores >= 0.5) | (scores == scores.max(axis=1, keepdims=True))
    np.testing.assert_array_equal(targets, expected.astype(np.int8))
    assert targets.sum(axis=1).min() >= 1  # every image names at least its top class
