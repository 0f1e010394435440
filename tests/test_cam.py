"""CAM -> boxes and class selection, on hand-made maps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ccd_ray.method.cam import (
    cam_boxes,
    component_labels,
    first_last_box,
    grid_shape,
    largest_component_box,
    normalise_cams,
    select_classes,
)
from ccd_ray.method.thresholds import avg_count_threshold


def _mask(rows: list[str]) -> torch.Tensor:
    """'#' = on, '.' = off."""
    return torch.tensor([[ch == "#" for ch in row] for row in rows])


def test_single_blob_tight_box():
    mask = _mask(["........",
                  "..###...",
                  "..####..",
                  "...#....",
                  "........"])
    np.testing.assert_array_equal(largest_component_box(mask), [2, 1, 6, 4])
    np.testing.assert_array_equal(first_last_box(mask), [2, 1, 4, 4])


def test_largest_of_two_blobs_wins():
    mask = _mask(["##......",
                  "##......",
                  "......##",
                  ".....###",
                  ".....###"])
    np.testing.assert_array_equal(largest_component_box(mask), [5, 2, 8, 5])


def test_equal_blobs_first_in_row_major_order_wins():
    # the right blob starts on row 0, the left one on row 1: the right one is first
    mask = _mask(["......##",
                  "##....##",
                  "##......"])
    np.testing.assert_array_equal(largest_component_box(mask), [6, 0, 8, 2])
    # mirror it: now the left blob starts first
    np.testing.assert_array_equal(largest_component_box(mask.flip(0)), [0, 0, 2, 2])
    # same row: the left one is first
    same_row = _mask(["##..##",
                      "##..##"])
    np.testing.assert_array_equal(largest_component_box(same_row), [0, 0, 2, 2])


def test_blob_touching_the_border():
    mask = _mask(["......",
                  "....##",
                  "....##",
                  "....##"])
    np.testing.assert_array_equal(largest_component_box(mask), [4, 1, 6, 4])
    full = torch.ones(3, 5, dtype=torch.bool)
    np.testing.assert_array_equal(largest_component_box(full), [0, 0, 5, 3])
    corner = torch.zeros(4, 4, dtype=torch.bool)
    corner[0, 0] = True
    np.testing.assert_array_equal(largest_component_box(corner), [0, 0, 1, 1])


def test_empty_mask_gives_none():
    empty = torch.zeros(4, 6, dtype=torch.bool)
    assert largest_component_box(empty) is None
    assert first_last_box(empty) is None


def test_first_last_box_hand_example():
    # first on pixel (row 1, col 5), last on (row 4, col 1): the box spans both corners,
    # ignoring pixels outside it (col 7 on row 2), unlike a true min/max box
    mask = _mask(["........",
                  ".....#..",
                  "...#...#",
                  "........",
                  ".#......"])
    np.testing.assert_array_equal(first_last_box(mask), [1, 1, 6, 5])
    single = _mask(["...", ".#.", "..."])
    np.testing.assert_array_equal(first_last_box(single), [1, 1, 2, 2])


def test_component_labels_diagonal_is_one_region():
    mask = _mask(["#....",
                  ".#...",
                  "..#..",
                  "...#.",
                  "#...#"])
    labels = component_labels(mask)
    diag = labels[torch.arange(5), torch.arange(5)]
    assert len(torch.unique(diag)) == 1 and int(diag[0]) > 0
    assert int(labels[4, 0]) > 0 and int(labels[4, 0]) != int(diag[0])
    assert int((labels[~mask] != 0).sum()) == 0
    assert len(torch.unique(labels[mask])) == 2
    # the 5-pixel diagonal beats the lone corner pixel and spans the whole grid
    np.testing.assert_array_equal(largest_component_box(mask), [0, 0, 5, 5])


def test_component_labels_snake_and_separate():
    # a U-shaped region: propagation has to go around the bend
    mask = _mask(["#.#..#",
                  "#.#..#",
                  "###..."])
    labels = component_labels(mask)
    assert len(torch.unique(labels[mask])) == 2
    assert labels[0, 0] == labels[0, 2]
    assert labels[0, 5] != labels[0, 0]
    np.testing.assert_array_equal(largest_component_box(mask), [0, 0, 3, 3])


def test_normalise_cams():
    cams = torch.stack([torch.tensor([[1.0, 3.0], [2.0, 5.0]]), torch.full((2, 2), 7.0)])
    out = normalise_cams(cams)
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))


def test_grid_shape_keeps_aspect():
    assert grid_shape(100, 200, 16) == (8, 16)
    assert grid_shape(200, 100, 16) == (16, 8)
    assert grid_shape(1, 1000, 10) == (1, 10)


def test_cam_boxes_scaled_to_non_square_image():
    # image 40 high x 80 wide; CAM grid resolution 16 -> grid 8 x 16 = the CAM's own size
    height, width = 40, 80
    cams = torch.zeros(3, 8, 16)
    cams[0, 2:5, 10:14] = 1.0          # class 0: a block in grid cells x 10..13, y 2..4
    cams[2, 0, 0] = 1.0                # class 2: the top-left cell
    boxes = cam_boxes(cams, [0, 1, 2], height, width, threshold=0.5,
                      mode="largest_component", resolution=16)
    assert boxes.shape == (3, 4)
    np.testing.assert_allclose(boxes[0], [10 * 5, 2 * 5, 14 * 5, 5 * 5])   # 5 px per cell
    np.testing.assert_allclose(boxes[1], [0, 0, width, height])            # constant map
    np.testing.assert_allclose(boxes[2], [0, 0, 5, 5])
    first_last = cam_boxes(cams, [0], height, width, 0.5, "first_last", 16)
    np.testing.assert_allclose(first_last[0], [50, 10, 70, 25])
    assert cam_boxes(cams, [], height, width, 0.5, "largest_component", 16).shape == (0, 4)


def test_cam_boxes_axes_scale_separately():
    # 30 x 100 image at resolution 16: grid 5 x 16 (4.8 rounds up), so a cell is
    # 6.25 px wide but 6 px high; a box at the bottom-right corner must end at the corner
    height, width = 30, 100
    cams = torch.zeros(1, 5, 16)
    cams[0, 3:5, 12:16] = 1.0
    box = cam_boxes(cams, [0], height, width, 0.5, "largest_component", 16)[0]
    np.testing.assert_allclose(box, [12 * 6.25, 3 * 6.0, 100.0, 30.0])


def test_cam_boxes_upsampled_from_coarse_cam():
    # a 2 x 4 CAM of a 30 x 60 image, upsampled to 16 x 32 (resolution 32): the hot cell in
    # the right half stays in the right half of the image, whatever the interpolation
    cams = torch.zeros(1, 2, 4)
    cams[0, 1, 3] = 1.0
    box = cam_boxes(cams, [0], 30, 60, threshold=0.5, mode="largest_component",
                    resolution=32)[0]
    assert 45 <= box[0] < box[2] <= 60
    assert 15 <= box[1] < box[3] <= 30


def test_cam_boxes_constant_map_is_whole_image():
    cams = torch.full((2, 4, 4), 3.0)
    boxes = cam_boxes(cams, [1, 0], 50, 30, threshold=0.0, mode="largest_component",
                      resolution=8)
    np.testing.assert_allclose(boxes, [[0, 0, 30, 50], [0, 0, 30, 50]])
    boxes = cam_boxes(cams, [1], 50, 30, threshold=0.5, mode="first_last", resolution=8)
    np.testing.assert_allclose(boxes, [[0, 0, 30, 50]])


@pytest.mark.parametrize("avg_count", [1, 2, 3])
def test_avg_count_threshold_yields_avg_count_per_image(avg_count):
    probs = torch.rand(20, 6, generator=torch.Generator().manual_seed(avg_count))
    t = avg_count_threshold(probs.numpy(), avg_count)
    assert int((probs >= t).sum()) == avg_count * 20
    chosen = select_classes(probs, t)
    assert sum(map(len, chosen)) / 20 >= avg_count
    # the extra picks can only come from images that had none above the threshold
    assert sum(map(len, chosen)) - avg_count * 20 == sum(
        1 for row in probs if not bool((row >= t).any()))


def test_avg_count_threshold_caps_at_everything():
    probs = torch.rand(3, 2)
    assert avg_count_threshold(probs.numpy(), 10) == float(probs.min())


def test_select_classes_always_picks_argmax():
    probs = torch.tensor([[0.1, 0.3, 0.2],
                          [0.9, 0.6, 0.7],
                          [0.05, 0.01, 0.02]])
    assert select_classes(probs, 0.5) == [[1], [0, 1, 2], [0]]
    assert select_classes(probs, 0.7) == [[1], [0, 2], [0]]   # inclusive threshold
    assert select_classes(probs, 1.0) == [[1], [0], [0]]
