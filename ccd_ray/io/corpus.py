"""Read a corpus of images into rows (image_id, image bytes, error), never failing on bad data.

Three formats (docs/corpora.md), told apart by the files under the corpus URI or forced with
`data.corpus_format`:
- parquet: shards with an id and an image-bytes column: ccd-ray's own (`image_id`, `image`,
  optional `labels`, ground truth for evaluation only) or img2dataset's `parquet` output
  (`key`, `jpg`/`png`/`webp`, ...);
- webdataset: tar shards, members grouped by key: an image member (`.jpg`, `.png`, ...) plus
  optional `.json` (its `labels` list is ground truth) and `.txt`; img2dataset's `webdataset`
  output, with its `NNNNN.parquet` and `NNNNN_stats.json` beside each tar, is this format;
- images: a folder or prefix of files, the image_id being the relative path; img2dataset's
  `files` output is this format.

A shard that cannot be opened or parsed becomes one error row (image_id = its path), so
the job records it and goes on."""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ccd_ray.config import CCDConfig, ConfigError
from ccd_ray.io.storage import RunStore, filesystem_for, list_files, read_bytes

# What a corpus reads as (ids, decoded pixels) beyond the config; cached teacher scores name it,
# so bump it when a change to the readers or decoding changes either.
READER_VERSION = 2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CORPUS_FORMATS = ("parquet", "webdataset", "images")
ROW_SCHEMA = pa.schema([("image_id", pa.string()), ("image", pa.binary()),
                        ("error", pa.string())])
UNREADABLE_SHARD = "unreadable shard"
TRUNCATED_SHARD = "truncated shard"
NO_IMAGE_MEMBER = "no image member in sample"
UNSUPPORTED_FORMAT = "unsupported format"
# img2dataset names its image column after the encode format (writer.py: schema.append(
# pa.field("jpg", pa.binary())), `jpg` unless --encode_format says otherwise).
IMG2DATASET_IMAGE_COLUMNS = ("jpg", "png", "webp")
IMG2DATASET_SIDECAR_SUFFIXES = (".parquet", "_stats.json")


@dataclass(frozen=True)
class CorpusLayout:
    kind: str               # one of CORPUS_FORMATS
    root: str
    tasks: list[list[str]]  # files read by each read task
    found: str = ""         # one line: the format, how it was chosen, what was (not) read

    def without_tasks(self) -> CorpusLayout:
        """What a read task needs besides its own files: the format and the root, not every
        other task's file list (which would be shipped to each task)."""
        return dataclasses.replace(self, tasks=[])


def _hidden(root: str, path: str) -> bool:
    """Below a folder whose name starts with "." or "_" (.git, .ipynb_checkpoints, Spark's
    _temporary): not corpus data, like such files themselves (storage.list_files)."""
    folders = posixpath.dirname(_relative(root, path)).split("/")
    return any(name.startswith((".", "_")) for name in folders)


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _sample_key(path: str) -> str:
    """folder/key of a file, the key being its name up to the first dot (the WebDataset and
    img2dataset convention: KEY.jpg, KEY.json and KEY.txt are one sample)."""
    return posixpath.join(posixpath.dirname(path), posixpath.basename(path).partition(".")[0])


def _shard_base(path: str) -> str | None:
    """X for img2dataset's shard metadata X.parquet / X_stats.json, else None."""
    for suffix in IMG2DATASET_SIDECAR_SUFFIXES:
        if path.endswith(suffix):
            return path[:-len(suffix)]
    return None


def _relative(root: str, path: str) -> str:
    return posixpath.relpath(path, root) if path != root else posixpath.basename(path)


def _shard_name(root: str, path: str) -> str:
    """A shard's path below the root without its suffix: the prefix of its samples' ids."""
    return posixpath.splitext(_relative(root, path))[0]


