"""From the classifier's CAMs to the classes to relabel and one box per selected class."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def normalise_cams(cams: torch.Tensor) -> torch.Tensor:
    """C x h x w -> min-max normalised per class into [0, 1]; a constant map becomes all zeros."""
    flat = cams.float().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    normalised = torch.where(span > 0, (flat - low) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return normalised.view_as(cams)


def grid_shape(height: int, width: int, resolution: int) -> tuple[int, int]:
    """The grid a CAM is upsampled to: long side = resolution, the image's aspect kept."""
    scale = resolution / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def component_labels(mask: torch.Tensor) -> torch.Tensor:
    """h x w bool -> h x w int64 labels of 8-connected regions (0 = background).

    Each pixel starts with its own id and takes the largest id among its neighbours until
    nothing changes, so every region ends labelled by its largest pixel id."""
    h, w = mask.shape
    maskf = mask.double()
    labels = torch.arange(1, h * w + 1, dtype=torch.float64).view(1, 1, h, w) * maskf
    while True:
        grown = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1) * maskf
        if torch.equal(grown, labels):
            return labels[0, 0].long()
        labels = grown


def _box_of(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def largest_component_box(mask: torch.Tensor) -> np.ndarray | None:
    """Tight box (x0, y0, x1, y1), grid units, of the largest 8-connected region; None if empty.
    Among equally large regions the one reached first in row-major order wins."""
    if not bool(mask.any()):
        return None
    labels = component_labels(mask).numpy()
    ids, first_index, sizes = np.unique(labels[labels > 0], return_index=True, return_counts=True)
    flat_positions = np.flatnonzero(labels.ravel() > 0)[first_index]
    order = np.lexsort((flat_positions, -sizes))  # largest first, then earliest
    ys, xs = np.nonzero(labels == ids[order[0]])
    return _box_of(ys, xs)


def first_last_box(mask: torch.Tensor) -> np.ndarray | None:
    """The authors' box: spanned by the first and the last masked pixel in row-major order."""
    ys, xs = np.nonzero(mask.numpy())
    if len(ys) == 0:
        return None
    return _box_of(ys[[0, -1]], xs[[0, -1]])


def cam_boxes(cams: torch.Tensor, class_indices: list[int], height: int, width: int,
              threshold: float, mode: str, resolution: int) -> np.ndarray:
    """One box per selected class, in image pixels (len(class_indices) x 4, float).

    Each class's CAM is upsampled to a grid of the image's aspect (long side = resolution),
    min-max normalised and thresholded; a class whose map has no region above the threshold
    (a constant map) gets the whole image, so it is still looked at, globally."""
    if not class_indices:
        return np.zeros((0, 4))
    grid_h, grid_w = grid_shape(height, width, resolution)
    maps = F.interpolate(cams[class_indices][None].float(), size=(grid_h, grid_w),
                         mode="bilinear", align_corners=False)[0]
    normalised = normalise_cams(maps)
    boxer = {"largest_component": largest_component_box, "first_last": first_last_box}[mode]
    scale = np.array([width / grid_w, height / grid_h, width / grid_w, height / grid_h])
    boxes = []
    for class_map in normalised:
        box = boxer(class_map > threshold)
        boxes.append(np.array([0, 0, width, height], dtype=np.float64) if box is None
                     else box * scale)
    return np.stack(boxes)


def select_classes(probs: torch.Tensor, threshold: float) -> list[list[int]]:
    """Per image, the classes whose classifier probability reaches threshold; at least the top one,
    so every image gets a local look."""
    chosen = []
    for row in probs:
        picked = torch.nonzero(row >= threshold).flatten().tolist()
        chosen.append(picked or [int(row.argmax())])
    return chosen
