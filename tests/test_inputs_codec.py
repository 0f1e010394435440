"""The stored training inputs (ccd_ray.io.inputs_codec): encoded once, decoded by every reader,
and the in-process executor trains on exactly what the Ray path decodes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from ccd_ray.config import CCDConfig, ConfigError
from ccd_ray.demo.scenes import make_scenes
from ccd_ray.io.decode import encode_png
from ccd_ray.io.inputs_codec import decode_inputs, encode_inputs, resize_inputs
from ccd_ray.io.storage import RunStore, write_bytes
from ccd_ray.method.classifier import resize_images
from ccd_ray.method.local import TrainingInputs
from ccd_ray.stages.labeling import raw_stage
from ccd_ray.stages.pipeline import check_run_config
from ccd_ray.stages.train_inputs import inputs_batch

# JPEG q95 of the synthetic scenes at 64 px: what the stored inputs may lose (0..255 scale).
# Measured 1.6 (mean; the largest single error 24, at sharp shape edges); the bound leaves
# room for another libjpeg, while a wrong channel order or layout (tens on average) fails.
JPEG_MEAN_ABS_BOUND = 3.0


def _scenes(count: int, size: int) -> np.ndarray:
    """uint8 count x 3 x size x size synthetic scenes (flat shapes on textured ground)."""
    images = [torch.from_numpy(s.image).permute(2, 0, 1) for s in make_scenes(count, seed=5)]
    return torch.nn.functional.interpolate(torch.stack(images).float(), size=(size, size),
                                           mode="bilinear", antialias=True).round().to(
        torch.uint8).numpy()


def test_png_round_trip_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3, 24, 24), dtype=np.uint8)
    encoded = encode_inputs(pixels, "png", 95)
    assert len(encoded) == 5 and all(e.startswith(b"\x89PNG") for e in encoded)
    np.testing.assert_array_equal(decode_inputs(encoded, 24), pixels)


def test_jpeg_round_trip_is_close_and_smaller_than_png():
    pixels = _scenes(8, 64)
    jpeg = encode_inputs(pixels, "jpeg", 95)
    assert all(e.startswith(b"\xff\xd8") for e in jpeg)
    decoded = decode_inputs(jpeg, 64)
    assert decoded.dtype == np.uint8 and decoded.shape == pixels.shape
    error = np.abs(decoded.astype(np.int16) - pixels).mean()
    assert 0 < error <= JPEG_MEAN_ABS_BOUND, error
    assert sum(map(len, jpeg)) < sum(map(len, encode_inputs(pixels, "png", 95)))
    # a lower quality loses more: the quality reaches the encoder
    coarse = decode_inputs(encode_inputs(pixels, "jpeg", 20), 64)
    assert np.abs(coarse.astype(np.int16) - pixels).mean() > error


def test_decoding_refuses_an_image_of_another_size_or_not_an_image():
    encoded = encode_inputs(np.zeros((2, 3, 8, 8), np.uint8), "png", 95)
    with pytest.raises(ValueError, match="^train input 0: a 8x8 RGB image, expected 16x16 RGB"):
        decode_inputs(encoded, 16)
    with pytest.raises(ValueError, match="^train input 1: does not decode"):
        decode_inputs([encoded[0], b"not an image"], 8)
    assert decode_inputs([], 8).shape == (0, 3, 8, 8)


def test_encoding_refuses_unknown_settings_and_shapes():
    pixels = np.zeros((1, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="encoding 'webp'"):
        encode_inputs(pixels, "webp", 95)
    with pytest.raises(ValueError, match="quality 0"):
        encode_inputs(pixels, "jpeg", 0)
    with pytest.raises(ValueError, match="uint8 N x 3 x S x S"):
        encode_inputs(pixels.astype(np.float32), "png", 95)


@pytest.mark.parametrize("override, message", [
    ("train.inputs_encoding=webp", "train.inputs_encoding"),
    ("train.inputs_quality=0", "train.inputs_quality"),
    ("train.inputs_quality=101", "train.inputs_quality")])
def test_config_validates_the_inputs_settings(make_config, override, message):
    with pytest.raises(ConfigError, match=message):
        make_config(override)


@pytest.mark.parametrize("encoding", ["jpeg", "png"])
def test_in_process_inputs_are_the_pixels_the_stage_stores(make_config, encoding):
    """TrainingInputs.from_images (sweeps, the parity oracle) holds exactly what a reader
    decodes from the Ray stage's rows: the same resize, encoding and decode."""
    cfg = make_config("train.image_size=40", f"train.inputs_encoding={encoding}",
                      "train.inputs_quality=80")
    scenes = make_scenes(4, seed=2)
    ids = [f"s{i}" for i in range(4)]
    batch = pa.table({"image_id": ids, "image": [encode_png(s.image) for s in scenes],
                      "error": [None] * 4})
    stored = inputs_batch(batch, cfg.to_dict())
    images = [torch.from_numpy(s.image).permute(2, 0, 1) for s in scenes]
    local = TrainingInputs.from_images(ids, images, cfg)
    np.testing.assert_array_equal(decode_inputs(stored.column("image").to_pylist(), 40),
                                  local.pixels)
    assert stored.column("holdout").to_pylist() == local.holdout.tolist()
    resized = resize_inputs(images, 40)
    # lossy jpeg: the decoded pixels, not the resized ones, are what both paths train on
    assert np.array_equal(local.pixels, resized) == (encoding == "png")


@pytest.mark.parametrize("height, width, size", [(96, 96, 64), (96, 96, 224), (375, 500, 224),
                                                 (50, 300, 64)])
def test_the_stored_resize_matches_the_exported_classifiers_resize(height, width, size):
    """resize_inputs (Pillow, what the stage stores) and classifier.resize_images (torch, inside
    the exported classifier) differ by at most 1 in a pixel value, shrinking and enlarging;
    a missing antialias or a transposed axis would differ by tens."""
    image = np.random.default_rng(height).integers(0, 256, (3, height, width), dtype=np.uint8)
    image[:, height // 3:, : width // 2] //= 4  # an edge, so a shifted grid shows too
    ours = resize_inputs([image], size).astype(int)
    theirs = resize_images([torch.from_numpy(image)], size).numpy().astype(int)
    assert ours.shape == theirs.shape == (1, 3, size, size)
    assert np.abs(ours - theirs).max() <= 1


def test_a_run_stored_before_the_encoded_inputs_refuses_a_rerun(tmp_path):
    """An older run's train-inputs hold raw `pixels`; its config.yaml lacks the inputs keys,
    so a rerun of the same run id stops at the config check, before any stage reads them."""
    cfg = CCDConfig()
    cfg.classes.names = ["cat", "dog"]
    store = RunStore.open(str(tmp_path), "r", cfg.data)
    old = cfg.to_dict()
    del old["train"]["inputs_encoding"], old["train"]["inputs_quality"]
    write_bytes(store.fs, store.path("config.yaml"), yaml.safe_dump(old).encode())
    store.commit(raw_stage(0), store.begin(raw_stage(0)))
    with pytest.raises(ConfigError, match="different settings in \\['train'\\]"):
        check_run_config(cfg, store)
