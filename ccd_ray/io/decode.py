"""Decode untrusted image bytes into RGB uint8 arrays, upright (EXIF orientation applied), or
say exactly why not. NumPy and Pillow only: Ray Data's CPU tasks decode without importing torch
(a fresh worker process spends seconds on that import); torch.from_numpy shares the array."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Reasons recorded in errors.parquet; kept stable so users can filter on them.
EMPTY = "empty: zero bytes"
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated or corrupt image data"
TOO_LARGE = "too large: more pixels than data.max_image_pixels"
NO_PIXELS = "image has zero width or height"
UNSUPPORTED_PIXELS = "unsupported pixel format"


@dataclass
class Decoded:
    image: np.ndarray | None   # 3 x H x W uint8, RGB, C-contiguous
    error: str | None


class _UnsupportedPixels(ValueError):
    """Pixels of a mode or value range with no faithful RGB rendering."""


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Integer (16/32-bit) pixels stretched by their maximum; float pixels read as 0..1 (or
    0..255 when larger), the usual conventions; anything else is refused, never clipped to a
    black or white image."""
    if not np.isfinite(arr).all():
        raise _UnsupportedPixels(f"mode {mode} with NaN or infinite values")
    low, top = float(arr.min()), float(arr.max())
    if low < 0:
        raise _UnsupportedPixels(f"mode {mode} with negative values (min {low:g})")
    if mode == "F":
        if top <= 1.0:
            return np.rint(arr * 255).astype(np.uint8)
        if top <= 255.0:
            return np.rint(arr).astype(np.uint8)
        raise _UnsupportedPixels(f"mode F with values up to {top:g}, expected 0..1 or 0..255")
    return (arr / (top or 1.0) * 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK, 16/32-bit, float and alpha images to RGB; alpha is composited
    on white so transparent areas do not turn black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _to_uint8(np.asarray(img, dtype=np.float64), img.mode)
        return Image.fromarray(gray).convert("RGB")
    try:
        if img.has_transparency_data:
            rgba = img.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return img.convert("RGB")
    except ValueError as exc:  # PIL: "conversion from <mode> to RGB not supported"
        raise _UnsupportedPixels(f"mode {img.mode}: {exc}") from None


def decode_image(data: bytes | None, max_pixels: int, max_side: int | None = None) -> Decoded:
    """Decode bytes to a 3 x H x W uint8 RGB array, shrunk so its long side is at most
    max_side (None: full size). Never raises for bad data: the reason is returned instead."""
    if not data:
        return Decoded(None, EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                return Decoded(None, f"{TOO_LARGE} ({width}x{height})")
            if width == 0 or height == 0:
                return Decoded(None, NO_PIXELS)
            if max_side and max(width, height) > max_side:
                img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # phone photos: stored sideways
            if max_side and max(img.size) > max_side:
                img.thumbnail((max_side, max_side), Image.BILINEAR)
            rgb = _to_rgb(img)
    except UnidentifiedImageError:
        return Decoded(None, NOT_AN_IMAGE)
    except _UnsupportedPixels as exc:
        return Decoded(None, f"{UNSUPPORTED_PIXELS}: {exc}"[:300])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Decoded(None, TOO_LARGE)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return Decoded(None, f"{TRUNCATED}: {type(exc).__name__}: {exc}"[:300])
    array = np.array(rgb, dtype=np.uint8)
    return Decoded(np.ascontiguousarray(array.transpose(2, 0, 1)), None)


def decoded_rows(table, max_pixels: int, max_side: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """(image_id, image) of each row of a corpus table (`image_id`, `image`, `error`) that was
    read and decodes; the others are the labeling stages' to record, not skipped silently."""
    for image_id, data, error in zip(table.column("image_id").to_pylist(),
                                     table.column("image").to_pylist(),
                                     table.column("error").to_pylist()):
        if not error:
            decoded = decode_image(data, max_pixels, max_side)
            if not decoded.error:
                yield image_id, decoded.image


def encode_png(image: np.ndarray) -> bytes:
    """H x W x 3 uint8 -> PNG bytes (lossless, so tests compare exact pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()

