"""Per-shard commits on Ray Data, shared by jobs/predict.py and the score cache: each read task
of the corpus is a shard, its rows tagged with the shard's index and row count; the stage's
actor pools carry the tags through (`carry_shard`); writer tasks write each shard's rows into
`<under>/shards/shard-NNNNNN/<attempt>/` and report what they wrote; the driver commits a
shard as its own stage once all its rows are written. A rerun of the stage streams only the
shards not committed, so a stage killed part-way redoes at most the shards in flight.

A read task holds its shard's rows in memory at once (to count them before they leave); the
driver holds per shard in progress its counts and file names."""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from ccd_ray.io.corpus import CorpusLayout, read_task_rows
from ccd_ray.io.storage import MARKER, RunStore, exists
from ccd_ray.method.rows import error_rows, id_array, labels_table, list_matrix
from ccd_ray.method.shards import ShardProgress, ShardTally, total_counts

SHARD_COLUMNS = ("shard", "shard_rows")
WRITTEN_SCHEMA = pa.schema([("shard", pa.int64()), ("shard_rows", pa.int64()),
                            ("rows", pa.int64()), ("reasons", pa.list_(pa.string())),
                            ("files", pa.list_(pa.string())), ("teacher_passes", pa.int64())])
# write(rows of one shard without the shard columns, fs, folder, part) -> file names written
PartWriter = Callable[[pa.Table, pafs.FileSystem, str, str], list[str]]


def shard_stage(shard: int, under: str = "") -> str:
    """The stage of one shard, below the folder of the stage it belongs to."""
    return posixpath.join(under, "shards", f"shard-{shard:06d}")


def _read_shards(batch: pa.Table, fs: pafs.FileSystem, layout: CorpusLayout):
    """Each read task's rows with its shard index and row count (all its rows are read
    first, so the count is known before the first row leaves)."""
    for shard, files in zip(batch.column("shard").to_pylist(), batch.column("files").to_pylist()):
        tables = [t for t in read_task_rows(fs, layout, files) if t.num_rows]
        expected = sum(t.num_rows for t in tables)
        for table in tables:
            n = table.num_rows
            yield (table.append_column("shard", pa.array([shard] * n, pa.int64()))
                   .append_column("shard_rows", pa.array([expected] * n, pa.int64())))


def shard_rows(fs: pafs.FileSystem, layout: CorpusLayout, pending: list[int]) -> ray.data.Dataset:
    """Rows (image_id, image, error, shard, shard_rows) of the pending shards, one read task
    per shard, each carrying its own file names only."""
    items = [{"shard": i, "files": layout.tasks[i]} for i in pending]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_shards, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"fs": fs, "layout": layout.without_tasks()}, num_cpus=0.5)


class ShardCarrier:
    """An actor stage (a callable class mapping a batch to one row per input row, in order)
    whose output keeps the input's shard columns, so the stages need not know of shards."""

    def __init__(self, stage: type, **kwargs):
        self.stage = stage(**kwargs)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.stage(batch)
        if out.num_rows != batch.num_rows:
            raise RuntimeError(f"{type(self.stage).__name__}: {out.num_rows} rows out of "
                               f"{batch.num_rows}; shard stages must map rows one to one")
        for name in SHARD_COLUMNS:
            out = out.append_column(name, batch.column(name))
        return out


def carry_shard(rows: ray.data.Dataset, stage: type, kwargs: dict, pool_args: dict
                ) -> ray.data.Dataset:
    """rows through an actor pool of stage(**kwargs), the shard columns kept."""
    return rows.map_batches(ShardCarrier, fn_constructor_kwargs={"stage": stage, **kwargs},
                            **pool_args)


def write_views(rows: pa.Table, fs: pafs.FileSystem, folder: str, part: str) -> list[str]:
    """The score cache's part writer: one shard's per-view score rows, as they are. Here, not
    in the score cache's module, since every writer task imports the module of its writer, and
    that one imports the teacher's (torch, open_clip: seconds per new worker process)."""
    name = f"views-{part}.parquet"
    pq.write_table(rows, posixpath.join(folder, name), filesystem=fs)
    return [name]


def write_labels(rows: pa.Table, fs: pafs.FileSystem, folder: str, part: str,
                  class_names: list[str], thresholds: list[float]) -> list[str]:
    """Predict's part writer: one shard's predicted rows (image_id, scores, error,
    error_stage) as labels in the rounds' schema, and its errors as errors.parquet rows. Here
    for the reason write_views is."""
    good = rows.filter(pc.is_null(rows.column("error")))
    bad = rows.filter(pc.is_valid(rows.column("error")))
    files = []
    if good.num_rows:
        table = labels_table(id_array(good.column("image_id")),
                             list_matrix(good.column("scores"), len(class_names)), class_names,
                             np.asarray(thresholds, np.float32))
        files.append(f"labels-{part}.parquet")
        pq.write_table(table, posixpath.join(folder, files[-1]), filesystem=fs)
    if bad.num_rows:
        errors = error_rows(bad)
        files.append(f"errors-{part}.parquet")
        pq.write_table(errors, posixpath.join(folder, files[-1]), filesystem=fs)
    return files