def _parquet_columns(names: list[str]) -> tuple[str, str]:
    """(id column, image column) of a Parquet shard, ccd-ray's own or img2dataset's."""
    if "image_id" in names or "key" not in names:
        missing = sorted({"image_id", "image"} - set(names))
        if missing:
            raise ValueError(f"missing column(s) {missing} (or img2dataset's key + "
                             f"{'/'.join(IMG2DATASET_IMAGE_COLUMNS)})")
        return "image_id", "image"
    image = next((c for c in IMG2DATASET_IMAGE_COLUMNS if c in names), None)
    if image is None:
        raise ValueError(f"img2dataset shard without an image column "
                         f"({'/'.join(IMG2DATASET_IMAGE_COLUMNS)}): its metadata only")
    return "key", image


def _holds_images(fs: pafs.FileSystem, path: str) -> bool | None:
    """Whether a Parquet file has id and image columns (None: it cannot be opened)."""
    try:
        with fs.open_input_file(path) as handle:
            names = pq.ParquetFile(handle).schema_arrow.names
    except (OSError, pa.ArrowException):
        return None
    try:
        _parquet_columns(names)
    except ValueError:
        return False
    return True


def _detect(fs: pafs.FileSystem, files: list[str]) -> str:
    """The format of a corpus from its files; raise when two formats are present."""
    tars = [f for f in files if f.endswith(".tar")]
    shard_bases = {f[:-len(".tar")] for f in tars}
    parquet = [f for f in files if f.endswith(".parquet")]
    if tars:
        other = [f for f in parquet if _shard_base(f) not in shard_bases]
        if other:
            raise ValueError(f"the corpus holds both .tar shards and Parquet files that are not "
                             f"img2dataset sidecars of them (e.g. {other[0]!r}): set "
                             "data.corpus_format to webdataset or parquet")
        return "webdataset"
    if parquet:
        for path in parquet:
            holds = _holds_images(fs, path)
            if holds is not None:
                # metadata-only Parquet beside image files: img2dataset's `files` output
                return "images" if not holds and any(map(_is_image, files)) else "parquet"
        return "parquet"  # none opens: each becomes an unreadable-shard row
    return "images"


def _folder_rows(files: list[str]) -> tuple[list[str], list[str]]:
    """(files that are rows, files that are sidecars) of an image folder: every file is a row
    except the metadata of an image (a non-image file sharing its folder and key, like
    img2dataset's KEY.json and KEY.txt) and img2dataset's shard metadata X.parquet and
    X_stats.json beside its shard folder X/ or tar X.tar."""
    image_keys = {_sample_key(f) for f in files if _is_image(f)}
    folders = {posixpath.dirname(f) for f in files}
    tars = {f[:-len(".tar")] for f in files if f.endswith(".tar")}
    rows, sidecars = [], []
    for path in files:
        base = _shard_base(path)
        if not _is_image(path) and (_sample_key(path) in image_keys
                                    or base in folders or base in tars):
            sidecars.append(path)
        else:
            rows.append(path)
    return rows, sidecars


def discover(fs: pafs.FileSystem, root: str, files_per_task: int,
             corpus_format: str = "auto") -> CorpusLayout:
    """Find the corpus under root, in corpus_format or (auto) the format its files show; raise
    a clear error if there is nothing to read."""
    try:
        files = [f for f in list_files(fs, root) if not _hidden(root, f)]
    except FileNotFoundError:
        raise FileNotFoundError(f"corpus {root!r} does not exist") from None
    if corpus_format == "auto":
        kind, how = _detect(fs, files), "detected"
    elif corpus_format in CORPUS_FORMATS:
        kind, how = corpus_format, "data.corpus_format"
    else:
        raise ValueError(f"data.corpus_format {corpus_format!r}: expected auto or one of "
                         f"{', '.join(CORPUS_FORMATS)}")

    if kind == "images":
        rows, sidecars = _folder_rows(files)
        images = sum(map(_is_image, rows))
        if not images:
            raise FileNotFoundError(f"corpus {root!r} holds no .parquet, .tar or image files")
        tasks = [rows[i:i + files_per_task] for i in range(0, len(rows), files_per_task)]
        return CorpusLayout(kind, root, tasks, (
            f"images ({how}): {len(rows)} files, {len(rows) - images} without an image suffix; "
            f"{len(sidecars)} metadata files not read"))

    suffix = ".tar" if kind == "webdataset" else ".parquet"
    shards = [f for f in files if f.endswith(suffix)]
    if not shards:
        raise FileNotFoundError(f"corpus {root!r} holds no {suffix} files "
                                f"(data.corpus_format={corpus_format})")
    bases = {f[:-len(suffix)] for f in shards}
    sidecars = [f for f in files if not f.endswith(suffix) and _shard_base(f) in bases]
    others = len(files) - len(shards) - len(sidecars)
    return CorpusLayout(kind, root, [[f] for f in shards], (
        f"{kind} ({how}): {len(shards)} {suffix} shards; {len(sidecars)} img2dataset "
        f"sidecar files and {others} other files not read"))


