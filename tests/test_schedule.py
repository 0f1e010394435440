"""The training schedule around relabel rounds and the held-out split (no Ray)."""

from __future__ import annotations

import pytest

from ccd_ray.config import ConfigError
from ccd_ray.method.schedule import Segment, is_holdout, schedule


def test_schedule_relabels_after_warmup_then_once_per_epoch(make_config):
    cfg = make_config("train.epochs=10", "train.warmup_epochs=2", "relabel.rounds=3")
    assert schedule(cfg) == [Segment(0, 0, (0, 2)), Segment(1, 1, (2, 3)),
                             Segment(2, 2, (3, 4)), Segment(3, 3, (4, 10))]


def test_schedule_without_relabel_trains_on_initial_labels(make_config):
    cfg = make_config("train.epochs=3", "train.warmup_epochs=0", "relabel.rounds=0")
    assert schedule(cfg) == [Segment(0, 0, (0, 3))]


def test_rounds_that_do_not_fit_the_epochs_are_refused(make_config):
    with pytest.raises(ConfigError, match="warmup_epochs \\+ relabel.rounds"):
        make_config("train.epochs=3", "train.warmup_epochs=2", "relabel.rounds=2")


def test_holdout_split_is_stable_and_close_to_the_fraction():
    ids = [f"img-{i}" for i in range(4000)]
    held = [i for i in ids if is_holdout(i, 0.2, seed=0)]
    assert held == [i for i in ids if is_holdout(i, 0.2, seed=0)]
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held != [i for i in ids if is_holdout(i, 0.2, seed=1)]
    assert not any(is_holdout(i, 0.0, seed=0) for i in ids)


def test_random_view_source_places_as_many_views_without_the_cams(make_config):
    import numpy as np
    import torch

    from ccd_ray.method.scoring import guided_boxes

    cfg = make_config("relabel.view_source=random", "relabel.views_per_box=3")
    cams = torch.zeros(len(cfg.classes.names), 4, 4)
    boxes = guided_boxes(cams, [0, 2], 40, 60, "img", 1, cfg)
    assert boxes.shape == (6, 4)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 60) and np.all(boxes[:, 3] <= 40)
    again = guided_boxes(torch.rand_like(cams), [0, 2], 40, 60, "img", 1, cfg)
    np.testing.assert_array_equal(boxes, again)  # the CAMs play no part


def test_ground_truth_targets_need_a_labeled_corpus(make_config, tmp_path):
    from PIL import Image

    from ccd_ray.stages.pipeline import RayExecutor

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    cfg = make_config("train.targets=ground_truth", f"data.corpus_uri={tmp_path}")
    with pytest.raises(ConfigError, match="no ground-truth labels"):
        RayExecutor(cfg, None).ground_truth()


def test_ground_truth_targets_are_the_corpus_labels(make_config, tmp_path):
    import numpy as np
    import pyarrow.fs as pafs

    from ccd_ray.io.packing import synthetic_records, write_shards
    from ccd_ray.stages.pipeline import RayExecutor

    records = list(synthetic_records(6, 2, 32, 2))
    write_shards(iter(records), pafs.LocalFileSystem(), str(tmp_path / "corpus"), 3)
    names = sorted({n for _, _, labels in records for n in labels})
    cfg = make_config("train.targets=ground_truth", f"data.corpus_uri={tmp_path / 'corpus'}",
                      f"classes.names=[{', '.join(names)}]")
    ids, truth = RayExecutor(cfg, None).ground_truth()
    assert list(ids) == sorted(r[0] for r in records)
    by_id = dict(zip(ids, truth))
    for image_id, _, labels in records:
        np.testing.assert_array_equal(by_id[image_id], np.array([n in labels for n in names]))
