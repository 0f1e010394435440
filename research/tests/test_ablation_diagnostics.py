"""The ablation probes' readers of a finished run (no Ray): a round's stored labels come back
in the order of the ids asked for, whatever order the stage holds them in."""

from __future__ import annotations

import posixpath

import numpy as np
import pytest

from ccd_ray.config import DataConfig
from ccd_ray.io.storage import RunStore
from ccd_ray.method.rows import labels_table
from ccd_ray.stages.labeling import labels_stage, write_parquet_rows
from research import ablation_diagnostics


def _commit(store: RunStore, stage: str, ids: list[str], scores: np.ndarray) -> None:
    attempt = store.begin(stage)
    write_parquet_rows(store.fs, posixpath.join(attempt, "labels"),
                       labels_table(np.array(ids), scores, ["a", "b"], 0.5))
    store.commit(stage, attempt)


def test_stored_rounds_are_read_in_the_order_of_the_ids(tmp_path):
    store = RunStore.open(str(tmp_path), "run", DataConfig())
    stored = ["i2", "i0", "i1"]  # the stage's own order, not sorted
    raw = np.array([[0.2, 0.8], [0.0, 1.0], [0.1, 0.9]], np.float32)
    _commit(store, labels_stage(1), stored, 1 - raw)
    asked = ["i1", "i2", "i0"]
    np.testing.assert_array_equal(ablation_diagnostics.committed_labels(store, 1, asked),
                                  1 - raw[[2, 0, 1]])
    with pytest.raises(KeyError, match="lack a previous label"):
        ablation_diagnostics.committed_labels(store, 1, ["i9"])
