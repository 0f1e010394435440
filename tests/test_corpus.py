"""Corpus discovery for the three layouts, reading rows without ever failing on bad data, and
the ground truth some corpora carry."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ccd_ray.io.corpus import (
    ROW_SCHEMA,
    UNREADABLE_SHARD,
    CorpusLayout,
    discover,
    read_ground_truth,
    read_task_rows,
)
from ccd_ray.io.decode import decode_image, encode_png
from ccd_ray.io.packing import write_shards

FS = pafs.LocalFileSystem()


def _png(value: int) -> bytes:
    import numpy as np

    return encode_png(np.full((4, 5, 3), value, dtype=np.uint8))


def _rows(layout: CorpusLayout, files: list[str]) -> list[dict]:
    tables = list(read_task_rows(FS, layout, files))
    assert all(t.schema.equals(ROW_SCHEMA) for t in tables)
    return [row for t in tables for row in t.to_pylist()]


def _write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def parquet_corpus(tmp_path):
    root = str(tmp_path / "pq")
    records = [(f"img-{i}", _png(i), ["cat"] if i % 2 else ["dog", "cat"]) for i in range(5)]
    write_shards(records, FS, root, images_per_shard=2)
    return root, records


def test_discover_parquet_layout(parquet_corpus):
    root, _ = parquet_corpus
    layout = discover(FS, root, files_per_task=64)
    assert layout.kind == "parquet" and layout.root == root
    assert layout.tasks == [[f"{root}/shard-{i:05d}.parquet"] for i in range(3)]


def test_parquet_rows_and_ground_truth(parquet_corpus):
    root, records = parquet_corpus
    layout = discover(FS, root, 64)
    rows = [r for files in layout.tasks for r in _rows(layout, files)]
    assert [(r["image_id"], r["image"], r["error"]) for r in rows] == \
        [(i, b, None) for i, b, _ in records]
    assert read_ground_truth(FS, layout) == {i: labels for i, _, labels in records}


def test_parquet_shard_without_labels_has_no_ground_truth(tmp_path):
    root = tmp_path / "nolabels"
    root.mkdir()
    pq.write_table(pa.table({"image_id": ["a"], "image": [_png(1)]}), root / "s.parquet")
    layout = discover(FS, str(root), 64)
    assert _rows(layout, layout.tasks[0])[0]["image_id"] == "a"
    assert read_ground_truth(FS, layout) == {}


def test_unreadable_missing_and_malformed_shards_become_error_rows(parquet_corpus):
    root, records = parquet_corpus
    with open(f"{root}/x.parquet", "wb") as f:
        f.write(b"garbage, not parquet")
    pq.write_table(pa.table({"image_id": ["y0"], "pixels": [b"\x00"]}), f"{root}/y.parquet")
    layout = discover(FS, root, 64)
    assert len(layout.tasks) == 5
    os.remove(f"{root}/shard-00002.parquet")  # vanished between discovery and reading

    rows = {r["image_id"]: r for files in layout.tasks for r in _rows(layout, files)}
    for name, detail in [("x.parquet", ""), ("y.parquet", "missing column(s) ['image']"),
                         ("shard-00002.parquet", "")]:
        row = rows[f"{root}/{name}"]
        assert row["image"] is None and row["error"].startswith(UNREADABLE_SHARD + ": ")
        assert detail in row["error"] and len(row["error"]) <= 300
    good = {i for i, r in rows.items() if r["error"] is None}
    assert good == {i for i, _, _ in records[:4]}
    # a task of several shards keeps going after a bad one
    mixed = _rows(layout, [f"{root}/x.parquet", f"{root}/shard-00000.parquet"])
    assert [r["error"] is None for r in mixed] == [False, True, True]
    # ground truth skips what it cannot read
    truth = read_ground_truth(FS, layout)
    assert truth == {i: labels for i, _, labels in records[:4]}


def test_discover_webdataset_layout_and_rows(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    _write_tar(root / "shard-0.tar", {
        "a.png": _png(10), "a.json": json.dumps({"labels": ["cat"]}).encode(),
        "sub/b.png": _png(20), "sub/b.json": json.dumps({"labels": []}).encode(),
        "sub/b.txt": b"a caption",
        "c.json": json.dumps({"labels": ["dog"]}).encode(),  # no image member
        "d.JPG": b"not really a jpeg",
    })
    _write_tar(root / "shard-1.tar", {"e.png": _png(30), "e.json": b"{}"})
    (root / "broken.tar").write_bytes(b"\x00" * 10 + b"definitely not a tar")
    layout = discover(FS, str(root), 64)
    assert layout.kind == "webdataset"
    assert layout.tasks == [[f"{root}/{n}"] for n in ["broken.tar", "shard-0.tar", "shard-1.tar"]]

    rows = {r["image_id"]: r for files in layout.tasks for r in _rows(layout, files)}
    assert rows["a"]["image"] == _png(10) and rows["a"]["error"] is None
    assert rows["sub/b"]["image"] == _png(20)
    assert rows["c"]["image"] is None and rows["c"]["error"] == "no image member in sample"
    # not an image, but that is for the decoder to say
    assert rows["d"]["image"] == b"not really a jpeg" and rows["d"]["error"] is None
    assert rows["e"]["error"] is None
    assert rows[f"{root}/broken.tar"]["error"].startswith(UNREADABLE_SHARD)
    assert decode_image(rows["a"]["image"], 100).image.shape == (3, 4, 5)

    assert read_ground_truth(FS, layout) == {"a": ["cat"], "sub/b": [], "c": ["dog"]}


def test_parquet_wins_over_tar_and_images(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(1))
    _write_tar(tmp_path / "b.tar", {"k.png": _png(2)})
    assert discover(FS, str(tmp_path), 64).kind == "webdataset"
    pq.write_table(pa.table({"image_id": ["a"], "image": [_png(1)]}), tmp_path / "c.parquet")
    assert discover(FS, str(tmp_path), 64).kind == "parquet"


def test_discover_image_folder_groups_files_per_task(tmp_path):
    names = ["a.png", "b.JPG", "sub/c.jpeg", "sub/deeper/d.webp", "e.bmp"]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_png(i))
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "_SUCCESS.png").write_bytes(b"ignored: leading underscore")
    layout = discover(FS, str(tmp_path), files_per_task=2)
    assert layout.kind == "images"
    flat = [f for task in layout.tasks for f in task]
    assert [len(t) for t in layout.tasks] == [2, 2, 1]
    assert flat == sorted(f"{tmp_path}/{n}" for n in names)

    rows = [r for task in layout.tasks for r in _rows(layout, task)]
    assert sorted(r["image_id"] for r in rows) == sorted(names)  # ids are relative paths
    assert all(r["error"] is None for r in rows)
    assert read_ground_truth(FS, layout) == {}

    os.remove(tmp_path / "sub/deeper/d.webp")  # vanished: an error row, not an exception
    (row,) = _rows(layout, layout.tasks[2])
    assert row["image_id"] == "sub/deeper/d.webp" and row["image"] is None
    assert row["error"].startswith("unreadable file")


def test_discover_explains_an_empty_or_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(FS, str(tmp_path / "missing"), 64)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no .parquet, .tar or image files"):
        discover(FS, str(tmp_path), 64)
