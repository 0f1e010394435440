"""Packing into Parquet shards: from a folder, a VOC tree, a COCO JSON and synthetic scenes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ccd_ray.io.corpus import discover, read_ground_truth, read_task_rows
from ccd_ray.io.decode import decode_image
from ccd_ray.io.packing import (
    SHARD_SCHEMA,
    coco_records,
    folder_records,
    synthetic_records,
    voc_records,
    write_shards,
)

FS = pafs.LocalFileSystem()


def _jpeg(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (value, value, value)).save(path, format="JPEG")


def test_write_shards_splits_and_round_trips(tmp_path):
    records = [(f"id-{i}", bytes([i]) * (i + 1), [f"c{i}"] if i % 2 else None) for i in range(5)]
    out = str(tmp_path / "nested" / "out")
    paths = write_shards(iter(records), FS, out, images_per_shard=2)
    assert paths == [f"{out}/shard-{i:05d}.parquet" for i in range(3)]
    tables = [pq.read_table(p) for p in paths]
    assert [t.num_rows for t in tables] == [2, 2, 1]
    assert all(t.schema.equals(SHARD_SCHEMA) for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    assert [(r["image_id"], r["image"], r["labels"]) for r in rows] == records


def test_write_shards_of_nothing_writes_nothing(tmp_path):
    assert write_shards([], FS, str(tmp_path / "empty"), 10) == []
    assert (tmp_path / "empty").is_dir()


def test_folder_records(tmp_path):
    _jpeg(tmp_path / "b.jpg", 1)
    _jpeg(tmp_path / "sub" / "a.JPEG", 2)
    (tmp_path / "notes.txt").write_text("x")
    records = list(folder_records(tmp_path))
    assert [(i, labels) for i, _, labels in records] == [("b.jpg", None), ("sub/a.JPEG", None)]
    assert records[0][1] == (tmp_path / "b.jpg").read_bytes()


def _voc_xml(names: list[str]) -> str:
    objects = "".join(f"<object><name> {n} </name><bndbox><xmin>1</xmin></bndbox></object>"
                      for n in names)
    return f"<annotation><filename>x.jpg</filename>{objects}</annotation>"


def test_voc_records(tmp_path):
    for stem, value in [("2007_000001", 10), ("2007_000002", 20), ("2007_000003", 30)]:
        _jpeg(tmp_path / "JPEGImages" / f"{stem}.jpg", value)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "2007_000001.xml").write_text(_voc_xml(["person", "dog", "person"]))
    (tmp_path / "Annotations" / "2007_000002.xml").write_text(_voc_xml([]))
    records = list(voc_records(tmp_path))
    assert [(i, labels) for i, _, labels in records] == [
        ("2007_000001", ["dog", "person"]), ("2007_000002", []), ("2007_000003", None)]
    assert records[1][1] == (tmp_path / "JPEGImages" / "2007_000002.jpg").read_bytes()


def test_voc_records_needs_a_voc_tree(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a VOC tree"):
        list(voc_records(tmp_path))


def test_coco_records(tmp_path):
    images = tmp_path / "val2017"
    for name, value in [("000000000002.jpg", 1), ("000000000001.jpg", 2), ("000000000003.jpg", 3)]:
        _jpeg(images / name, value)
    annotations = tmp_path / "instances_val2017.json"
    annotations.write_text(json.dumps({
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
                       {"id": 3, "name": "car"}],
        "images": [{"id": 2, "file_name": "000000000002.jpg"},
                   {"id": 1, "file_name": "000000000001.jpg"},
                   {"id": 3, "file_name": "000000000003.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 1},
                        {"image_id": 1, "category_id": 18}, {"image_id": 2, "category_id": 3}],
    }))
    records = list(coco_records(annotations, images))
    assert [(i, labels) for i, _, labels in records] == [
        ("000000000001", ["dog", "person"]), ("000000000002", ["car"]), ("000000000003", [])]
    assert records[0][1] == (images / "000000000001.jpg").read_bytes()


def test_synthetic_records_are_deterministic_pngs_with_labels():
    first = list(synthetic_records(4, seed=2, size=48, max_objects=2))
    assert first == list(synthetic_records(4, seed=2, size=48, max_objects=2))
    assert first != list(synthetic_records(4, seed=3, size=48, max_objects=2))
    assert [r[0] for r in first] == [f"synth-2-{i:06d}" for i in range(4)]
    for _, data, labels in first:
        assert data.startswith(b"\x89PNG")
        assert decode_image(data, 10**6).image.shape == (3, 48, 48)
        assert 1 <= len(labels) <= 2


def test_packed_voc_tree_reads_back_as_a_corpus(tmp_path):
    _jpeg(tmp_path / "voc" / "JPEGImages" / "a.jpg", 5)
    (tmp_path / "voc" / "Annotations").mkdir()
    (tmp_path / "voc" / "Annotations" / "a.xml").write_text(_voc_xml(["cat"]))
    out = str(tmp_path / "shards")
    write_shards(voc_records(tmp_path / "voc"), FS, out, 100)
    layout = discover(FS, out, 64)
    rows = [r for files in layout.tasks for t in read_task_rows(FS, layout, files)
            for r in t.to_pylist()]
    assert [(r["image_id"], r["error"]) for r in rows] == [("a", None)]
    assert np.asarray(decode_image(rows[0]["image"], 100).image).shape == (3, 4, 6)
    assert read_ground_truth(FS, layout) == {"a": ["cat"]}
