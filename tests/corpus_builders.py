"""Corpora as users have them, generated (no committed binaries): img2dataset's three output
layouts as its writer (img2dataset/writer.py) lays them out, and a messy corpus of odd and
broken files with the outcome each must have, for the corpus-reading tests."""

from __future__ import annotations

import io
import json
import posixpath
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from conftest import image_zoo
from PIL import Image

from ccd_ray.io.corpus import NO_IMAGE_MEMBER, TRUNCATED_SHARD, UNREADABLE_SHARD, UNSUPPORTED_FORMAT
from ccd_ray.io.decode import NOT_AN_IMAGE, UNSUPPORTED_PIXELS
from ccd_ray.io.storage import write_bytes


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- img2dataset: per sample a key (shard id + index), the jpg bytes (None: the URL failed),
# a caption; the metadata columns its writer stores ---

def _meta(key: str, jpg: bytes | None, caption: str) -> dict:
    return {"url": f"https://example.com/{key}.jpg", "caption": caption, "key": key,
            "status": "success" if jpg is not None else "failed_to_download",
            "error_message": None if jpg is not None else "HTTP Error 404: Not Found",
            "width": 8 if jpg is not None else None, "height": 8 if jpg is not None else None}


def write_img2dataset(fs: pafs.FileSystem, root: str, output_format: str,
                      shards: list[list[tuple[str, bytes | None, str]]]) -> None:
    """img2dataset's output of output_format ("webdataset", "parquet" or "files") for shards
    of (key, jpg bytes or None for a failed download, caption) samples, with save_caption."""
    for shard_id, samples in enumerate(shards):
        name = posixpath.join(root, f"{shard_id:05d}")
        metas = [_meta(*sample) for sample in samples]
        if output_format == "parquet":  # ParquetSampleWriter: key, jpg, txt + the metadata
            rows = [{"key": m["key"], "jpg": jpg, "txt": caption if jpg else None, **m}
                    for m, (_, jpg, caption) in zip(metas, samples)]
            write_bytes(fs, name + ".parquet", _parquet(pa.Table.from_pylist(rows)))
        else:
            ok = [(m, jpg, caption) for m, (_, jpg, caption) in zip(metas, samples) if jpg]
            members = [(f"{m['key']}.{ext}", data) for m, jpg, caption in ok
                       for ext, data in (("jpg", jpg), ("txt", caption.encode()),
                                         ("json", json.dumps(m, indent=4).encode()))]
            if output_format == "webdataset":
                write_bytes(fs, name + ".tar", tar_bytes(members))
            else:  # FilesSampleWriter: a folder per shard
                for member, data in members:
                    write_bytes(fs, posixpath.join(name, member), data)
            write_bytes(fs, name + ".parquet", _parquet(pa.Table.from_pylist(metas)))
        stats = {"count": len(samples), "successes": sum(s[1] is not None for s in samples)}
        write_bytes(fs, name + "_stats.json", json.dumps(stats).encode())


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# --- the messy corpus: (relative path, bytes, expected outcome); an outcome is ("ok", (H, W))
# or (stage, reason prefix) with stage "read" or "decode" ---

MAX_SIDE = 1024