def _table(ids: list[str], images: list[bytes | None], errors: list[str | None]) -> pa.Table:
    return pa.Table.from_pydict({"image_id": ids, "image": images, "error": errors},
                                schema=ROW_SCHEMA)


def _error_text(reason: str, exc: BaseException, detail: str = "") -> str:
    """One line of at most 300 characters: reason, detail, the exception."""
    return " ".join(f"{reason}: {detail}{type(exc).__name__}: {exc}".split())[:300]


def _parquet_tables(fs: pafs.FileSystem, root: str, path: str, columns: tuple[str, ...]
                    ) -> Iterator[tuple[list[str], pa.Table]]:
    """(ids, the row group's columns among `columns`, "image" being the image column whatever
    its name in the shard) of each row group of a Parquet shard. img2dataset's keys get the
    shard's name as prefix, like tar samples; its rows for URLs it could not download
    (`status` other than success, no image) are not corpus images, as in its webdataset and
    files outputs, where such samples are not written at all."""
    with fs.open_input_file(path) as handle:
        shard = pq.ParquetFile(handle)
        names = shard.schema_arrow.names
        id_column, image_column = _parquet_columns(names)
        img2dataset = id_column == "key"
        as_named = {"image": image_column}
        wanted = [c for c in columns if as_named.get(c, c) in names]
        status = ["status"] if img2dataset and "status" in names else []
        prefix = _shard_name(root, path) + "/"
        for group in range(shard.num_row_groups):
            table = shard.read_row_group(
                group, columns=[id_column, *status, *(as_named.get(c, c) for c in wanted)])
            if status:
                table = table.filter(pc.fill_null(pc.equal(table.column("status"), "success"),
                                                  False))
            ids = table.column(id_column).to_pylist()
            if img2dataset:
                ids = [None if k is None else prefix + str(k) for k in ids]
            yield ids, table.select(
                list(range(1 + len(status), table.num_columns))).rename_columns(wanted)


def _parquet_rows(fs: pafs.FileSystem, root: str, path: str) -> Iterator[pa.Table]:
    for ids, table in _parquet_tables(fs, root, path, ("image",)):
        yield _table(ids, table.column("image").to_pylist(), [None] * table.num_rows)


@dataclass
class _TarSamples:
    samples: dict[str, dict[str, bytes]]  # key -> {extension: bytes}, in tar order
    cut: str | None = None        # why reading stopped before the end of the archive
    cut_key: str | None = None    # the sample whose member was cut, dropped from samples


def _tar_samples(data: bytes) -> _TarSamples:
    """The samples of a tar, keeping every sample read whole before a truncation: a member
    cut mid-data drops its sample; a tar that ends without its end-of-archive block (cut at
    a member boundary, which tarfile itself does not report) is recorded as cut."""
    samples: dict[str, dict[str, bytes]] = {}
    reading = None
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # WebDataset: uncompressed
            for member in tar:
                name = posixpath.basename(member.name)
                if not member.isfile() or name.startswith("."):  # e.g. macOS's ._KEY.jpg
                    continue
                key, _, ext = name.partition(".")
                reading = posixpath.join(posixpath.dirname(member.name), key)
                content = tar.extractfile(member).read()
                samples.setdefault(reading, {})[ext.lower()] = content
                reading = None
            end = tar.offset
            complete = data[end:end + tarfile.BLOCKSIZE] == bytes(tarfile.BLOCKSIZE)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if not samples and reading is None:
            raise  # nothing could be read: an unreadable shard
        samples.pop(reading, None)
        return _TarSamples(samples, _error_text(TRUNCATED_SHARD, exc,
                                                f"cut after {len(samples)} whole samples: "),
                           reading)
    if complete:
        return _TarSamples(samples)
    return _TarSamples(samples, f"{TRUNCATED_SHARD}: no end-of-archive block after "
                                f"{len(samples)} whole samples")


