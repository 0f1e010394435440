"""The synthetic world's teacher: pretraining data, loss, determinism and cache."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from ccd_ray.demo.pretrain_teacher import (
    PretrainSpec,
    caption_class,
    multi_positive_clip_loss,
    popularity,
    pretrained_teacher,
    pretraining_batch,
)
from ccd_ray.demo.scenes import CLASS_NAMES

TINY = PretrainSpec(steps=2, batch_size=4, seed=3)


def test_popularity_is_a_seeded_long_tail():
    probs = popularity(TINY, CLASS_NAMES)
    assert probs.sum() == pytest.approx(1) and np.all(probs > 0)
    ordered = np.sort(probs)[::-1]
    assert ordered[0] / ordered[-1] == pytest.approx(len(CLASS_NAMES) ** TINY.zipf_exponent)
    assert np.argmax(probs) == np.argmax(popularity(TINY, CLASS_NAMES))
    other = popularity(dataclasses.replace(TINY, seed=4), CLASS_NAMES)
    assert not np.array_equal(probs, other), "popularity order does not depend on the seed"


def test_caption_names_a_present_class_in_proportion_to_popularity():
    probs = np.array([0.7, 0.2, 0.1])
    rng = np.random.default_rng(0)
    picks = [caption_class([0, 2], probs, rng) for _ in range(4000)]
    assert set(picks) == {0, 2}
    assert np.mean(np.array(picks) == 0) == pytest.approx(0.7 / 0.8, abs=0.03)


def test_pretraining_batch_captions_present_classes():
    rng = np.random.default_rng(1)
    images, captions = pretraining_batch(rng, TINY, CLASS_NAMES, popularity(TINY, CLASS_NAMES))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.uint8
    assert captions.shape == (4,) and captions.max() < len(CLASS_NAMES)


def test_multi_positive_loss_treats_equal_captions_as_positives():
    features = torch.eye(4)
    text = torch.eye(4)
    captions = torch.tensor([0, 1, 2, 3])
    low = multi_positive_clip_loss(features, text, captions, torch.tensor(50.0))
    assert float(low) < 1e-6
    # two images with the same caption: both copies of the text are targets (half each), so
    # the perfect embedding reaches the loss's floor, the targets' entropy (log 2 on 2 of 4
    # rows, both directions)
    same = torch.tensor([0, 0, 2, 3])
    text_dup = torch.stack([text[0], text[0], text[2], text[3]])
    loss_dup = multi_positive_clip_loss(text_dup, text_dup, same, torch.tensor(50.0))
    assert float(loss_dup) == pytest.approx(math.log(2) / 2, abs=1e-6)
    wrong = multi_positive_clip_loss(features, text.flip(0), captions, torch.tensor(50.0))
    assert float(wrong) > 10


def test_pretrained_teacher_is_deterministic_and_cached(tmp_path):
    from safetensors.torch import load_file

    logs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pretrained_teacher(tmp_path / "a", TINY, log=logs.append)
        second = pretrained_teacher(tmp_path / "b", TINY, log=logs.append)
        trained_twice = len(logs)
        again = pretrained_teacher(tmp_path / "a", TINY, log=logs.append)
    assert again == first and len(logs) == trained_twice, "a cached teacher was retrained"
    weights = [load_file(f"{spec.split(':', 1)[1]}/open_clip_model.safetensors")
               for spec in (first, second)]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
    assert TINY.key() in first and not list((tmp_path / "a").glob("*.partial"))
