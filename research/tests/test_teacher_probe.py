"""The teacher probe: view dependency and class bias measured from ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from ccd_ray.demo.scenes import Scene
from research.teacher_probe import class_bias, view_dependency


def _scene(labels: list[str]) -> Scene:
    return Scene(np.zeros((8, 8, 3), np.uint8), sorted(set(labels)),
                 [(0, 0, 4, 4)] * len(labels), labels)


def test_view_dependency_groups_by_object_count():
    names = ["a", "b", "c"]
    scenes = [_scene(["a"]), _scene(["a", "b"])]
    global_scores = np.array([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6]])
    crops = [np.array([[0.9, 0.05, 0.05]]), np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])]
    report = view_dependency(scenes, names, global_scores, crops)
    one, two = report["by_objects"][1], report["by_objects"][2]
    assert one["objects"] == 1 and one["mean_p_global"] == pytest.approx(0.8)
    assert two["objects"] == 2 and two["mean_p_global"] == pytest.approx(0.2)
    assert two["mean_p_crop"] == pytest.approx(0.75) and two["mean_p_crop_top1"] == 1.0
    assert two["mean_p_global_top1"] == 0.0


def test_class_bias_correlates_top1_rate_with_popularity():
    names = ["a", "b", "c"]
    scenes = [_scene(["a"]), _scene(["b"]), _scene(["c"]), _scene(["a", "b"])]
    # the teacher picks "a" whenever it can: a is the most popular in pretraining
    global_scores = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.5, 0.1, 0.4],
                              [0.8, 0.1, 0.1]])
    report = class_bias(scenes, names, global_scores, np.array([0.7, 0.2, 0.1]))
    rates = {row["class"]: row["top1_rate"] for row in report["classes"]}
    assert rates == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert report["rank_corr_top1_rate_vs_popularity"] > 0
