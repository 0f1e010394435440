"""The final stage's thresholds (stages.evaluate.thresholds_of): label-free for a CCD run, the
ground truth's own class counts for a run trained on the ground truth (the supervised bound)."""

from __future__ import annotations

import numpy as np

from ccd_ray.method.thresholds import class_thresholds, count_thresholds
from ccd_ray.stages.evaluate import ZeroShot, thresholds_of


def test_a_ground_truth_run_counts_its_labels_from_the_truth(make_config):
    rng = np.random.default_rng(0)
    ids = np.array([f"img-{i:03d}" for i in range(40)])
    scores = rng.random((40, 2)).astype(np.float32)
    zero_shot = ZeroShot(ids, rng.random((40, 2)).astype(np.float32))
    names = ["a", "b"]
    # class a on 30 images, b on 4: far from what Otsu's split of the zero-shot scores gives
    truth = {str(i): [n for n, on in zip(names, (k < 30, k % 13 == 0)) if on]
             for k, i in enumerate(ids)}
    base = ("classes.names=[a, b]", "labels.threshold_rule=count")
    pseudo = make_config(*base)
    bound = make_config(*base, "train.targets=ground_truth")
    np.testing.assert_array_equal(thresholds_of(bound, ids, scores, zero_shot, truth),
                                  count_thresholds(scores, np.array([30, 4])))
    labeled = (scores >= thresholds_of(bound, ids, scores, zero_shot, truth)).sum(axis=0)
    assert labeled.tolist() == [30, 4]
    # a CCD run never reads the truth, given or not
    expected = class_thresholds(scores, "count", 0.5, zero_shot.scores)
    np.testing.assert_array_equal(thresholds_of(pseudo, ids, scores, zero_shot, truth), expected)
    np.testing.assert_array_equal(thresholds_of(bound, ids, scores, zero_shot, None), expected)
