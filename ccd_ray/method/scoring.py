"""Score views of a batch of images with the teacher: phase-1 views and CAM-guided views.

These are the per-batch units of work that both the in-process executor and the Ray Data
actors run, so the two produce the same numbers for the same images and seeds."""

from __future__ import annotations

import os

import numpy as np
import torch

from ccd_ray.config import CCDConfig
from ccd_ray.method import cam as cam_ops
from ccd_ray.method.classifier import CAMClassifier, prepare_images
from ccd_ray.method.labels import pool_views
from ccd_ray.method.teacher import Teacher
from ccd_ray.method.views import (
    box_guided_boxes,
    crop_views,
    initial_boxes,
    random_crop_boxes,
    rng_for,
)


def score_views(teacher: Teacher, images: list[torch.Tensor], boxes: list[np.ndarray],
                batch_size: int) -> list[np.ndarray]:
    """Every image's views cropped and scored in forward passes of at most batch_size,
    unpooled: a V_i x C array per image. The views are cropped on the teacher's device: on a
    GPU one CPU thread cropping ~1.6 ms a 224-px view (benchmarks/crop_views.py) would feed
    it far fewer views than it scores, and the uint8 image is ~V times smaller to move than
    its float views."""
    views = [crop_views(img.to(teacher.device), b, teacher.image_size, teacher.mean, teacher.std)
             for img, b in zip(images, boxes)]
    if not views:
        return []
    scores = teacher.score_batched(torch.cat(views), batch_size).numpy().astype(np.float32)
    return list(np.split(scores, np.cumsum([len(b) for b in boxes])[:-1]))


def score_boxes(teacher: Teacher, images: list[torch.Tensor], boxes: list[np.ndarray],
                cfg: CCDConfig) -> torch.Tensor:
    """score_views pooled per image (labels.aggregation) -> N x C."""
    per_image = score_views(teacher, images, boxes, cfg.teacher.batch_size)
    if not per_image:
        return torch.zeros(0, len(cfg.classes.names))
    return torch.from_numpy(pool_views(np.concatenate(per_image),
                                       np.array([len(v) for v in per_image]),
                                       cfg.labels.aggregation))


def phase1_boxes(images: list[torch.Tensor], image_ids: list[str], cfg: CCDConfig
                 ) -> list[np.ndarray]:
    """Phase 1's views of each image: the global view and initial.random_crops crops."""
    return [initial_boxes(img.shape[1], img.shape[2], cfg.initial.random_crops,
                          cfg.initial.crop_scale, cfg.seed, image_id)
            for img, image_id in zip(images, image_ids)]


def initial_scores(teacher: Teacher, images: list[torch.Tensor], image_ids: list[str],
                   cfg: CCDConfig) -> torch.Tensor:
    """Phase 1: global view + random crops of each image, pooled -> N x C raw scores."""
    return score_boxes(teacher, images, phase1_boxes(images, image_ids, cfg), cfg)


@torch.no_grad()
def classifier_outputs(model: CAMClassifier, images: list[torch.Tensor], image_size: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmoid probabilities N x C, CAMs N x C x h x w) of the classifier in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    logits, cams = model(prepare_images(images, image_size).to(device))
    return torch.sigmoid(logits).cpu(), cams.cpu()


def guided_boxes(cams: torch.Tensor, selected: list[int], height: int, width: int,
                 image_id: str, round_index: int, cfg: CCDConfig) -> np.ndarray:
    """All views of one image in a relabel round: views_per_box jittered views per CAM box."""
    rc = cfg.relabel
    rng = rng_for(cfg.seed, image_id, round_index)
    if rc.view_source == "random":  # the same number of views, placed without guidance
        return random_crop_boxes(height, width, len(selected) * rc.views_per_box,
                                 cfg.initial.crop_scale, rng)
    boxes = cam_ops.cam_boxes(cams, selected, height, width, rc.cam_threshold, rc.box_mode,
                              rc.cam_resolution)
    return np.concatenate([box_guided_boxes(b, height, width, rc.views_per_box, rc.box_offset,
                                            rc.box_jitter, rng) for b in boxes])


def relabel_boxes(probs: torch.Tensor, cams: torch.Tensor, images: list[torch.Tensor],
                  image_ids: list[str], threshold: float, round_index: int, cfg: CCDConfig
                  ) -> list[np.ndarray]:
    """Phase 2, classifier half: per image, the views around the CAM boxes of its selected
    classes (those whose probability reaches threshold, at least the top one)."""
    selected = cam_ops.select_classes(probs, threshold)
    return [guided_boxes(c, s, img.shape[1], img.shape[2], image_id, round_index, cfg)
            for img, image_id, c, s in zip(images, image_ids, cams, selected)]


def pick_device(cfg: CCDConfig) -> torch.device:
    """compute.device: 'cpu', 'cuda' (which must be there), or 'auto' (cuda when visible)."""
    if cfg.compute.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "compute.device is 'cuda' but this process sees no CUDA device (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); run on a GPU "
            "node with compute.gpus_per_actor > 0, or set compute.device to auto or cpu")
    if cfg.compute.device == "cuda" or (cfg.compute.device == "auto"
                                        and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
