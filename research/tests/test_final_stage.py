"""research/final_stage.py replays the final stage on saved score matrices."""

from __future__ import annotations

import numpy as np
import pytest

from research.final_stage import replay


def test_replay_measures_each_source_against_the_zero_shot_labels(tmp_path):
    rng = np.random.default_rng(0)
    truth = (rng.random((60, 3)) < 0.4).astype(np.int8)
    raw = np.clip(truth * 0.3 + rng.random((60, 3)) * 0.7, 0, 1).astype(np.float32)
    labels1 = np.clip(truth * 0.6 + rng.random((60, 3)) * 0.4, 0, 1).astype(np.float32)
    path = tmp_path / "scores.npz"
    np.savez(path, truth=truth, holdout=np.arange(60) % 4 == 0, raw0=raw, labels0=raw,
             labels1=labels1, classifier=truth.astype(np.float32))
    gains = replay(path)
    # the classifier here is the truth itself: its labels are perfect, the zero-shot's are not
    mAP_gain, _ = gains[("classifier", 0.4, "count")]
    assert mAP_gain > 0
    from ccd_ray.method.metrics import mean_average_precision

    train = np.arange(60) % 4 != 0
    expected = 100 * (mean_average_precision(labels1[train], truth[train])
                      - mean_average_precision(raw[train], truth[train]))
    assert gains[("pseudo", 0.4, "otsu")][0] == pytest.approx(expected)
