"""Ray Data building blocks every stage shares: the corpus as a dataset of rows, and the
arguments of an actor pool."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray

from ccd_ray.config import CCDConfig
from ccd_ray.io.corpus import CorpusLayout, corpus_layout, read_task_rows


def _read_task(batch: pa.Table, fs, layout: CorpusLayout):
    for files in batch.column("files").to_pylist():
        yield from read_task_rows(fs, layout, files)


def corpus_rows(cfg: CCDConfig) -> ray.data.Dataset:
    """Rows (image_id, image, error) of the whole corpus, one read task per shard (or per
    data.files_per_task plain files), each carrying its own file names only."""
    fs, layout = corpus_layout(cfg)
    items = [{"files": files} for files in layout.tasks]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_task, batch_size=1, batch_format="pyarrow",
        fn_kwargs={"fs": fs, "layout": layout.without_tasks()}, num_cpus=0.5)


def by_reference(data: bytes) -> Callable[[], bytes]:
    """data for an actor's constructor, through the object store: Ray Data pickles constructor
    kwargs into the map function it ships to every actor, so bytes given directly would make
    that function as large as they are (45 MB for a ResNet-18 classifier), while the object
    ref inside this callable is fetched by each actor once."""
    return functools.partial(ray.get, ray.put(data))


def actor_pool_args(cfg: CCDConfig, size: int) -> dict[str, Any]:
    """map_batches arguments of an actor pool of at most size actors."""
    gpus = cfg.compute.gpus_per_actor
    return {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=size),
            "batch_size": cfg.compute.images_per_batch, "batch_format": "pyarrow",
            "num_cpus": cfg.compute.cpus_per_actor, **({"num_gpus": gpus} if gpus > 0 else {})}
