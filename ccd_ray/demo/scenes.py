"""Procedural scenes: distinct shape-and-colour object classes on cluttered backgrounds,
with ground-truth labels and boxes, deterministic from a seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# (shape, RGB) per class; shapes and colours are chosen so that no two classes share both.
CLASS_STYLES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red circle": ("circle", (220, 40, 40)),
    "green square": ("square", (40, 180, 60)),
    "blue triangle": ("triangle", (50, 80, 220)),
    "yellow star": ("star", (235, 210, 40)),
    "purple ring": ("ring", (150, 60, 190)),
    "orange cross": ("cross", (245, 140, 30)),
    "cyan diamond": ("diamond", (40, 200, 210)),
    "white bar": ("bar", (240, 240, 240)),
    "pink heart": ("heart", (240, 120, 170)),
    "brown hexagon": ("hexagon", (140, 90, 40)),
}
CLASS_NAMES = list(CLASS_STYLES)


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8
    labels: list[str]  # the classes present, sorted, once each
    boxes: list[tuple[int, int, int, int]]  # one per object, x0 y0 x1 y1
    box_labels: list[str]  # the class of each box


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring(n: int, radii: list[float], start: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = start + angle + 2 * math.pi * i / (n * len(radii))
            rad = radii[i % len(radii)]
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts

    if shape == "square":
        return ring(4, [r], math.pi / 4)
    if shape == "triangle":
        return ring(3, [r], -math.pi / 2)
    if shape == "star":
        return ring(5, [r, r * 0.45], -math.pi / 2)
    if shape == "diamond":
        return ring(4, [r, r * 0.6], 0)
    if shape == "hexagon":
        return ring(6, [r], 0)
    if shape == "cross":
        return ring(4, [r, r * 0.35, r * 0.35 * math.sqrt(2), r * 0.35], 0)
    if shape == "bar":
        return ring(2, [r, r * 0.25, r * 0.25], 0)
    raise ValueError(shape)


def draw_object(draw: ImageDraw.ImageDraw, style: tuple[str, tuple[int, int, int]], cx: float,
                cy: float, r: float, angle: float) -> tuple[int, int, int, int]:
    shape, colour = style
    if shape in ("circle", "ring"):
        bbox = (cx - r, cy - r, cx + r, cy + r)
        if shape == "circle":
            draw.ellipse(bbox, fill=colour)
        else:
            draw.ellipse(bbox, outline=colour, width=max(2, int(r * 0.35)))
    elif shape == "heart":
        lobes = r * 0.55
        top = cy - r * 0.8
        draw.ellipse((cx - r, top, cx - r + 2 * lobes, top + 2 * lobes), fill=colour)
        draw.ellipse((cx + r - 2 * lobes, top, cx + r, top + 2 * lobes), fill=colour)
        draw.polygon([(cx - r, cy - r * 0.3), (cx + r, cy - r * 0.3), (cx, cy + r)], fill=colour)
        bbox = (cx - r, cy - r, cx + r, cy + r)
    else:
        pts = _polygon(shape, cx, cy, r, angle)
        draw.polygon(pts, fill=colour)
        xs, ys = zip(*pts)
        bbox = (min(xs), min(ys), max(xs), max(ys))
    return tuple(int(round(v)) for v in bbox)  # type: ignore[return-value]


CLUTTER = (4, 10)  # grey strokes per background: at least 4, fewer than 10


def _background(rng: np.random.Generator, size: int, clutter: tuple[int, int] = CLUTTER
                ) -> Image.Image:
    base = rng.integers(60, 140, 3)
    noise = rng.normal(0, 18, (size // 8, size // 8, 3))
    small = np.clip(base + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(*clutter))):  # clutter: thin grey strokes, not any class
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        grey = int(rng.integers(70, 170))
        draw.line((x0, y0, x1, y1), fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
    return image


def make_scene(rng: np.random.Generator, size: int, class_names: list[str],
               num_objects: int, scale: tuple[float, float],
               class_probs: np.ndarray | None = None,
               styles: dict[str, tuple[str, tuple[int, int, int]]] = CLASS_STYLES,
               clutter: tuple[int, int] = CLUTTER) -> Scene:
    """One scene of num_objects objects (classes drawn with class_probs, repeats allowed);
    styles maps each class name to its (shape, colour)."""
    image = _background(rng, size, clutter)
    draw = ImageDraw.Draw(image)
    names, boxes = [], []
    picks = rng.choice(len(class_names), size=num_objects, p=class_probs)
    for c in picks:
        r = rng.uniform(*scale) * size / 2
        cx, cy = rng.uniform(r, size - r, 2)
        angle = rng.uniform(0, 2 * math.pi)
        boxes.append(draw_object(draw, styles[class_names[c]], cx, cy, r, angle))
        names.append(class_names[c])
    return Scene(np.array(image), sorted(set(names)), boxes, names)


def make_scenes(count: int, seed: int, size: int = 96, max_objects: int = 3,
                scale: tuple[float, float] = (0.25, 0.45), class_names: list[str] | None = None,
                class_probs: np.ndarray | None = None, clutter: tuple[int, int] = CLUTTER
                ) -> list[Scene]:
    """count scenes of 1..max_objects objects each, the same for the same arguments
    (class_probs: each object's class distribution, uniform when None)."""
    names = class_names or CLASS_NAMES
    rng = np.random.default_rng(seed)
    return [make_scene(rng, size, names, int(rng.integers(1, max_objects + 1)), scale,
                       class_probs, clutter=clutter)
            for _ in range(count)]
