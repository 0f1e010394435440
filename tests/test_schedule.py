"""The training schedule around relabel rounds and the held-out split (no Ray)."""

from __future__ import annotations

import pytest

from ccd_ray.config import ConfigError
from ccd_ray.pipeline import Segment, schedule
from ccd_ray.trainer import is_holdout


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
