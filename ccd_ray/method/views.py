"""Views of an image for the teacher: the global view, random crops and box-guided crops.

Boxes are integer pixel rectangles `(x0, y0, x1, y1)` with x0/y0 inclusive and x1/y1
exclusive, always inside the image and at least one pixel wide and high.

Every crop is letterboxed: scaled so its long side equals the teacher's input side, which
keeps its aspect ratio, then centred on a square canvas whose padding is the normalisation
mean (zero after normalisation). Nothing of the crop is cut away, unlike a centre crop,
which would drop the edges of a box around an object.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F


def rng_for(seed: int, image_id: str, round_index: int) -> np.random.Generator:
    """A generator that depends only on (seed, image_id, round): the same on any actor or retry."""
    digest = hashlib.sha256(f"{seed}\x1f{image_id}\x1f{round_index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def global_box(height: int, width: int) -> np.ndarray:
    return np.array([[0, 0, width, height]], dtype=np.int64)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Round float boxes outward, clip them to the image and make each at least 1x1 pixel."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(boxes[:, 0]), 0, width - 1)
    y0 = np.clip(np.floor(boxes[:, 1]), 0, height - 1)
    x1 = np.clip(np.ceil(boxes[:, 2]), x0 + 1, width)
    y1 = np.clip(np.ceil(boxes[:, 3]), y0 + 1, height)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def random_crop_boxes(height: int, width: int, count: int, scale_range: tuple[float, float],
                      rng: np.random.Generator) -> np.ndarray:
    """count crops covering a uniform fraction of the image area in scale_range, aspect 3:4..4:3."""
    if count == 0:
        return np.zeros((0, 4), dtype=np.int64)
    area = rng.uniform(scale_range[0], scale_range[1], count) * height * width
    log_ratio = rng.uniform(np.log(3 / 4), np.log(4 / 3), count)
    crop_w = np.clip(np.sqrt(area * np.exp(log_ratio)), 1, width)
    crop_h = np.clip(np.sqrt(area / np.exp(log_ratio)), 1, height)
    x0 = rng.uniform(0, 1, count) * (width - crop_w)
    y0 = rng.uniform(0, 1, count) * (height - crop_h)
    return clip_boxes(np.stack([x0, y0, x0 + crop_w, y0 + crop_h], axis=1), height, width)


def box_guided_boxes(box: np.ndarray, height: int, width: int, count: int, offset: float,
                     jitter: float, rng: np.random.Generator) -> np.ndarray:
    """count views around box: the box widened by offset (fraction of the long side) first,
    then count-1 copies whose centre and sides are jittered by up to jitter of the box side."""
    pad = offset * max(height, width)
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    widened = np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad])
    views = [widened]
    if count > 1:
        bw, bh = widened[2] - widened[0], widened[3] - widened[1]
        cx, cy = (widened[0] + widened[2]) / 2, (widened[1] + widened[3]) / 2
        shift = rng.uniform(-jitter, jitter, (count - 1, 2)) * [bw, bh]
        scale = rng.uniform(1 - jitter, 1 + jitter, (count - 1, 2)) * [bw, bh] / 2
        centres = np.array([cx, cy]) + shift
        views.extend(np.concatenate([centres - scale, centres + scale], axis=1))
    return clip_boxes(np.stack(views), height, width)


def letterbox(crop: torch.Tensor, size: int) -> torch.Tensor:
    """3 x h x w float -> 3 x size x size: long side scaled to size, centred, zero-padded."""
    _, h, w = crop.shape
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(crop[None], size=(new_h, new_w), mode="bilinear",
                            antialias=True, align_corners=False)[0]
    top, left = (size - new_h) // 2, (size - new_w) // 2
    return F.pad(resized, (left, size - new_w - left, top, size - new_h - top))


def crop_views(image: torch.Tensor, boxes: np.ndarray, size: int, mean: tuple[float, ...],
               std: tuple[float, ...]) -> torch.Tensor:
    """image: 3 x H x W uint8; boxes: K x 4 -> K x 3 x size x size, normalised, letterboxed,
    on the image's device."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a 3 x H x W uint8 tensor, got {image.dtype} "
                         f"{tuple(image.shape)}")
    _, height, width = image.shape
    boxes = clip_boxes(boxes, height, width)
    # on the image's device: score_views hands the teacher's device the uint8 image, so on a
    # GPU the crops run there and only the image's bytes cross the bus, not its float views
    mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    normalised = (image.float() / 255.0 - mean_t) / std_t
    views = [letterbox(normalised[:, y0:y1, x0:x1], size) for x0, y0, x1, y1 in boxes.tolist()]
    if not views:
        return torch.zeros(0, 3, size, size, device=image.device)
    return torch.stack(views)


def initial_boxes(height: int, width: int, random_crops: int, crop_scale: tuple[float, float],
                  seed: int, image_id: str) -> np.ndarray:
    """Phase-1 views of one image: the global view first, then its random crops (round 0)."""
    rng = rng_for(seed, image_id, 0)
    return np.concatenate([global_box(height, width),
                           random_crop_boxes(height, width, random_crops, crop_scale, rng)])
