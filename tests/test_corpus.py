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
from corpus_builders import write_img2dataset

from ccd_ray.io.corpus import (
    ROW_SCHEMA,
    TRUNCATED_SHARD,
    UNREADABLE_SHARD,
    UNSUPPORTED_FORMAT,
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
        "._a.png": b"macOS resource fork: hidden, not a sample",
    })
    _write_tar(root / "shard-1.tar", {"e.png": _png(30), "e.json": b"{}"})
    (root / "broken.tar").write_bytes(b"\x00" * 10 + b"definitely not a tar")
    layout = discover(FS, str(root), 64)
    assert layout.kind == "webdataset"
    assert layout.tasks == [[f"{root}/{n}"] for n in ["broken.tar", "shard-0.tar", "shard-1.tar"]]

    # ids: the shard's name, then the sample key
    rows = {r["image_id"]: r for files in layout.tasks for r in _rows(layout, files)}
    assert set(rows) == {"shard-0/a", "shard-0/sub/b", "shard-0/c", "shard-0/d", "shard-1/e",
                         f"{root}/broken.tar"}
    assert rows["shard-0/a"]["image"] == _png(10) and rows["shard-0/a"]["error"] is None
    assert rows["shard-0/sub/b"]["image"] == _png(20)
    assert rows["shard-0/c"]["image"] is None
    assert rows["shard-0/c"]["error"] == "no image member in sample"
    # not an image, but that is for the decoder to say
    assert rows["shard-0/d"]["image"] == b"not really a jpeg" and rows["shard-0/d"]["error"] is None
    assert rows["shard-1/e"]["error"] is None
    assert rows[f"{root}/broken.tar"]["error"].startswith(UNREADABLE_SHARD)
    assert "\n" not in rows[f"{root}/broken.tar"]["error"]
    assert decode_image(rows["shard-0/a"]["image"], 100).image.shape == (3, 4, 5)

    assert read_ground_truth(FS, layout) == {"shard-0/a": ["cat"], "shard-0/sub/b": [],
                                             "shard-0/c": ["dog"]}


def test_tar_ids_are_unique_across_shards_with_the_same_keys(tmp_path):
    for shard in ("00000", "00001", "nested/00000"):
        (tmp_path / shard).parent.mkdir(parents=True, exist_ok=True)
        _write_tar(tmp_path / f"{shard}.tar", {
            f"{k:06d}.png": _png(k) for k in range(3)} | {
            f"{k:06d}.json": json.dumps({"labels": [shard]}).encode() for k in range(3)})
    layout = discover(FS, str(tmp_path), 64)
    ids = [r["image_id"] for files in layout.tasks for r in _rows(layout, files)]
    assert len(ids) == len(set(ids)) == 9
    assert ids[:3] == ["00000/000000", "00000/000001", "00000/000002"]
    assert "nested/00000/000002" in ids
    truth = read_ground_truth(FS, layout)
    assert sorted(truth) == sorted(ids) and truth["00001/000001"] == ["00001"]


def _truncated_tar(tmp_path, cut_in: str) -> str:
    """A tar of samples k0..k3 (png + json each) cut inside k2's png data, or right after
    k1's last member (a cut tarfile does not report by itself)."""
    members = {}
    for k in range(4):
        members[f"k{k}.png"] = _png(k)
        members[f"k{k}.json"] = json.dumps({"labels": [f"c{k}"]}).encode()
    path = tmp_path / "shard.tar"
    _write_tar(path, members)
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        k2 = tar.getmember("k2.png")
    end = k2.offset_data + len(_png(2)) // 2 if cut_in == "member" else k2.offset
    path.write_bytes(data[:end])
    return str(tmp_path)


@pytest.mark.parametrize("cut_in", ["member", "boundary"])
def test_samples_read_whole_before_a_tar_is_cut_are_kept(tmp_path, cut_in):
    root = _truncated_tar(tmp_path, cut_in)
    layout = discover(FS, root, 64)
    rows = [r for files in layout.tasks for r in _rows(layout, files)]
    assert [(r["image_id"], r["image"]) for r in rows[:2]] == [
        ("shard/k0", _png(0)), ("shard/k1", _png(1))]
    (cut,) = rows[2:]
    assert cut["image"] is None and cut["error"].startswith(TRUNCATED_SHARD + ": ")
    # the cut sample itself when the cut is inside it, else the shard
    assert cut["image_id"] == ("shard/k2" if cut_in == "member" else f"{root}/shard.tar")
    assert read_ground_truth(FS, layout) == {"shard/k0": ["c0"], "shard/k1": ["c1"]}