def _webdataset_rows(fs: pafs.FileSystem, root: str, path: str) -> Iterator[pa.Table]:
    read = _tar_samples(read_bytes(fs, path))
    prefix = _shard_name(root, path) + "/"
    ids, images, errors = [], [], []
    for key, members in read.samples.items():
        image_ext = next((e for e in members if "." + e in IMAGE_SUFFIXES), None)
        ids.append(prefix + key)
        images.append(members.get(image_ext) if image_ext else None)
        errors.append(None if image_ext else NO_IMAGE_MEMBER)
    if read.cut:
        ids.append(prefix + read.cut_key if read.cut_key else path)
        images.append(None)
        errors.append(read.cut)
    yield _table(ids, images, errors)


def _image_file_rows(fs: pafs.FileSystem, root: str, paths: list[str]) -> Iterator[pa.Table]:
    ids, images, errors = [], [], []
    for path in paths:
        ids.append(_relative(root, path))
        if not _is_image(path):
            suffix = posixpath.splitext(path)[1] or "no suffix"
            images.append(None)
            errors.append(f"{UNSUPPORTED_FORMAT}: {suffix[:20]} is not one of "
                          f"{' '.join(IMAGE_SUFFIXES)}")
            continue
        try:
            images.append(read_bytes(fs, path))
            errors.append(None)
        except OSError as exc:
            images.append(None)
            errors.append(f"unreadable file: {exc}"[:300])
    yield _table(ids, images, errors)


def read_task_rows(fs: pafs.FileSystem, layout: CorpusLayout, files: list[str]
                   ) -> Iterator[pa.Table]:
    """Rows of one read task (layout's tasks are not used: see without_tasks); a shard that
    fails yields one error row instead of raising."""
    if layout.kind == "images":
        yield from _image_file_rows(fs, layout.root, files)
        return
    reader = _parquet_rows if layout.kind == "parquet" else _webdataset_rows
    for path in files:
        try:
            yield from reader(fs, layout.root, path)
        except (OSError, ValueError, tarfile.TarError, EOFError, pa.ArrowException) as exc:
            yield _table([path], [None], [_error_text(UNREADABLE_SHARD, exc)])


def _json_labels(data: bytes) -> list[str] | None:
    """The `labels` list of a sample's .json, None when it has none or is not a JSON object."""
    try:
        value = json.loads(data)
    except ValueError:
        return None
    labels = value.get("labels") if isinstance(value, dict) else None
    return list(map(str, labels)) if isinstance(labels, list) else None


def read_ground_truth(fs: pafs.FileSystem, layout: CorpusLayout) -> dict[str, list[str]]:
    """image_id -> true class names, where the corpus carries them (evaluation only)."""
    truth: dict[str, list[str]] = {}
    for files in layout.tasks:
        for path in files:
            try:
                if layout.kind == "parquet":
                    for ids, table in _parquet_tables(fs, layout.root, path, ("labels",)):
                        if "labels" in table.column_names:
                            truth.update(zip(ids, table.column("labels").to_pylist()))
                elif layout.kind == "webdataset":
                    prefix = _shard_name(layout.root, path) + "/"
                    for key, members in _tar_samples(read_bytes(fs, path)).samples.items():
                        labels = _json_labels(members["json"]) if "json" in members else None
                        if labels is not None:
                            truth[prefix + key] = labels
            except (OSError, ValueError, tarfile.TarError, EOFError, pa.ArrowException):
                continue  # the labeling pass records unreadable shards
    return {k: v for k, v in truth.items() if v is not None}


