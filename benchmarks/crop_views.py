"""Cropping views one at a time (today's `method.views.crop_views`: a letterboxed, antialiased
`F.interpolate` per view) against all views of an image in one `torchvision.ops.roi_align`
call (a candidate: each view's box widened to the letterbox's square so the one output size
fits every view, the padding masked back to zeros, `sampling_ratio=-1` averaging several
bilinear samples per output pixel where a view shrinks, as antialiasing does).

For each setting, --images synthetic images (uniform noise smoothed by a 5 x 5 box filter)
with the phase-1 views of `method.views.initial_boxes` (the global view and random crops),
both ways in this process on one torch thread after a warm-up call: milliseconds a view, and
the largest and mean absolute difference of the normalised views (CLIP's mean and std).

    python benchmarks/crop_views.py [--images 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torchvision.ops import roi_align

from ccd_ray.method.views import clip_boxes, crop_views, initial_boxes

MEAN, STD = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)
SETTINGS = [(96, 96, 3, 64), (375, 500, 11, 224), (60, 80, 5, 224)]  # h, w, views, side


def crop_views_roi(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """The candidate: K x 3 x size x size from one roi_align call over the image."""
    _, height, width = image.shape
    x0, y0, x1, y1 = clip_boxes(boxes, height, width).astype(np.float64).T
    h, w = y1 - y0, x1 - x0
    scale = size / np.maximum(h, w)
    new_h, new_w = np.maximum(1, np.round(h * scale)), np.maximum(1, np.round(w * scale))
    top, left = (size - new_h) // 2, (size - new_w) // 2
    # the output grid of the crop's new_w x new_h pixels, extended to size x size pixels
    step_x, step_y = w / new_w, h / new_h
    sx, sy = x0 - left * step_x, y0 - top * step_y
    rois = torch.from_numpy(np.stack([np.zeros_like(sx), sx, sy, sx + size * step_x,
                                      sy + size * step_y], 1)).float().to(image.device)
    mean = torch.tensor(MEAN, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(1, 3, 1, 1)
    normalised = (image.float()[None] / 255.0 - mean) / std
    out = roi_align(normalised, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)
    index = torch.arange(size, device=image.device)[None]

    def inside(start: np.ndarray, length: np.ndarray) -> torch.Tensor:
        first = torch.from_numpy(start).to(image.device)[:, None]
        end = first + torch.from_numpy(length).to(image.device)[:, None]
        return (index >= first) & (index < end)

    mask = inside(top, new_h)[:, :, None] & inside(left, new_w)[:, None, :]
    return out * mask[:, None]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| image | views | side | one view at a time, ms a view | roi_align, one call an "
          "image, ms a view | ratio | max abs diff | mean abs diff |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for height, width, views, side in SETTINGS:
        noise = torch.from_numpy(rng.integers(0, 256, (args.images, 3, height, width)))
        images = list(torch.nn.functional.avg_pool2d(noise.float(), 5, 1, 2).to(torch.uint8)
                      .to(args.device))
        boxes = [initial_boxes(height, width, views - 1, (0.3, 0.7), 0, f"i{i}")
                 for i in range(args.images)]

        def today(images=images, boxes=boxes, side=side):
            return [crop_views(img.cpu(), b, side, MEAN, STD) for img, b in zip(images, boxes)]

        def candidate(images=images, boxes=boxes, side=side):
            return [crop_views_roi(img, b, side).cpu() for img, b in zip(images, boxes)]

        timed = {}
        for name, fn in (("today", today), ("roi", candidate)):
            fn()  # warm-up
            started = time.perf_counter()
            timed[name] = (fn(), (time.perf_counter() - started) / (args.images * views) * 1e3)
        diff = torch.cat([a - b for a, b in zip(timed["today"][0], timed["roi"][0])]).abs()
        print(f"| {height}x{width} | {views} | {side} | {timed['today'][1]:.2f} | "
              f"{timed['roi'][1]:.2f} | {timed['roi'][1] / timed['today'][1]:.2f}x | "
              f"{float(diff.max()):.3f} | {float(diff.mean()):.4f} |")


if __name__ == "__main__":
    main()
