"""decode_image: every kind of bad input gives its stable reason, every odd mode becomes RGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import ZOO_MAX_PIXELS, image_zoo, png_header
from PIL import Image

from ccd_ray.io.decode import (
    EMPTY,
    NOT_AN_IMAGE,
    TOO_LARGE,
    TRUNCATED,
    UNSUPPORTED_PIXELS,
    decode_image,
    encode_png,
)

ZOO = image_zoo()
BAD = [z for z in ZOO if z[2]]
GOOD = [z[:2] for z in ZOO if not z[2]]


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("name,data,reason", BAD, ids=[z[0] for z in BAD])
def test_bad_input_gives_its_reason_and_no_image(name, data, reason):
    decoded = decode_image(data, ZOO_MAX_PIXELS, 1024)
    assert decoded.image is None
    assert decoded.error.startswith(reason), decoded.error
    assert len(decoded.error) <= 300


@pytest.mark.parametrize("name,data", GOOD, ids=[z[0] for z in GOOD])
def test_every_mode_decodes_to_rgb_uint8(name, data):
    decoded = decode_image(data, ZOO_MAX_PIXELS, 1024)
    assert decoded.error is None
    image = decoded.image
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[0] == 3
    assert image.flags.c_contiguous  # torch.from_numpy then shares it as a 3 x H x W tensor
    assert image.shape[1:] == ((1, 1) if name == "mode-one-pixel" else (64, 64))


def test_the_zoo_holds_the_modes_it_claims():
    modes = {name: Image.open(io.BytesIO(data)).mode for name, data, reason in ZOO
             if reason is None}
    assert modes["mode-gray-L"] == "L"
    assert modes["mode-cmyk-jpeg"] == "CMYK"
    assert modes["mode-palette-P"] == "P" and modes["mode-palette-transparent"] == "P"
    assert modes["mode-rgba-alpha"] == "RGBA" and modes["mode-la-alpha"] == "LA"


def test_exact_reasons():
    assert decode_image(b"", 100).error == EMPTY
    assert decode_image(None, 100).error == EMPTY
    assert decode_image(b"hello", 100).error == NOT_AN_IMAGE
    assert decode_image(b"\x89PNG\r\n\x1a\n", 100).error == NOT_AN_IMAGE  # signature only
    big = _encode(Image.new("RGB", (20, 10)))
    assert decode_image(big, 199).error == f"{TOO_LARGE} (20x10)"
    assert decode_image(big, 200).error is None  # the limit itself is allowed
    half = _encode(Image.new("RGB", (32, 32), (1, 2, 3)), "JPEG")
    assert decode_image(half[: len(half) // 2], 10_000).error.startswith(TRUNCATED + ": OSError")


def test_decompression_bomb_is_too_large_before_decoding(monkeypatch):
    """PIL's own bomb check (2x its MAX_IMAGE_PIXELS) also maps to TOO_LARGE."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    data = _encode(Image.new("RGB", (12, 12)))  # 144 > 2 * 50: PIL raises on open
    assert decode_image(data, 10**9).error.startswith(TOO_LARGE)


def test_header_claiming_huge_dimensions_is_too_large():
    """A 100 000 x 100 000 PNG header in a few dozen bytes: rejected before any pixel is decoded,
    even when data.max_image_pixels would allow it (PIL's own bomb limit is lower)."""
    bomb = png_header(100_000, 100_000)
    assert len(bomb) < 100
    assert decode_image(bomb, 100).error.startswith(TOO_LARGE)
    assert decode_image(bomb, 10**10).error.startswith(TOO_LARGE)


def test_rgb_pixels_survive_exactly():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    decoded = decode_image(encode_png(array), 10_000)
    np.testing.assert_array_equal(decoded.image, array.transpose(2, 0, 1))


def test_alpha_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[0, 0, 3] = 0      # fully transparent: white
    rgba[0, 1, 3] = 255    # opaque: the colour itself
    rgba[0, 2, 3] = 128    # half: between the two
    rgba[1, :, 3] = 255
    image = decode_image(_encode(Image.fromarray(rgba, "RGBA")), 100).image
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert image[:, 0, 1].tolist() == [200, 0, 0]
    red, green, _ = image[:, 0, 2].tolist()
    assert 200 <= red <= 255 and 100 <= green <= 155
    la = np.zeros((1, 2, 2), dtype=np.uint8)
    la[0, 0] = (10, 0)
    la[0, 1] = (10, 255)
    image = decode_image(_encode(Image.fromarray(la, "LA")), 100).image
    assert image[:, 0, 0].tolist() == [255, 255, 255] and image[:, 0, 1].tolist() == [10, 10, 10]


