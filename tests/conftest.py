"""Shared fixtures: a config factory, a session-wide tiny CLIP teacher, tiny synthetic scenes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ccd_ray.config import ClassesConfig, TeacherConfig, load_config
from ccd_ray.synth.scenes import CLASS_NAMES, make_scenes
from ccd_ray.teacher import Teacher

# Four of the synthetic classes: enough for multi-label maths, few enough to stay fast.
TEST_CLASSES = CLASS_NAMES[:4]

# Everything small: tiny teacher, resnet18 at 32 px, few views, two epochs.
TINY_BASE = {
    "classes": {"names": list(TEST_CLASSES)},
    "teacher": {"model": "ccd-tiny-vit", "pretrained": None, "batch_size": 32},
    "initial": {"random_crops": 2},
    "relabel": {"rounds": 1, "views_per_box": 2, "cam_resolution": 16},
    "train": {"backbone": "resnet18", "image_size": 32, "epochs": 2, "warmup_epochs": 1,
              "batch_size": 4},
}


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """The test machine has two cores, often shared: with more than one intra-op thread a busy
    neighbour makes tiny forward passes up to 100x slower (spinning threads)."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def make_config():
    """make_config("labels.alpha=1", ...) -> a validated CCDConfig on top of the tiny base."""

    def factory(*overrides: str, base: dict | None = None):
        return load_config(overrides=list(overrides), base=base or TINY_BASE)

    return factory


def _load_tiny_teacher(names) -> Teacher:
    torch.manual_seed(1234)  # random weights, but the same ones in every session
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Teacher.from_config(TeacherConfig(model="ccd-tiny-vit", pretrained=None),
                                   ClassesConfig(names=list(names)))


@pytest.fixture(scope="session")
def tiny_teacher() -> Teacher:
    """The tiny random-weight open_clip teacher over TEST_CLASSES (loaded once per session)."""
    return _load_tiny_teacher(TEST_CLASSES)


@pytest.fixture(scope="session")
def tiny_scenes():
    """8 synthetic 64 px scenes as (uint8 3 x H x W tensors, ids)."""
    scenes = make_scenes(8, seed=3, size=64, class_names=list(TEST_CLASSES))
    images = [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).contiguous()
              for s in scenes]
    ids = [f"scene-{i:03d}" for i in range(len(scenes))]
    return images, ids
