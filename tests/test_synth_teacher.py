"""The synthetic world's teacher: pretraining data, loss, determinism and cache."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccd_ray.demo.pretrain_teacher import (
    SIGMOID_SPEC,
    PretrainSpec,
    caption_class,
    family_loss,
    multi_positive_clip_loss,
    multi_positive_siglip_loss,
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


def test_multi_positive_siglip_loss_is_open_clips_with_distinct_captions():
    from open_clip.loss import SigLipLoss

    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    ours = multi_positive_siglip_loss(image, text, torch.arange(6), scale, bias)
    theirs = SigLipLoss()(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale, bias)
    torch.testing.assert_close(ours, theirs)
    # two images of one caption: its text is one column, positive for both images
    same = torch.tensor([2, 0, 2, 3])
    text_dup = torch.stack([text[2], text[0], text[2], text[3]])
    ours = multi_positive_siglip_loss(image[:4], text_dup, same, scale, bias)
    distinct = F.normalize(torch.stack([text[0], text[2], text[3]]), dim=-1)  # captions 0, 2, 3
    logits = scale * F.normalize(image[:4], dim=-1) @ distinct.T + bias
    labels = -torch.ones(4, 3)
    labels[[0, 1, 2, 3], [1, 0, 1, 2]] = 1
    torch.testing.assert_close(ours, -F.logsigmoid(labels * logits).sum() / 4)


def test_family_loss_follows_the_models_logit_bias():
    from ccd_ray.config import TeacherConfig
    from ccd_ray.method.teacher import load_clip

    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g)
    captions = torch.tensor([0, 1, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip, *_ = load_clip(TeacherConfig(model="ccd-tiny-vit"))
        sigmoid, *_ = load_clip(TeacherConfig(model="ccd-tiny-sigmoid"))
    assert clip.logit_bias is None and sigmoid.logit_bias is not None
    torch.testing.assert_close(
        family_loss(clip, image, text, captions),
        multi_positive_clip_loss(image, text, captions, clip.logit_scale.exp()))
    torch.testing.assert_close(
        family_loss(sigmoid, image, text, captions),
        multi_positive_siglip_loss(image, text, captions, sigmoid.logit_scale.exp(),
                                   sigmoid.logit_bias))


def test_sigmoid_teacher_trains_its_bias_and_scores_with_a_sigmoid(tmp_path):
    from safetensors.torch import load_file

    from ccd_ray.config import ClassesConfig, TeacherConfig
    from ccd_ray.method.teacher import Teacher, open_clip_with_configs

    tiny = dataclasses.replace(SIGMOID_SPEC, steps=2, batch_size=4, seed=3)
    assert tiny.key() != TINY.key()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = pretrained_teacher(tmp_path, tiny, log=lambda _: None)
        teacher = Teacher.from_config(TeacherConfig(model=spec), ClassesConfig(CLASS_NAMES[:4]))
    weights = load_file(f"{spec.split(':', 1)[1]}/open_clip_model.safetensors")
    initial = open_clip_with_configs().get_model_config("ccd-tiny-sigmoid")["init_logit_bias"]
    assert float(weights["logit_bias"]) != initial, "the bias was not trained"
    assert teacher.scoring == "sigmoid"
    assert teacher.logit_bias == pytest.approx(float(weights["logit_bias"]))
    assert teacher.logit_scale == pytest.approx(math.exp(float(weights["logit_scale"])), rel=1e-6)
