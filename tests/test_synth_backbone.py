"""The synthetic world's ImageNet: the student backbone's pretraining classes never include a
target class, and the cached state dict loads through train.backbone_weights."""

from __future__ import annotations

import numpy as np
import torch

from ccd_ray.demo.pretrain_backbone import (
    BackboneSpec,
    pretrained_backbone,
    pretraining_batch,
    pretraining_styles,
)
from ccd_ray.demo.scenes import CLASS_STYLES
from ccd_ray.method.classifier import CAMClassifier

TINY = BackboneSpec(steps=2, batch_size=4, image_side=32, seed=5)


def test_pretraining_classes_are_the_other_shape_colour_pairs():
    styles = pretraining_styles()
    shapes = {shape for shape, _ in CLASS_STYLES.values()}
    colours = {rgb for _, rgb in CLASS_STYLES.values()}
    assert len(styles) == len(shapes) * len(colours) - len(CLASS_STYLES)
    assert not set(styles.values()) & set(CLASS_STYLES.values())
    assert not set(styles) & set(CLASS_STYLES)


def test_pretraining_batch_is_one_labeled_object_per_image():
    images, classes = pretraining_batch(np.random.default_rng(0), TINY, pretraining_styles())
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert classes.shape == (4,) and 0 <= int(classes.min()) and int(classes.max()) < 90


def test_backbone_is_trained_once_cached_and_loads_into_the_student(tmp_path):
    logs: list[str] = []
    path = pretrained_backbone(tmp_path, TINY, log=logs.append)
    assert any("training one" in line for line in logs)
    state = torch.load(path, weights_only=True)
    assert state and not any(k.startswith("fc.") for k in state)
    student = CAMClassifier("resnet18", 3, path)
    conv1 = dict(student.body.named_parameters())["0.weight"]
    assert torch.equal(conv1, state["conv1.weight"])
    logs.clear()
    assert pretrained_backbone(tmp_path, TINY, log=logs.append) == path
    assert logs == [], "a cached backbone was trained again"
