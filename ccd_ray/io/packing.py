"""Pack images (a folder, a Pascal VOC tree, a COCO instances JSON, or synthetic scenes) into
Parquet shards of the corpus format: image_id, image (encoded bytes), labels (ground truth)."""

from __future__ import annotations

import json
import posixpath
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ccd_ray.io.corpus import IMAGE_SUFFIXES

SHARD_SCHEMA = pa.schema([("image_id", pa.string()), ("image", pa.binary()),
                          ("labels", pa.list_(pa.string()))])

Record = tuple[str, bytes, list[str] | None]


def folder_records(root: Path) -> Iterator[Record]:
    """Every image file below root; no ground truth."""
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        yield str(path.relative_to(root)), path.read_bytes(), None


def voc_records(root: Path) -> Iterator[Record]:
    """A VOC tree (JPEGImages/ + Annotations/*.xml): labels are the annotated object names."""
    images = root / "JPEGImages"
    if not images.is_dir():
        raise FileNotFoundError(f"{root} is not a VOC tree: no JPEGImages/ folder")
    for path in sorted(images.glob("*.jpg")):
        xml_path = root / "Annotations" / (path.stem + ".xml")
        labels = None
        if xml_path.is_file():
            tree = ET.parse(xml_path)
            labels = sorted({obj.findtext("name").strip() for obj in tree.iter("object")})
        yield path.stem, path.read_bytes(), labels


def coco_records(annotations: Path, image_dir: Path) -> Iterator[Record]:
    """A COCO instances JSON + its image folder: labels are the category names present."""
    data = json.loads(annotations.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    present: dict[int, set[str]] = {}
    for ann in data.get("annotations", []):
        present.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    for image in sorted(data["images"], key=lambda i: i["file_name"]):
        path = image_dir / image["file_name"]
        yield (Path(image["file_name"]).stem, path.read_bytes(),
               sorted(present.get(image["id"], set())))


def synthetic_records(count: int, seed: int, size: int, max_objects: int,
                      scale: tuple[float, float] = (0.25, 0.45), **scene_options: Any
                      ) -> Iterator[Record]:
    """Synthetic scenes (demo.scenes.make_scenes; scene_options: its class_probs, clutter)."""
    from ccd_ray.demo.scenes import make_scenes
    from ccd_ray.io.decode import encode_png

    for i, scene in enumerate(make_scenes(count, seed, size=size, max_objects=max_objects,
                                          scale=scale, **scene_options)):
        yield f"synth-{seed}-{i:06d}", encode_png(scene.image), scene.labels


def write_shards(records: Iterable[Record], fs: pafs.FileSystem, out_dir: str,
                 images_per_shard: int) -> list[str]:
    """Write records as shard-00000.parquet, ... (each written whole, then closed); return paths."""
    fs.create_dir(out_dir, recursive=True)
    paths: list[str] = []
    batch: list[Record] = []

    def flush() -> None:
        if not batch:
            return
        ids, images, labels = zip(*batch)
        table = pa.Table.from_pydict({"image_id": list(ids), "image": list(images),
                                      "labels": list(labels)}, schema=SHARD_SCHEMA)
        path = posixpath.join(out_dir, f"shard-{len(paths):05d}.parquet")
        with fs.open_output_stream(path) as stream:
            pq.write_table(table, stream, row_group_size=max(1, min(len(batch), 256)))
        paths.append(path)
        batch.clear()

    for record in records:
        batch.append(record)
        if len(batch) >= images_per_shard:
            flush()
    flush()
    return paths
