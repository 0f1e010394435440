"""Views: every crop stays inside its image, letterboxing keeps aspect, seeds are reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd_ray.method.views import (
    box_guided_boxes,
    clip_boxes,
    crop_views,
    global_box,
    initial_boxes,
    letterbox,
    random_crop_boxes,
    rng_for,
)


def _assert_inside(boxes: np.ndarray, height: int, width: int) -> None:
    assert boxes.dtype == np.int64 and boxes.ndim == 2 and boxes.shape[1] == 4
    x0, y0, x1, y1 = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all(), boxes
    assert (x1 <= width).all() and (y1 <= height).all(), (boxes, height, width)
    assert (x1 - x0 >= 1).all() and (y1 - y0 >= 1).all(), boxes


def _random_sizes(rng, count):
    fixed = [(1, 1), (1, 500), (500, 1), (2, 3), (3, 1000), (1000, 7), (1, 2)]
    drawn = [(int(rng.integers(1, 300)), int(rng.integers(1, 300))) for _ in range(count)]
    return fixed + drawn


def test_random_crop_boxes_stay_inside():
    rng = np.random.default_rng(0)
    for height, width in _random_sizes(rng, 300):
        low = rng.uniform(0.001, 1.0)
        scale = (low, rng.uniform(low, 1.0))
        boxes = random_crop_boxes(height, width, int(rng.integers(1, 6)), scale, rng)
        _assert_inside(boxes, height, width)
    assert random_crop_boxes(10, 10, 0, (0.1, 0.5), rng).shape == (0, 4)


def test_random_crop_area_follows_scale():
    rng = np.random.default_rng(1)
    boxes = random_crop_boxes(400, 400, 200, (0.2, 0.3), rng)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (400 * 400)
    # rounding outwards adds at most a pixel per side
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 0.3 + 4 / 400 + 1e-4
    aspect = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert aspect.min() > 0.7 and aspect.max() < 1.4


def test_box_guided_boxes_stay_inside_even_with_wild_inputs():
    rng = np.random.default_rng(2)
    for height, width in _random_sizes(rng, 300):
        kind = rng.integers(0, 4)
        if kind == 0:      # a box inside the image
            x0, x1 = np.sort(rng.uniform(0, width, 2))
            y0, y1 = np.sort(rng.uniform(0, height, 2))
        elif kind == 1:    # degenerate: zero width and height, anywhere incl. the far border
            x0 = x1 = float(rng.choice([0, width, rng.uniform(0, width)]))
            y0 = y1 = float(rng.choice([0, height, rng.uniform(0, height)]))
        elif kind == 2:    # partly or wholly outside the image
            x0, x1 = np.sort(rng.uniform(-2 * width, 3 * width, 2))
            y0, y1 = np.sort(rng.uniform(-2 * height, 3 * height, 2))
        else:              # the whole image
            x0, y0, x1, y1 = 0, 0, width, height
        boxes = box_guided_boxes(np.array([x0, y0, x1, y1]), height, width,
                                 count=int(rng.integers(1, 8)),
                                 offset=float(rng.choice([0.0, 0.5, 1.0])),
                                 jitter=float(rng.choice([0.0, 0.5, 1.0])), rng=rng)
        _assert_inside(boxes, height, width)


def test_box_guided_first_view_is_the_widened_box():
    rng = np.random.default_rng(3)
    boxes = box_guided_boxes(np.array([40.0, 20.0, 60.0, 50.0]), 100, 200, count=5,
                             offset=0.05, jitter=0.2, rng=rng)
    assert boxes.shape == (5, 4)
    np.testing.assert_array_equal(boxes[0], [30, 10, 70, 60])   # pad = 0.05 * 200 = 10
    # jittered views stay near the widened box: centre within 20% of its side
    cx = (boxes[1:, 0] + boxes[1:, 2]) / 2
    cy = (boxes[1:, 1] + boxes[1:, 3]) / 2
    assert (np.abs(cx - 50) <= 0.2 * 40 + 1).all() and (np.abs(cy - 35) <= 0.2 * 50 + 1).all()
    assert len({tuple(b) for b in boxes}) > 1
    one = box_guided_boxes(np.array([0.0, 0.0, 5.0, 5.0]), 10, 10, 1, 0.0, 0.5, rng)
    np.testing.assert_array_equal(one, [[0, 0, 5, 5]])


def test_clip_boxes_at_least_one_pixel():
    boxes = np.array([[3.2, 4.7, 3.2, 4.7],        # zero size -> rounded outwards
                      [5.0, 5.0, 5.0, 5.0],        # zero size on integer coordinates
                      [10.0, 8.0, 10.0, 8.0],      # zero size on the far corner
                      [-5.0, -5.0, -1.0, -1.0],    # wholly left/above
                      [50.0, 50.0, 60.0, 60.0],    # wholly right/below
                      [7.0, 6.0, 2.0, 1.0],        # inverted
                      [-3.5, 2.5, 20.0, 6.1]])     # overhanging
    out = clip_boxes(boxes, height=8, width=10)
    _assert_inside(out, 8, 10)
    np.testing.assert_array_equal(out, [[3, 4, 4, 5],
                                        [5, 5, 6, 6],
                                        [9, 7, 10, 8],
                                        [0, 0, 1, 1],
                                        [9, 7, 10, 8],
                                        [7, 6, 8, 7],
                                        [0, 2, 10, 7]])
    _assert_inside(clip_boxes(np.array([0, 0, 0, 0]), 1, 1), 1, 1)
    np.testing.assert_array_equal(global_box(8, 10), [[0, 0, 10, 8]])


@pytest.mark.parametrize("h, w", [(10, 40), (40, 10), (24, 24), (3, 64), (1, 1)])
def test_letterbox_keeps_aspect(h, w):
    size = 32
    crop = torch.full((3, h, w), 2.0)
    out = letterbox(crop, size)
    assert out.shape == (3, size, size)
    scale = size / max(h, w)
    exp_h, exp_w = max(1, round(h * scale)), max(1, round(w * scale))
    content = out != 0
    rows = torch.nonzero(content.any(dim=(0, 2))).flatten()
    cols = torch.nonzero(content.any(dim=(0, 1))).flatten()
    assert len(rows) == exp_h and len(cols) == exp_w
    assert int(rows[-1] - rows[0]) + 1 == exp_h and int(cols[-1] - cols[0]) + 1 == exp_w
    # centred (to within a pixel) and the content is the (constant) crop itself
    assert abs(int(rows[0]) - (size - exp_h - int(rows[0]))) <= 1
    assert abs(int(cols[0]) - (size - exp_w - int(cols[0]))) <= 1
    torch.testing.assert_close(out[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
                               torch.full((3, exp_h, exp_w), 2.0))
    assert int(content.sum()) == 3 * exp_h * exp_w   # padding is exactly 0


def test_letterbox_10x40_exact_layout():
    out = letterbox(torch.ones(3, 10, 40), 32)
    # 40 -> 32 wide, 10 -> 8 high, centred vertically: rows 12..19
    torch.testing.assert_close(out[:, 12:20], torch.ones(3, 8, 32))  # antialiasing: ~1 ulp
    assert torch.equal(out[:, :12], torch.zeros(3, 12, 32))
    assert torch.equal(out[:, 20:], torch.zeros(3, 12, 32))


def test_crop_views_shape_and_normalisation():
    height, width = 30, 50
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0], image[1], image[2] = 255, 128, 0
    mean, std = (0.5, 0.25, 0.1), (0.5, 0.25, 0.2)
    boxes = np.array([[0, 0, 50, 30], [10, 5, 20, 25], [-10, -10, 500, 500], [3, 3, 3, 3]])
    views = crop_views(image, boxes, 24, mean, std)
    assert views.shape == (4, 3, 24, 24) and views.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.5) / 0.5, (128 / 255 - 0.25) / 0.25, (0.0 - 0.1) / 0.2])
    for view in views:
        content = (view != 0).any(dim=0)
        assert content.any()
        for ch in range(3):
            torch.testing.assert_close(view[ch][content], expected[ch].expand(int(content.sum())))
    # the global view of a 30 x 50 image fills 24 x round(30*24/50)=14 rows, padding rows are 0
    assert int((views[0] != 0).any(dim=0).any(dim=1).sum()) == 14
    # a 1x1 degenerate box becomes a full square of that pixel
    assert bool((views[3] != 0).all())


def test_crop_views_content_matches_the_box():
    image = torch.zeros(3, 16, 16, dtype=torch.uint8)
    image[:, 4:8, 8:12] = 200  # a bright 4x4 square
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    views = crop_views(image, np.array([[8, 4, 12, 8], [0, 0, 4, 4]]), 8, mean, std)
    torch.testing.assert_close(views[0], torch.full((3, 8, 8), 200 / 255))
    assert torch.equal(views[1], torch.zeros(3, 8, 8))


def test_crop_views_rejects_bad_images_and_handles_no_boxes():
    with pytest.raises(ValueError, match="uint8"):
        crop_views(torch.zeros(3, 8, 8), np.array([[0, 0, 8, 8]]), 8, (0,) * 3, (1,) * 3)
    with pytest.raises(ValueError):
        crop_views(torch.zeros(8, 8, 3, dtype=torch.uint8), np.array([[0, 0, 8, 8]]), 8,
                   (0,) * 3, (1,) * 3)
    empty = crop_views(torch.zeros(3, 8, 8, dtype=torch.uint8), np.zeros((0, 4)), 8,
                       (0,) * 3, (1,) * 3)
    assert empty.shape == (0, 3, 8, 8)


def test_rng_for_is_deterministic():
    def boxes(seed, image_id, round_index):
        return box_guided_boxes(np.array([20.0, 20.0, 60.0, 60.0]), 100, 100, 6, 0.1, 0.3,
                                rng_for(seed, image_id, round_index))

    np.testing.assert_array_equal(boxes(0, "img-1", 1), boxes(0, "img-1", 1))
    assert not np.array_equal(boxes(0, "img-1", 1), boxes(0, "img-1", 2))
    assert not np.array_equal(boxes(0, "img-1", 1), boxes(1, "img-1", 1))
    assert not np.array_equal(boxes(0, "img-1", 1), boxes(0, "img-2", 1))
    # the separator keeps ("a1", round 1) apart from ("a", round 11)
    assert rng_for(0, "a1", 1).integers(2**62) != rng_for(0, "a", 11).integers(2**62)


def test_initial_boxes_global_first_and_reproducible():
    a = initial_boxes(48, 64, 5, (0.1, 0.5), seed=7, image_id="x")
    b = initial_boxes(48, 64, 5, (0.1, 0.5), seed=7, image_id="x")
    assert a.shape == (6, 4)
    np.testing.assert_array_equal(a[0], [0, 0, 64, 48])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, initial_boxes(48, 64, 5, (0.1, 0.5), seed=7, image_id="y"))
    _assert_inside(a, 48, 64)
    np.testing.assert_array_equal(initial_boxes(48, 64, 0, (0.1, 0.5), 7, "x"), [[0, 0, 64, 48]])


def test_the_crop_benchmarks_candidate_is_todays_letterbox():
    """benchmarks/crop_views.py's one-call roi_align candidate gives the views crop_views gives,
    up to its different antialiasing (a shifted grid or a missing mask would differ by whole
    units of the normalised scale), for boxes of every shape, a shrinking and an enlarging."""
    from pathlib import Path

    from script_modules import load_script

    bench = load_script(Path(__file__).parents[1] / "benchmarks" / "crop_views.py", "crop_bench")
    image = torch.nn.functional.avg_pool2d(
        torch.randint(0, 256, (1, 3, 60, 90), generator=torch.Generator().manual_seed(0)).float(),
        5, 1, 2)[0].to(torch.uint8)
    boxes = np.array([[0, 0, 90, 60], [10, 5, 40, 55], [20, 10, 80, 20], [0, 0, 3, 3]])
    for side in (32, 160):
        today = crop_views(image, boxes, side, bench.MEAN, bench.STD)
        candidate = bench.crop_views_roi(image, boxes, side)
        assert candidate.shape == today.shape
        assert float((candidate - today).abs().mean()) < 0.02
        assert torch.equal(candidate == 0, today == 0)  # the same letterbox padding
