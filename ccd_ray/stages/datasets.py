"""Ray Data building blocks every stage shares: the corpus as a dataset of rows, and the
arguments of an actor pool."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray

from ccd_ray.config import CCDConfig
from ccd_ray.io.corpus import CorpusLayout, discover, read_task_rows
from ccd_ray.io.storage import filesystem_for


def _read_task(batch: pa.Table, fs, layout: CorpusLayout):
    for files in batch.column("files").to_pylist():
        yield from read_task_rows(fs, layout, files)


def corpus_rows(cfg: CCDConfig) -> ray.data.Dataset:
    """Rows (image_id, image, error) of the whole corpus, one read task per shard."""
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    layout = discover(fs, root, cfg.data.files_per_task)
    items = [{"files": files} for files in layout.tasks]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_task, batch_size=1, batch_format="pyarrow", fn_kwargs={"fs": fs, "layout": layout},
        num_cpus=0.5)


def actor_pool_args(cfg: CCDConfig, size: int) -> dict[str, Any]:
    """map_batches arguments of an actor pool of at most size actors."""
    gpus = cfg.compute.gpus_per_actor
    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=size),
            "batch_size": cfg.compute.images_per_batch, "batch_format": "pyarrow",
            "num_cpus": cfg.compute.cpus_per_actor, **({"num_gpus": gpus} if gpus > 0 else {})}
