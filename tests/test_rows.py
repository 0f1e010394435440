"""Per-image rows: Arrow columns as NumPy (ids, score matrices) and the id joins."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ccd_ray.method.rows import align_rows, find_rows, id_array, list_column, list_matrix


def _reference_ids(column) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)


@pytest.mark.parametrize("column", [
    pa.chunked_array([["img-000001", "b", "a-longer-id"], ["zz"]]),
    pa.array(["x", "abcd", "q", "img-9"]).slice(1),            # an offset into the buffers
    pa.array(["ümlaut", "a", "日本"]),                           # not ASCII: NumPy's own path
    pa.array(["", ""]),
    pa.array([], pa.string()),
    pa.array(["a", "bb"], pa.large_string()),
])
def test_id_array_equals_numpys_own_conversion(column):
    ids = id_array(column)
    expected = _reference_ids(column)
    assert ids.dtype.kind == "U" and ids.dtype == expected.dtype
    np.testing.assert_array_equal(ids, expected)


def test_id_array_rejects_null_ids():
    with pytest.raises(ValueError, match="null"):
        id_array(pa.array(["a", None]))


def test_list_matrix_reads_chunks_and_slices_as_one_writable_matrix():
    column = pa.chunked_array([pa.array([[1, 2], [3, 4], [5, 6]], pa.list_(pa.float32())).slice(1),
                               pa.array([[7, 8]], pa.list_(pa.float32()))])
    matrix = list_matrix(column, 2)
    np.testing.assert_array_equal(matrix, [[3, 4], [5, 6], [7, 8]])
    assert matrix.dtype == np.float32 and matrix.flags.writeable
    np.testing.assert_array_equal(list_matrix(column), matrix)   # width from the rows
    assert list_matrix(pa.array([], pa.list_(pa.float32())), 3).shape == (0, 3)


@pytest.mark.parametrize("column, width", [
    (pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32())), None),     # ragged rows
    (pa.array([[1.0, 2.0, 3.0], [4.0]], pa.list_(pa.float32())), 2),   # right total, wrong rows
    (pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32())), 2),
])
def test_list_matrix_refuses_rows_of_another_length(column, width):
    with pytest.raises(ValueError, match="in each of"):
        list_matrix(column, width)


def test_find_and_align_rows_join_by_id():
    reference = np.array(["a", "c", "d"])
    rows, found = find_rows(np.array(["d", "b", "a"]), reference)
    assert found.tolist() == [True, False, True] and rows[[0, 2]].tolist() == [2, 0]
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(align_rows(np.array(["c", "a"]), reference, matrix),
                                  [[2, 3], [0, 1]])
    with pytest.raises(KeyError, match="1 image"):
        align_rows(np.array(["b"]), reference, matrix)



def test_list_column_is_list_matrixs_inverse_and_nulls_missing_rows():
    matrix = np.arange(6, dtype=np.float32).reshape(3, 2)
    column = list_column(matrix, np.full(3, 2))
    np.testing.assert_array_equal(list_matrix(column, 2), matrix)
    missing = np.array([False, True, False, False])
    with_null = list_column(matrix, np.where(missing, 0, 2), missing)
    assert with_null.to_pylist() == [[0.0, 1.0], None, [2.0, 3.0], [4.0, 5.0]]
