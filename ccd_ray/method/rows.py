"""Per-image rows: Arrow columns as NumPy arrays and labels as Arrow rows, joins by image id,
and the training rows of stored inputs.

NumPy only (no torch): Ray Data's read workers, which decode the training inputs and attach
their targets every epoch, import this module, and a worker process that imported torch and
torchvision first would take seconds longer to start."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ccd_ray.io.inputs_codec import decode_inputs
from ccd_ray.method.thresholds import label_indices

Chunk = dict[str, np.ndarray]
# a round's (and the final, and predict's) labels files, and the error rows beside them
LABELS_SCHEMA = pa.schema([("image_id", pa.string()), ("scores", pa.list_(pa.float32())),
                           ("labels", pa.list_(pa.string()))])
ERRORS_SCHEMA = pa.schema([("image_id", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string())])


def id_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow column of image ids as the NumPy fixed-width strings the joins sort and search.
    ASCII ids (the usual case) go through the bytes, padded with NULs to the longest id, which
    NumPy strips: no Python object per row (at 10^6 ids, ~0.8 s of a driver's label step
    otherwise). Other ids take NumPy's own conversion, one Python string each."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise ValueError(f"{column.null_count} image id(s) are null")
    width = pc.max(pc.binary_length(column)).as_py() if len(column) else 0
    if not width or not pc.all(pc.string_is_ascii(column)).as_py():
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)
    padded = pc.utf8_rpad(column.cast(pa.string()), width=width, padding="\0")
    offsets = np.frombuffer(padded.buffers()[1], np.int32)[padded.offset:][:len(padded) + 1]
    data = padded.buffers()[2]
    raw = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]]
    return raw.view(f"S{width}").astype(f"U{width}")


def list_matrix(column: pa.Array | pa.ChunkedArray, width: int | None = None) -> np.ndarray:
    """A list column of `width` numbers a row (None: as many as the rows hold, the same in each)
    as a writable N x width float32 matrix: one copy of the values (the chunks' flattened
    lists, so sliced arrays read right), no Python objects. A null row or a row of another
    length is an error, not a reshaped matrix."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    rows = sum(len(c) for c in chunks)
    flat = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in chunks]
                          + [np.zeros(0, np.float32)]).astype(np.float32, copy=False)
    expected = f"{width} values" if width is not None else "as many values"
    if width is None:
        width = flat.size // rows if rows else 0
    lengths = [pc.list_value_length(c) for c in chunks if len(c)]
    if flat.size != rows * width or any(
            c.null_count or pc.any(pc.not_equal(c, width)).as_py() for c in lengths):
        raise ValueError(f"expected {expected} in each of {rows} rows (none null), found "
                         f"{flat.size} in all")
    return flat.reshape(rows, width)


def list_column(values: np.ndarray, per_row: np.ndarray, missing: np.ndarray | None = None,
                dtype=np.float32) -> pa.ListArray:
    """list_matrix's inverse: row i holds per_row[i] of values (their rows flattened, in row
    order), built from offsets with no list per row; rows where missing is set are null (and
    hold nothing)."""
    offsets = np.zeros(len(per_row) + 1, np.int32)
    np.cumsum(per_row, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets),
                                    pa.array(np.ascontiguousarray(values, dtype).ravel()),
                                    mask=None if missing is None else pa.array(missing))


def error_rows(rows: pa.Table) -> pa.Table:
    """The rows' (image_id, error_stage, error) as errors.parquet rows (ERRORS_SCHEMA)."""
    return pa.table({"image_id": rows.column("image_id"), "stage": rows.column("error_stage"),
                     "reason": rows.column("error")}, schema=ERRORS_SCHEMA)


def labels_table(ids: np.ndarray, scores: np.ndarray, class_names: list[str],
                 threshold: float | np.ndarray) -> pa.Table:
    """Rows (image_id, scores, labels: the names of the classes at or above threshold) built
    column-wise: no Python object per row."""
    flat = pa.array(scores.astype(np.float32).ravel())
    offsets = pa.array(np.arange(0, scores.size + 1, max(scores.shape[1], 1), dtype=np.int32)
                       if len(ids) else np.zeros(1, np.int32))
    label_offsets, classes = label_indices(scores, threshold)
    names = pa.array(class_names, pa.string()).take(pa.array(classes, pa.int64()))
    return pa.Table.from_arrays([
        pa.array(ids, pa.string()), pa.ListArray.from_arrays(offsets, flat),
        pa.ListArray.from_arrays(pa.array(label_offsets.astype(np.int32)), names)],
        schema=LABELS_SCHEMA)


def find_rows(ids: np.ndarray, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each id in sorted_ids, whether it is there): the one id join of the project,
    by binary search over sorted ids (no per-row dict). Rows of missing ids are meaningless."""
    rows = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    found = sorted_ids[rows] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
    return rows, found


def align_rows(ids: np.ndarray, reference_ids: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Rows of matrix (ordered as the sorted reference_ids) for ids; every id must exist."""
    rows, found = find_rows(ids, reference_ids)
    if not found.all():
        missing = ids[~found]
        raise KeyError(f"{len(missing)} image(s) lack a previous label, e.g. {missing[0]!r}")
    return matrix[rows]


def attach_targets(ids: np.ndarray, holdout: np.ndarray, pixels: np.ndarray,
                   target_ids: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> Chunk:
    """The training rows of a chunk of stored inputs (not held out, with a target), joined with
    their soft targets and sample weights; target_ids is sorted, targets/weights follow it."""
    rows, found = find_rows(ids, target_ids)
    keep = ~np.asarray(holdout, dtype=bool) & found
    return {"pixels": pixels[keep], "targets": targets[rows[keep]],
            "weights": weights[rows[keep]]}


def training_rows(batch: Chunk, target_ids: np.ndarray, scores: np.ndarray,
                  weights: np.ndarray, image_size: int) -> Chunk:
    """A block of the train-inputs stage (image_id, image: encoded, holdout) as training rows:
    held-out rows are dropped before decoding (not worth it), the rest decoded and joined."""
    train = ~batch["holdout"].astype(bool)
    return attach_targets(batch["image_id"][train].astype(str), batch["holdout"][train],
                          decode_inputs(batch["image"][train], image_size), target_ids, scores,
                          weights)