def test_palette_transparency_is_composited_on_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    image = decode_image(_encode(palette, transparency=0), 100).image
    assert image[:, 0, 0].tolist() == [255, 255, 255]
    assert image[:, 0, 1].tolist() == [0, 255, 0]


def test_gray_cmyk_and_16_bit_become_rgb():
    gray = decode_image(_encode(Image.new("L", (3, 2), 77)), 100).image
    assert gray.shape == (3, 2, 3) and bool((gray == 77).all())
    cmyk = decode_image(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), 100).image
    red, green, blue = cmyk.astype(float).mean(axis=(1, 2)).tolist()
    assert red > 200 and green < 60 and blue < 60  # cyan 0, magenta+yellow full: red
    deep = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    image = decode_image(_encode(Image.fromarray(deep)), 100).image
    assert image.shape == (3, 2, 2) and image[0].tolist() == [[0, 63], [127, 255]]


def test_long_side_is_shrunk_to_max_side():
    wide = _encode(Image.new("RGB", (200, 50), (5, 6, 7)))
    assert decode_image(wide, 10**6, 64).image.shape == (3, 16, 64)
    assert decode_image(wide, 10**6, None).image.shape == (3, 50, 200)
    jpeg = _encode(Image.new("RGB", (256, 128), (90, 90, 90)), "JPEG")
    assert decode_image(jpeg, 10**6, 64).image.shape == (3, 32, 64)  # draft mode, then resized



def _displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """How a viewer shows H x W x 3 pixels stored with EXIF orientation 1..8 (the EXIF
    specification's table, written out with numpy, independent of PIL)."""
    return {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
            4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2),
            6: lambda a: np.rot90(a, k=-1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
            8: lambda a: np.rot90(a, k=1)}[orientation](stored)


def _with_orientation(array: np.ndarray, orientation: int, fmt: str) -> bytes:
    img = Image.fromarray(array)
    exif = img.getexif()
    exif[0x0112] = orientation  # Orientation
    return _encode(img, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    decoded = decode_image(_with_orientation(stored, orientation, "PNG"), 10_000)
    expected = _displayed(stored, orientation)
    np.testing.assert_array_equal(decoded.image, expected.transpose(2, 0, 1))
    # a phone JPEG, shrunk on decode: the long side is still bounded after rotating
    photo = np.zeros((60, 100, 3), np.uint8)
    photo[:10, :10] = 255  # a white corner, top left as stored
    decoded = decode_image(_with_orientation(photo, orientation, "JPEG"), 10**6, 50).image
    expected = _displayed(photo, orientation)[::2, ::2]
    assert decoded.shape[1:] == expected.shape[:2]
    np.testing.assert_array_equal(decoded[0] > 128, expected[..., 0] > 128)


def test_float_tiff_is_scaled_not_black():
    values = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    image = decode_image(_encode(Image.fromarray(values, "F"), "TIFF"), 100).image
    assert image.shape == (3, 4, 6) and image[0, -1, -1] == 255
    np.testing.assert_array_equal(image[0], np.rint(values * 255).astype(np.uint8))
    as_bytes = decode_image(_encode(Image.fromarray(values * 200, "F"), "TIFF"), 100).image
    np.testing.assert_array_equal(as_bytes[1], np.rint(values * 200).astype(np.uint8))


@pytest.mark.parametrize("mode,values,detail", [
    ("F", np.array([[0.0, 1000.0]], np.float32),
     "mode F with values up to 1000, expected 0..1 or 0..255"),
    ("F", np.array([[0.0, np.nan]], np.float32), "mode F with NaN or infinite values"),
    ("I", np.array([[-5, 7]], np.int32), "mode I with negative values (min -5)"),
])
def test_pixel_values_without_a_faithful_rgb_are_an_error(mode, values, detail):
    decoded = decode_image(_encode(Image.fromarray(values, mode), "TIFF"), 100)
    assert decoded.image is None
    assert decoded.error == f"{UNSUPPORTED_PIXELS}: {detail}"
