"""The stored form of the classifier's training inputs (the `train-inputs` stage): each image
resized to the student's square input (`resize_inputs`) and encoded once, as JPEG or PNG, so the
stage is about the size of a JPEG corpus instead of 3 x S x S raw bytes per image; every reader
decodes with `decode_inputs`, and the in-process executor trains on `round_trip` of the same
pixels, so both see the same inputs."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

ENCODINGS = ("jpeg", "png")
# Full-resolution colour: the inputs are already at the student's resolution, where 4:2:0
# (libjpeg's and so img2dataset's default) halves the colour detail the student sees (on the
# synthetic scenes at 96 px, q95: mean error 3.1 and up to 132 at colour edges, against 1.5
# and 25 for 4:4:4, at 1.5x the bytes). Pinned, so a Pillow upgrade does not change it.
JPEG_SUBSAMPLING = "4:4:4"


def resize_inputs(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 3 x H x W images -> uint8 N x 3 x size x size, the aspect stretched (so the CAM
    grid spans the whole image in both axes). Pillow's bilinear filter widens its support when
    shrinking (antialiased), as classifier.resize_images (torch, antialias=True) does inside the
    exported classifier: the two differ by at most 1 in a pixel value (rounding), far below the
    JPEG error of the stored inputs; Pillow keeps the Ray Data tasks that build them torch-free."""
    out = np.empty((len(images), 3, size, size), np.uint8)
    for row, image in enumerate(images):
        hwc = np.ascontiguousarray(np.asarray(image).transpose(1, 2, 0))
        resized = Image.fromarray(hwc).resize((size, size), Image.BILINEAR)
        out[row] = np.asarray(resized).transpose(2, 0, 1)
    return out


def encode_inputs(pixels: np.ndarray, encoding: str, quality: int) -> list[bytes]:
    """uint8 N x 3 x S x S -> one encoded image per row. quality: JPEG quality 1..100 (PNG is
    lossless and ignores it)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"inputs encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"inputs quality {quality}: expected 1..100")
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"inputs to encode: expected uint8 N x 3 x S x S, got {pixels.dtype} "
                         f"{tuple(pixels.shape)}")
    options = ({"format": "JPEG", "quality": quality, "subsampling": JPEG_SUBSAMPLING}
               if encoding == "jpeg" else {"format": "PNG"})
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buffer, **options)
        encoded.append(buffer.getvalue())
    return encoded


def decode_inputs(encoded: Sequence[bytes], size: int) -> np.ndarray:
    """Encoded inputs (either encoding; the bytes say which) -> uint8 N x 3 x size x size."""
    out = np.empty((len(encoded), 3, size, size), np.uint8)
    for row, data in enumerate(encoded):
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.size != (size, size) or image.mode != "RGB":
                    raise ValueError(f"train input {row}: a {image.size[0]}x{image.size[1]} "
                                     f"{image.mode} image, expected {size}x{size} RGB "
                                     "(train.image_size of the run that stored it)")
                out[row] = np.asarray(image).transpose(2, 0, 1)
        except OSError as exc:  # PIL's unreadable or truncated data: not written by encode_inputs
            raise ValueError(f"train input {row}: does not decode ({exc})") from None
    return out


def round_trip(pixels: np.ndarray, encoding: str, quality: int) -> np.ndarray:
    """The pixels as a reader of the stored inputs sees them (encoded, then decoded)."""
    return decode_inputs(encode_inputs(pixels, encoding, quality), pixels.shape[-1])