def test_detection_picks_the_format_the_files_show_and_refuses_a_mix(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(1))
    assert discover(FS, str(tmp_path), 64).found.startswith("images (detected): 1 files")
    _write_tar(tmp_path / "b.tar", {"k.png": _png(2)})
    layout = discover(FS, str(tmp_path), 64)
    assert layout.kind == "webdataset" and layout.tasks == [[str(tmp_path / "b.tar")]]
    assert layout.found == ("webdataset (detected): 1 .tar shards; 0 img2dataset sidecar "
                            "files and 1 other files not read")
    pq.write_table(pa.table({"image_id": ["a"], "image": [_png(1)]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="set data.corpus_format to webdataset or parquet"):
        discover(FS, str(tmp_path), 64)
    forced = discover(FS, str(tmp_path), 64, corpus_format="parquet")
    assert forced.kind == "parquet" and forced.tasks == [[f"{tmp_path}/c.parquet"]]
    assert forced.found.startswith("parquet (data.corpus_format): 1 .parquet shards")
    assert discover(FS, str(tmp_path), 64, "webdataset").tasks == [[f"{tmp_path}/b.tar"]]
    as_images = discover(FS, str(tmp_path), 64, "images")
    rows = {r["image_id"]: r["error"] for r in _rows(as_images, as_images.tasks[0])}
    assert rows["a.png"] is None and rows["b.tar"].startswith(UNSUPPORTED_FORMAT)
    with pytest.raises(ValueError, match="data.corpus_format 'tfrecord'"):
        discover(FS, str(tmp_path), 64, "tfrecord")
    with pytest.raises(FileNotFoundError, match=r"no \.tar files"):
        discover(FS, str(tmp_path / "c.parquet"), 64, "webdataset")


def test_corpus_format_key_is_validated_and_reaches_discovery(make_config, tmp_path):
    from ccd_ray.config import ConfigError
    from ccd_ray.io.corpus import corpus_layout

    assert make_config().data.corpus_format == "auto"
    with pytest.raises(ConfigError, match="data.corpus_format"):
        make_config("data.corpus_format=tfrecord")
    (tmp_path / "a.png").write_bytes(_png(1))
    _write_tar(tmp_path / "b.tar", {"k.png": _png(2)})
    cfg = make_config(f"data.corpus_uri={tmp_path}", "data.corpus_format=images")
    assert corpus_layout(cfg)[1].kind == "images"


IMG2DATASET = [
    [("000000000", _png(0), "a cat"), ("000000001", None, ""), ("000000002", _png(2), "")],
    [("000010000", _png(3), "a dog")],
]


@pytest.mark.parametrize("output_format,kind", [
    ("webdataset", "webdataset"), ("parquet", "parquet"), ("files", "images")])
def test_img2dataset_outputs_are_read_as_written(tmp_path, output_format, kind):
    """img2dataset's three output formats, with their sidecar .parquet and _stats.json: every
    downloaded image is a row, its failed downloads are not, and nothing else is."""
    root = str(tmp_path / output_format)
    write_img2dataset(FS, root, output_format, IMG2DATASET)
    layout = discover(FS, root, 64)
    assert layout.kind == kind
    rows = {r["image_id"]: r for files in layout.tasks for r in _rows(layout, files)}
    suffix = ".jpg" if kind == "images" else ""
    expected = {f"00000/000000000{suffix}": _png(0), f"00000/000000002{suffix}": _png(2),
                f"00001/000010000{suffix}": _png(3)}
    assert {i: (r["image"], r["error"]) for i, r in rows.items()} == {
        i: (data, None) for i, data in expected.items()}
    # the .parquet and _stats.json of each shard (and the .json/.txt of each image) are counted
    assert layout.found == {
        "webdataset": "webdataset (detected): 2 .tar shards; 4 img2dataset sidecar files and "
                      "0 other files not read",
        "parquet": "parquet (detected): 2 .parquet shards; 2 img2dataset sidecar files and "
                   "0 other files not read",
        "images": "images (detected): 3 files, 0 without an image suffix; 10 metadata files "
                  "not read"}[kind]
    assert read_ground_truth(FS, layout) == {}


def test_discover_image_folder_groups_files_per_task(tmp_path):
    names = ["a.png", "b.JPG", "sub/c.jpeg", "sub/deeper/d.webp", "e.bmp"]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_png(i))
    (tmp_path / "a.txt").write_text("a caption: part of a.png's sample, not a row")
    (tmp_path / "_SUCCESS.png").write_bytes(b"ignored: leading underscore")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.png").write_bytes(b"ignored: in a hidden folder")
    layout = discover(FS, str(tmp_path), files_per_task=2)
    assert layout.kind == "images"
    flat = [f for task in layout.tasks for f in task]
    assert [len(t) for t in layout.tasks] == [2, 2, 1]
    assert flat == sorted(f"{tmp_path}/{n}" for n in names)
    assert layout.found == "images (detected): 5 files, 0 without an image suffix; " \
        "1 metadata files not read"

    rows = [r for task in layout.tasks for r in _rows(layout, task)]
    assert sorted(r["image_id"] for r in rows) == sorted(names)  # ids are relative paths
    assert all(r["error"] is None for r in rows)
    assert read_ground_truth(FS, layout) == {}

    os.remove(tmp_path / "sub/deeper/d.webp")  # vanished: an error row, not an exception
    (row,) = _rows(layout, layout.tasks[2])
    assert row["image_id"] == "sub/deeper/d.webp" and row["image"] is None
    assert row["error"].startswith("unreadable file")


def test_a_folder_file_that_is_not_an_image_is_a_row_with_its_reason(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(1))
    (tmp_path / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "README").write_text("no suffix")
    layout = discover(FS, str(tmp_path), 64)
    rows = {r["image_id"]: r for r in _rows(layout, layout.tasks[0])}
    assert sorted(rows) == ["README", "a.png", "logo.svg"]
    assert rows["logo.svg"]["image"] is None
    assert rows["logo.svg"]["error"].startswith(f"{UNSUPPORTED_FORMAT}: .svg is not one of .jpg")
    assert rows["README"]["error"].startswith(f"{UNSUPPORTED_FORMAT}: no suffix")
    assert layout.found.startswith("images (detected): 3 files, 2 without an image suffix")


def test_read_tasks_carry_only_their_own_files(make_config, tmp_path, monkeypatch):
    """corpus_rows ships each read task its file names and a layout without the task list:
    what every task unpickles stays the same size however many files the corpus has."""
    import pickle

    from ccd_ray.stages import datasets

    class Recorder:
        def __init__(self, items, **_):
            self.items = items

        def map_batches(self, fn, **kwargs):
            self.kwargs = kwargs["fn_kwargs"]
            return self

    monkeypatch.setattr(datasets.ray.data, "from_items", Recorder)
    sizes = []
    for count in (10, 1000):
        root = tmp_path / str(count)
        root.mkdir()
        for i in range(count):
            (root / f"{i:05d}.png").write_bytes(b"")
        cfg = make_config(f"data.corpus_uri={root}", "data.files_per_task=10")
        shipped = datasets.corpus_rows(cfg)
        assert [item["files"] for item in shipped.items] == [
            [f"{root}/{i:05d}.png" for i in range(t, t + 10)] for t in range(0, count, 10)]
        assert len(shipped.kwargs["layout"].tasks) == 0
        sizes.append(len(pickle.dumps(shipped.kwargs["layout"])))
        rows = [r for item in shipped.items[:1] for t in datasets._read_task(
            pa.table({"files": [item["files"]]}), **shipped.kwargs) for r in t.to_pylist()]
        assert [r["image_id"] for r in rows] == [f"{i:05d}.png" for i in range(10)]
    assert sizes[1] - sizes[0] < 10  # the root's name is 2 characters longer


def test_discover_explains_an_empty_or_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(FS, str(tmp_path / "missing"), 64)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no .parquet, .tar or image files"):
        discover(FS, str(tmp_path), 64)


def test_a_run_lists_its_corpus_once_and_reads_its_manifest_after(make_config, tmp_path):
    """commit_manifest lists the corpus on the run's first start; every later corpus_layout of
    that run (each pass, a resume) reads the manifest: a file added since is not read, nor
    listed. Another run id, or another corpus under this run id, lists the corpus."""
    from ccd_ray.config import ConfigError
    from ccd_ray.io.corpus import commit_manifest, corpus_layout
    from ccd_ray.io.storage import RunStore

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"{i}.png").write_bytes(_png(i))
    cfg = make_config(f"data.corpus_uri={corpus}", f"data.output_uri={tmp_path / 'out'}",
                      "data.files_per_task=2", "run_id=r1")
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    _, first, listed = commit_manifest(cfg, store, work_done=False)
    assert listed and [len(t) for t in first.tasks] == [2, 1]
    (corpus / "9.png").write_bytes(_png(9))

    _, again, listed = commit_manifest(cfg, store, work_done=True)
    assert not listed and again == first
    assert corpus_layout(cfg)[1] == first
    assert sum(map(len, corpus_layout(make_config(
        f"data.corpus_uri={corpus}", f"data.output_uri={tmp_path / 'out'}",
        "run_id=r2"))[1].tasks)) == 4
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes(_png(1))
    moved = make_config(f"data.corpus_uri={other}", f"data.output_uri={tmp_path / 'out'}",
                        "run_id=r1")
    assert corpus_layout(moved)[1].root == str(other)
    # once work is committed another corpus is refused; before, it replaces the manifest
    with pytest.raises(ConfigError, match="use a new run id"):
        commit_manifest(moved, store, work_done=True)
    _, replaced, listed = commit_manifest(moved, store, work_done=False)
    assert listed and replaced.root == str(other) and corpus_layout(moved)[1] == replaced
