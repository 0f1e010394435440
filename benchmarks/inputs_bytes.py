"""What the train-inputs stage stores per image, against the corpus it came from, and how fast
its readers decode it: the stored encodings (train.inputs_encoding jpeg at
train.inputs_quality 95, png) and raw uint8 (3 x S x S bytes, the stage's former format).

The corpus: --images synthetic photos of 500 x 375 (the SynthScenes shapes and colours, drawn
at 500 px, on a 1/f colour texture, the power spectrum of natural images, plus sensor-like
noise), saved as JPEG quality 90 (4:2:0, as web corpora are), in memory. Each image goes
through the stage's own path (io.decode.decode_image with the default data.max_image_side,
io.inputs_codec.resize_inputs to S, io.inputs_codec.encode_inputs); decoding is
io.inputs_codec.decode_inputs, timed in this one process (one CPU: a Ray Data worker's rate),
the best of --repeats passes.

    python benchmarks/inputs_bytes.py [--images 200] [--sizes 224,448] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from ccd_ray.config import DataConfig
from ccd_ray.demo.scenes import CLASS_NAMES, make_scene
from ccd_ray.io.decode import decode_image
from ccd_ray.io.inputs_codec import decode_inputs, encode_inputs, resize_inputs

WIDTH, HEIGHT = 500, 375
CORPUS_QUALITY = 90


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """side x side x 3 zero-mean texture with a 1/f amplitude spectrum: one luminance field
    and two weaker colour fields, as photos vary more in brightness than in hue."""
    fy, fx = np.meshgrid(np.fft.fftfreq(side), np.fft.rfftfreq(side), indexing="ij")
    falloff = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / side)
    fields = []
    for _ in range(3):
        spectrum = (rng.normal(size=falloff.shape) + 1j * rng.normal(size=falloff.shape))
        field = np.fft.irfft2(spectrum * falloff, s=(side, side))
        fields.append(field / field.std())
    luma, red, blue = fields
    return np.stack([luma * 28 + red * 10, luma * 28, luma * 28 + blue * 10], axis=-1)


def corpus(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        scene = make_scene(rng, WIDTH, CLASS_NAMES, int(rng.integers(1, 4)), (0.15, 0.4))
        pixels = scene.image.astype(np.float64) + _texture(rng, WIDTH) \
            + rng.normal(0, 3, scene.image.shape)
        photo = np.clip(pixels[:HEIGHT], 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="JPEG", quality=CORPUS_QUALITY)
        images.append(buffer.getvalue())
    return images


def best_seconds(repeats: int, work, *args) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def raw_encode(pixels: np.ndarray, encoding: str, quality: int) -> list[bytes]:
    return [p.tobytes() for p in pixels]


def raw_decode(stored: list[bytes], size: int) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8).reshape(3, size, size) for b in stored])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--sizes", default="224,448", help="comma-separated train.image_size values")
    p.add_argument("--quality", type=int, default=95, help="train.inputs_quality of jpeg")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = DataConfig()
    files = corpus(args.images, args.seed)
    corpus_bytes = sum(map(len, files))
    decoded = [decode_image(f, data.max_image_pixels, data.max_image_side).image for f in files]
    print(f"corpus: {args.images} JPEG q{CORPUS_QUALITY} images of {WIDTH}x{HEIGHT}, "
          f"{corpus_bytes / args.images / 1000:.1f} KB an image\n")
    print("| train.image_size | stored as | KB an image | x corpus bytes | encode images/s "
          "(1 CPU) | decode images/s (1 CPU) | mean abs error (0..255) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size in [int(s) for s in args.sizes.split(",")]:
        pixels = resize_inputs(decoded, size)
        for name, encoding, encode, decode in [
                ("raw uint8", None, raw_encode, raw_decode),
                (f"jpeg q{args.quality}", "jpeg", encode_inputs, decode_inputs),
                ("png", "png", encode_inputs, decode_inputs)]:
            stored = encode(pixels, encoding, args.quality)
            encode_s = best_seconds(args.repeats, encode, pixels, encoding, args.quality)
            decode_s = best_seconds(args.repeats, decode, stored, size)
            error = np.abs(decode(stored, size).astype(np.int16) - pixels).mean()
            total = sum(map(len, stored))
            print(f"| {size} | {name} | {total / args.images / 1000:.1f} | "
                  f"{total / corpus_bytes:.2f} | {args.images / encode_s:,.0f} | "
                  f"{args.images / decode_s:,.0f} | {error:.2f} |")


if __name__ == "__main__":
    main()
