"""The teacher-scoring measurement: label quality of raw scores and their round-0 labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd_ray.config import load_config
from ccd_ray.demo.scenes import CLASS_NAMES
from research.teacher_scoring import label_quality, world_corpus

NAMES = [f"classes.names={list(CLASS_NAMES[:3])}"]


def test_label_quality_scores_against_truth_and_counts_clamped_labels():
    truth = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=np.int8)
    cfg = load_config(overrides=NAMES + ["labels.gamma=0"])
    perfect = label_quality(torch.from_numpy(truth.astype(np.float32) * 0.9), truth, cfg)
    assert perfect["raw_mAP"] == pytest.approx(100) and perfect["pseudo_CF1"] == pytest.approx(100)
    assert perfect["pseudo_labels_per_image"] == perfect["truth_labels_per_image"] == 1.5
    assert perfect["pseudo_at_1"] == 0.0
    # a debias that divides by a bias below 1 pushes 0.9 past 1: clamped, counted
    raw = torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.9, 0.9], [0.9, 0.9, 0.0], [0.0, 0.0, 0.4]])
    debiased = label_quality(raw, truth, load_config(
        overrides=NAMES + ["labels.gamma=1", "labels.debias=divide"]))
    # positives per class 2, 2, 1 -> bias 1.2, 1.2, 0.6: class 2's 0.9 becomes 1.0 (1 of 12)
    assert debiased["pseudo_at_1"] == pytest.approx(1 / 12)
    assert debiased["raw_CF1"] < 100  # class 2's 0.4 misses a true label
    assert debiased["pseudo_CF1"] == pytest.approx(100)  # 0.4 / 0.6 reaches the threshold
    assert debiased["divide_mAP"] == debiased["pseudo_mAP"]
    assert debiased["logit_shift_mAP"] == pytest.approx(debiased["raw_mAP"])  # ranking kept


def test_world_corpus_is_the_embedded_corpus_decoded():
    images, ids, truth = world_corpus(3)
    assert len(images) == len(ids) == 3 and truth.shape == (3, len(CLASS_NAMES))
    assert images[0].dtype == torch.uint8 and images[0].shape[0] == 3
    assert ids[0].startswith("synth-7-") and truth.sum(axis=1).min() >= 1