def _exif_rotated_jpeg() -> bytes:
    """A photo stored 52 wide x 36 high with EXIF Orientation 6: displayed 36 x 52."""
    img = Image.fromarray(np.full((36, 52, 3), 120, np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif)


def messy_files() -> list[tuple[str, bytes, tuple]]:
    """Every row kind of a real, messy corpus: photographs in each format, odd modes, broken
    files, an SVG, float TIFFs, EXIF rotation, unicode names and nested folders."""
    from ccd_ray.demo.scenes import make_scenes

    scene = Image.fromarray(make_scenes(1, seed=4, size=48)[0].image)
    shape = (48, 48)
    files = [(f"zoo/{name}.{'jpg' if 'jpeg' in name else 'png'}", data,
              ("ok", (1, 1) if name == "mode-one-pixel" else (64, 64)) if reason is None
              else ("decode", reason))
             for name, data, reason in image_zoo() if data is not None]
    frames = [scene, scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    gradient = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    files += [
        ("photos/scene.webp", encode(scene, "WEBP"), ("ok", shape)),
        ("photos/scene.bmp", encode(scene, "BMP"), ("ok", shape)),
        ("photos/scene.tiff", encode(scene, "TIFF"), ("ok", shape)),
        ("photos/deep-16bit.png", encode(Image.fromarray(
            (gradient * 60000).astype(np.uint16)), "PNG"), ("ok", shape)),
        ("photos/animated.gif", encode(frames[0], "GIF", save_all=True,
                                       append_images=frames[1:]), ("ok", shape)),
        ("photos/wide-10000x10.png", encode(Image.new("RGB", (10_000, 10), (40, 90, 140)),
                                            "PNG"), ("ok", (1, MAX_SIDE))),
        ("photos/float-0-1.tif", encode(Image.fromarray(gradient, "F"), "TIFF"), ("ok", shape)),
        ("photos/float-0-1000.tif", encode(Image.fromarray(gradient * 1000, "F"), "TIFF"),
         ("decode", UNSUPPORTED_PIXELS)),
        ("photos/phone-exif-6.jpg", _exif_rotated_jpeg(), ("ok", (52, 36))),
        ("photos/error-page.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
         ("decode", NOT_AN_IMAGE)),
        ("photos/drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>',
         ("read", UNSUPPORTED_FORMAT)),
        ("café/фото 1.jpg", encode(scene, "JPEG"), ("ok", shape)),
        ("a/b/c/nested.png", encode(scene, "PNG"), ("ok", shape)),
    ]
    return files


def write_messy_folder(fs: pafs.FileSystem, root: str) -> dict[str, tuple]:
    """The messy corpus as a plain folder, with files that are not rows (a caption beside its
    image, hidden files and folders, a Spark marker); image_id -> expected outcome."""
    files = messy_files()
    for path, data, _ in files:
        write_bytes(fs, posixpath.join(root, path), data)
    expected = {path: outcome for path, _, outcome in files}
    for extra in ("photos/scene.txt", ".DS_Store", "_SUCCESS", ".ipynb_checkpoints/x.png"):
        write_bytes(fs, posixpath.join(root, extra), b"not a row")
    write_bytes(fs, posixpath.join(root, "notes.md"), b"# a readme")
    expected["notes.md"] = ("read", UNSUPPORTED_FORMAT)
    return expected


def write_messy_webdataset(fs: pafs.FileSystem, root: str) -> dict[str, tuple]:
    """The messy corpus as img2dataset-style tars (each with its .parquet and _stats.json
    beside it) whose keys restart at 000000 in each shard, plus a tar cut short and one that is
    not a tar; image_id -> expected outcome."""
    files = messy_files()
    half = len(files) // 2
    expected: dict[str, tuple] = {}
    for shard_id, shard in enumerate((files[:half], files[half:])):
        members, metas = [], []
        for index, (path, data, outcome) in enumerate(shard):
            key = f"{index:06d}"
            ext = posixpath.splitext(path)[1].lstrip(".")
            members += [(f"{key}.{ext}", data), (f"{key}.txt", path.encode())]
            metas.append({"key": key, "status": "success", "caption": path})
            expected[f"{shard_id:05d}/{key}"] = (("read", NO_IMAGE_MEMBER) if ext == "svg"
                                                  else outcome)
        name = posixpath.join(root, f"{shard_id:05d}")
        write_bytes(fs, name + ".tar", tar_bytes(members))
        write_bytes(fs, name + ".parquet", _parquet(pa.Table.from_pylist(metas)))
        write_bytes(fs, name + "_stats.json", json.dumps({"count": len(shard)}).encode())
    png = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    whole = tar_bytes([(f"{i:06d}.png", png) for i in range(3)])
    cut = 2 * 1024 + 512 + len(png) // 2  # inside the third member's data (header + data
    # block a member): the first two samples are whole
    write_bytes(fs, posixpath.join(root, "00002.tar"), whole[:cut])
    expected |= {"00002/000000": ("ok", (8, 8)), "00002/000001": ("ok", (8, 8)),
                 "00002/000002": ("read", TRUNCATED_SHARD)}
    garbage = posixpath.join(root, "00003.tar")
    write_bytes(fs, garbage, b"<html>503 Service Unavailable</html>")
    expected[garbage] = ("read", UNREADABLE_SHARD)
    return expected
