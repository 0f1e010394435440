"""Cropping views one at a time (`method.views.crop_views`: a letterboxed, antialiased
`F.interpolate` per view) on the CPU and then moving the views to --device (the product before
commit 2ba1e57), the same on --device after moving the uint8 image there (the product since:
`method.scoring.score_views` crops on the teacher's device), and all views of an image in one
`torchvision.ops.roi_align` call on --device (a candidate: each view's box widened to the
letterbox's square so the one output size fits every view, the padding masked back to zeros,
`sampling_ratio=-1` averaging several bilinear samples per output pixel where a view shrinks,
as antialiasing does).

For each setting, --images synthetic images (uniform noise smoothed by a 5 x 5 box filter)
with the phase-1 views of `method.views.initial_boxes` (the global view and random crops),
each way in this process on one torch thread after a warm-up call, the images starting on
the CPU as decoded images do: milliseconds a view (CUDA work synchronised before the clock
stops), and the largest and mean absolute difference of roi_align's normalised views (CLIP's
mean and std) from the per-view crops.

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
    device = torch.device(args.device)

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    print("| image | views | side | per view on the CPU, then moved, ms a view | per view on "
          f"{device.type}, ms a view | roi_align on {device.type}, one call an image, ms a view "
          "| roi_align / per view on the CPU | max abs diff | mean abs diff |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for height, width, views, side in SETTINGS:
        noise = torch.from_numpy(rng.integers(0, 256, (args.images, 3, height, width)))
        images = list(torch.nn.functional.avg_pool2d(noise.float(), 5, 1, 2).to(torch.uint8))
        boxes = [initial_boxes(height, width, views - 1, (0.3, 0.7), 0, f"i{i}")
                 for i in range(args.images)]
        ways = {
            "cpu": lambda img, b, side=side: crop_views(img, b, side, MEAN, STD).to(device),
            "device": lambda img, b, side=side: crop_views(img.to(device), b, side, MEAN, STD),
            "roi": lambda img, b, side=side: crop_views_roi(img.to(device), b, side),
        }
        timed = {}
        for name, crop in ways.items():
            [crop(img, b) for img, b in zip(images, boxes)]  # warm-up
            synchronise()
            started = time.perf_counter()
            out = [crop(img, b) for img, b in zip(images, boxes)]
            synchronise()
            timed[name] = (out, (time.perf_counter() - started) / (args.images * views) * 1e3)
        diff = torch.cat([(a - b).cpu() for a, b in zip(timed["cpu"][0], timed["roi"][0])]).abs()
        print(f"| {height}x{width} | {views} | {side} | {timed['cpu'][1]:.2f} | "
              f"{timed['device'][1]:.2f} | {timed['roi'][1]:.2f} | "
              f"{timed['roi'][1] / timed['cpu'][1]:.2f}x | "
              f"{float(diff.max()):.3f} | {float(diff.mean()):.4f} |")

if __name__ == "__main__":
    main()