MANIFEST_STAGE = "corpus-manifest"
MANIFEST_FILE = "layout.parquet"


def _manifest_key(cfg: CCDConfig) -> dict[str, str]:
    return {"corpus_uri": cfg.data.corpus_uri, "corpus_format": cfg.data.corpus_format}


def _committed_manifest(cfg: CCDConfig, store: RunStore) -> CorpusLayout | None:
    """The run's committed manifest if it lists cfg's corpus (a run refuses another
    corpus_uri or corpus_format; anything else under the run id, a test's or a sweep's
    config, lists its own corpus)."""
    folder = store.committed(MANIFEST_STAGE)
    if folder is None or store.marker(MANIFEST_STAGE)["corpus"] != _manifest_key(cfg):
        return None
    return read_manifest(store.fs, folder)


def write_manifest(fs: pafs.FileSystem, folder: str, layout: CorpusLayout) -> None:
    """The layout as one Parquet file: a row per read task (its files), the format, root and
    the discovery line in the schema's metadata."""
    table = pa.table({"task": pa.array(range(len(layout.tasks)), pa.int64()),
                      "files": pa.array(layout.tasks, pa.list_(pa.string()))})
    table = table.replace_schema_metadata({"kind": layout.kind, "root": layout.root,
                                           "found": layout.found})
    pq.write_table(table, posixpath.join(folder, MANIFEST_FILE), filesystem=fs)


def read_manifest(fs: pafs.FileSystem, folder: str) -> CorpusLayout:
    table = pq.read_table(posixpath.join(folder, MANIFEST_FILE), filesystem=fs)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    return CorpusLayout(meta["kind"], meta["root"], table.column("files").to_pylist(),
                        meta["found"])


def corpus_layout(cfg: CCDConfig) -> tuple[pafs.FileSystem, CorpusLayout]:
    """(filesystem, layout) of the configured corpus: the run's manifest where the run has
    committed one (listed once a run, so every pass and every resume of the run reads the same
    files, and a corpus of millions of objects is not listed again per pass), else listed now."""
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    out_fs, base = filesystem_for(cfg.data.output_uri, cfg.data)
    # the run's store as a plain value: RunStore.open would create the run's folder
    layout = _committed_manifest(cfg, RunStore(out_fs, posixpath.join(base, cfg.run_id)))
    if layout is None:
        layout = discover(fs, root, cfg.data.files_per_task, cfg.data.corpus_format)
    return fs, layout


def commit_manifest(cfg: CCDConfig, store: RunStore, work_done: bool
                    ) -> tuple[pafs.FileSystem, CorpusLayout, bool]:
    """(corpus filesystem, layout, listed now) of the run: on its first start the corpus is
    listed and the layout committed as the run's manifest; a resumed run reads it back (the
    files of its first start, whatever was added since). work_done: whether the run has
    committed work read from its corpus; a manifest of another corpus is then refused, and
    replaced otherwise (a start that stopped before any work, rerun with a corrected corpus)."""
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    layout = _committed_manifest(cfg, store)
    if layout is not None:
        return fs, layout, False
    if work_done and store.committed(MANIFEST_STAGE) is not None:
        listed = store.marker(MANIFEST_STAGE)["corpus"]
        raise ConfigError(f"run {store.root} reads the corpus {listed['corpus_uri']} "
                          f"(data.corpus_format={listed['corpus_format']}), not "
                          f"{cfg.data.corpus_uri}; use a new run id for another corpus")
    layout = discover(fs, root, cfg.data.files_per_task, cfg.data.corpus_format)
    attempt = store.begin(MANIFEST_STAGE)
    write_manifest(store.fs, attempt, layout)
    store.commit(MANIFEST_STAGE, attempt, {"corpus": _manifest_key(cfg), "kind": layout.kind,
                                           "read_tasks": len(layout.tasks),
                                           "found": layout.found})
    return fs, layout, True


def corpus_truth(cfg: CCDConfig) -> dict[str, list[str]]:
    """image_id -> true class names of the configured corpus (empty when it carries none)."""
    return read_ground_truth(*corpus_layout(cfg))
