"""Read a corpus of image shards into rows (image_id, image bytes, error), never failing on
bad data.

Three layouts, told apart by the files under the corpus URI:
- Parquet shards (`*.parquet`) with `image_id` (string) and `image` (bytes) columns, and
  optionally `labels` (list of class names, ground truth for evaluation only);
- WebDataset tar shards (`*.tar`): members grouped by key, an image member (`.jpg`, `.png`,
  ...) plus optional `.json` (its `labels` list is ground truth) and `.txt`;
- anything else: a folder or prefix of image files, the image_id being the relative path.

A shard that cannot be opened or parsed becomes one error row (image_id = its path), so
the job records it and goes on."""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ccd_ray.config import CCDConfig
from ccd_ray.io.storage import filesystem_for, list_files, read_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ROW_SCHEMA = pa.schema([("image_id", pa.string()), ("image", pa.binary()),
                        ("error", pa.string())])
UNREADABLE_SHARD = "unreadable shard"


@dataclass(frozen=True)
class CorpusLayout:
    kind: str            # "parquet" | "webdataset" | "images"
    root: str
    tasks: list[list[str]]  # files read by each read task


def discover(fs: pafs.FileSystem, root: str, files_per_task: int) -> CorpusLayout:
    """Find the corpus layout under root; raise a clear error if there is nothing to read."""
    try:
        files = list_files(fs, root)
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus {root!r} does not exist") from None
    parquet = [f for f in files if f.endswith(".parquet")]
    tars = [f for f in files if f.endswith(".tar")]
    if parquet:
        return CorpusLayout("parquet", root, [[f] for f in parquet])
    if tars:
        return CorpusLayout("webdataset", root, [[f] for f in tars])
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise FileNotFoundError(f"corpus {root!r} holds no .parquet, .tar or image files")
    tasks = [images[i:i + files_per_task] for i in range(0, len(images), files_per_task)]
    return CorpusLayout("images", root, tasks)


def _table(ids: list[str], images: list[bytes | None], errors: list[str | None]) -> pa.Table:
    return pa.Table.from_pydict({"image_id": ids, "image": images, "error": errors},
                                schema=ROW_SCHEMA)


def _shard_error(path: str, exc: BaseException) -> pa.Table:
    return _table([path], [None], [f"{UNREADABLE_SHARD}: {type(exc).__name__}: {exc}"[:300]])


def _parquet_rows(fs: pafs.FileSystem, path: str) -> Iterator[pa.Table]:
    with fs.open_input_file(path) as handle:
        shard = pq.ParquetFile(handle)
        missing = {"image_id", "image"} - set(shard.schema_arrow.names)
        if missing:
            raise ValueError(f"missing column(s) {sorted(missing)}")
        for group in range(shard.num_row_groups):
            table = shard.read_row_group(group, columns=["image_id", "image"])
            yield _table(table.column("image_id").to_pylist(), table.column("image").to_pylist(),
                         [None] * table.num_rows)


def _webdataset_members(data: bytes) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = posixpath.basename(member.name)
            key, _, ext = name.partition(".")
            folder = posixpath.dirname(member.name)
            sample = samples.setdefault(posixpath.join(folder, key), {})
            sample[ext.lower()] = tar.extractfile(member).read()
    return samples


def _webdataset_rows(fs: pafs.FileSystem, path: str) -> Iterator[pa.Table]:
    samples = _webdataset_members(read_bytes(fs, path))
    ids, images, errors = [], [], []
    for key, members in samples.items():
        image_ext = next((e for e in members if "." + e in IMAGE_SUFFIXES), None)
        ids.append(key)
        images.append(members.get(image_ext) if image_ext else None)
        errors.append(None if image_ext else "no image member in sample")
    yield _table(ids, images, errors)


def _image_file_rows(fs: pafs.FileSystem, root: str, paths: list[str]) -> Iterator[pa.Table]:
    ids, images, errors = [], [], []
    for path in paths:
        ids.append(posixpath.relpath(path, root) if path != root else posixpath.basename(path))
        try:
            images.append(read_bytes(fs, path))
            errors.append(None)
        except OSError as exc:
            images.append(None)
            errors.append(f"unreadable file: {exc}"[:300])
    yield _table(ids, images, errors)


def read_task_rows(fs: pafs.FileSystem, layout: CorpusLayout, files: list[str]
                   ) -> Iterator[pa.Table]:
    """Rows of one read task; a shard that fails yields one error row instead of raising."""
    if layout.kind == "images":
        yield from _image_file_rows(fs, layout.root, files)
        return
    reader = _parquet_rows if layout.kind == "parquet" else _webdataset_rows
    for path in files:
        try:
            yield from reader(fs, path)
        except (OSError, ValueError, tarfile.TarError, pa.ArrowException) as exc:
            yield _shard_error(path, exc)


def read_ground_truth(fs: pafs.FileSystem, layout: CorpusLayout) -> dict[str, list[str]]:
    """image_id -> true class names, where the corpus carries them (evaluation only)."""
    truth: dict[str, list[str]] = {}
    for files in layout.tasks:
        for path in files:
            try:
                if layout.kind == "parquet":
                    with fs.open_input_file(path) as handle:
                        shard = pq.ParquetFile(handle)
                        if "labels" not in shard.schema_arrow.names:
                            continue
                        table = shard.read(columns=["image_id", "labels"])
                    truth.update(zip(table.column("image_id").to_pylist(),
                                     table.column("labels").to_pylist()))
                elif layout.kind == "webdataset":
                    for key, members in _webdataset_members(read_bytes(fs, path)).items():
                        if "json" in members:
                            labels = json.loads(members["json"]).get("labels")
                            if labels is not None:
                                truth[key] = list(labels)
            except (OSError, ValueError, tarfile.TarError, pa.ArrowException):
                continue  # the labeling pass records unreadable shards
    return {k: v for k, v in truth.items() if v is not None}


def corpus_truth(cfg: CCDConfig) -> dict[str, list[str]]:
    """image_id -> true class names of the configured corpus (empty when it carries none)."""
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    return read_ground_truth(fs, discover(fs, root, cfg.data.files_per_task))