def _write_parts(batch: pa.Table, fs: pafs.FileSystem, root: str, attempt: str,
                 write: PartWriter, passes_column: str | None) -> pa.Table:
    """Write each shard's rows of the batch into the shard's attempt folder (what write makes
    of them); report per shard the rows, their errors, the files and the teacher's passes."""
    reports = []
    for shard in pc.unique(batch.column("shard")).to_pylist():
        rows = batch.filter(pc.equal(batch.column("shard"), shard))
        folder = posixpath.join(root, shard_stage(shard), attempt)
        fs.create_dir(folder, recursive=True)
        files = write(rows.drop_columns(list(SHARD_COLUMNS)), fs, folder, uuid.uuid4().hex[:12])
        passes = int(pc.sum(rows.column(passes_column)).as_py() or 0) if passes_column else 0
        reports.append({"shard": shard, "shard_rows": rows.column("shard_rows")[0].as_py(),
                        "rows": rows.num_rows,
                        "reasons": pc.drop_null(rows.column("error")).to_pylist(),
                        "files": files, "teacher_passes": passes})
    return pa.Table.from_pylist(reports, schema=WRITTEN_SCHEMA)


def commit_shard(store: RunStore, under: str, shard: int, attempt: str,
                 progress: ShardProgress) -> None:
    """Commit one shard whose rows are all written (an empty shard: an empty attempt)."""
    stage = shard_stage(shard, under)
    folder = store.path(stage, attempt)
    store.fs.create_dir(folder, recursive=True)
    store.commit(stage, folder, {**progress.counts(), "teacher_passes": progress.teacher_passes,
                                 "files": progress.files})


def committed_shards(store: RunStore, under: str = "") -> set[int]:
    """Shards with a commit marker, from one listing of the shards folder."""
    folder = store.path(under, "shards")
    if not exists(store.fs, folder):
        return set()
    return {int(posixpath.basename(posixpath.dirname(i.path)).split("-")[1])
            for i in store.fs.get_file_info(pafs.FileSelector(folder, recursive=True))
            if posixpath.basename(i.path) == MARKER}


def run_shards(store: RunStore, under: str, rows: ray.data.Dataset, pending: list[int],
                 write: PartWriter, passes_column: str | None = None) -> ShardTally:
    """Stream rows (of shard_rows(pending), through carry_shard stages) into writer tasks,
    committing each shard once written; returns the tally (rows_done, passes_done: the work
    of this call)."""
    attempt = f"attempt-{uuid.uuid4().hex[:12]}"
    written = rows.map_batches(_write_parts, batch_format="pyarrow", num_cpus=0.5, fn_kwargs={
        "fs": store.fs, "root": store.path(under), "attempt": attempt, "write": write,
        "passes_column": passes_column})
    tally = ShardTally(pending)
    for report in written.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in report.to_pylist():
            done = tally.add(row["shard"], row["shard_rows"], row["rows"], row["reasons"],
                             row["files"], row["teacher_passes"])
            if done is not None:
                commit_shard(store, under, row["shard"], attempt, done)
    if tally.in_progress:
        raise RuntimeError(f"shards {sorted(tally.in_progress)[:5]}: rows were read but not all "
                           "written; rerun to redo them")
    for shard in sorted(tally.unseen):  # read tasks that produced no row
        commit_shard(store, under, shard, attempt, ShardProgress(0))
    return tally


def shard_totals(store: RunStore, under: str, shards: int, check: Callable[[dict], None]
                 ) -> tuple[list[dict], dict]:
    """(every shard's commit marker, their summed counts), the counts passed to check (the
    stage's error rule) first. When check raises, the shards with errors are uncommitted
    before it propagates: a rerun after their files are fixed scores them (and only them)
    again, instead of finding the same errors committed."""
    markers = [store.marker(shard_stage(i, under)) for i in range(shards)]
    counts = total_counts(markers)
    try:
        check(counts)
    except Exception:
        for i, marker in enumerate(markers):
            if marker["errors"]:
                store.fs.delete_file(store.path(shard_stage(i, under), MARKER))
        raise
    return markers, counts


def shard_files(store: RunStore, under: str, markers: list[dict]) -> list[str]:
    """The files of the committed shards (markers in shard order), relative to under."""
    return [posixpath.join(shard_stage(i, ""), m["attempt"], f)
            for i, m in enumerate(markers) for f in m["files"]]
