"""A per-image, per-view cache of CLIP teacher scores in the output store, so work that does
not depend on a changed hyperparameter is never redone.

An entry is one committed stage `<output_uri>/score-cache/<kind>-<key>/` holding, per image,
the exact boxes of its views (decoded-pixel geometry), each view's C scores and the image's
views pooled by max and by mean (C scores each, what the label steps read), written per
shard of the corpus (stages/shards.py): `shards/shard-NNNNNN/` is one committed stage per
read task, `_layout.json` the corpus layout (shard count, digest of the shards' files) they
come from, and the entry's commit sums the shards' counts and lists their files
(`<attempt>/_files.json`: readers read these, see entry_files). A scoring stage killed
part-way redoes, on its rerun, only the shards not committed. The key is a hash of
everything that decides those numbers:
  - the teacher's identity: model name/tag, or for a local checkpoint the SHA-256 of its
    config and weight files (not its path), input side, logit scale, scoring rule;
  - the classes and prompt templates (the text embeddings);
  - what generates the view geometry: the corpus, decoding limits and seed, plus for phase 1
    the random-crop count and scale, for box-guided views the classifier's SHA-256, the class
    selection threshold, the round and every box/jitter setting.
None of alpha, gamma or beta is part of any key: they only act on scores after the teacher.
Lookups are per stage (a whole entry is found or computed); a view whose geometry matches
a view of a different entry is scored again. A run's raw stage of each round is an entry (its
round-R/raw marker names it), so a sweep whose base config is a finished run's reads the run's
scores, and a rerun under another run id with the same views scores nothing again."""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from ccd_ray.config import CCDConfig
from ccd_ray.io.corpus import READER_VERSION, corpus_layout
from ccd_ray.io.storage import RunStore, exists, read_json, write_json
from ccd_ray.method.rows import error_rows, id_array, list_matrix
from ccd_ray.method.shards import shards_digest
from ccd_ray.method.teacher import LOCAL_DIR_PREFIX
from ccd_ray.stages.actors import GuidedViewScorer, InitialViewScorer
from ccd_ray.stages.datasets import actor_pool_args, by_reference
from ccd_ray.stages.shards import (
    carry_shard,
    committed_shards,
    run_shards,
    shard_files,
    shard_rows,
    shard_totals,
    write_views,
)

CACHE_FOLDER = "score-cache"
# "_": skipped by Parquet dataset discovery
KEY_FILE = "_key.json"
FILES_FILE = "_files.json"    # in the committed attempt: the entry's files
LAYOUT_FILE = "_layout.json"  # in the entry folder: the corpus layout its shards come from
# The version of an entry's layout, part of every key: entries written before per-shard
# commits (no _files.json, 1) or before the pooled columns (2) are then never read as hits,
# but scored again.
ENTRY_LAYOUT = 3


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def teacher_identity(cfg: CCDConfig) -> dict[str, Any]:
    """What decides the teacher's numbers; a local checkpoint is named by its content. The
    scoring rule and scale enter as configured: what auto and a none scale resolve to follows
    from the weights, which the identity names."""
    tc = cfg.teacher
    identity: dict[str, Any] = {"image_size": tc.image_size, "logit_scale": tc.logit_scale,
                                "scoring": tc.scoring}
    if tc.model.startswith(LOCAL_DIR_PREFIX):
        folder = Path(tc.model[len(LOCAL_DIR_PREFIX):])
        identity["local_dir_files"] = {p.name: _file_digest(p)
                                       for p in sorted(folder.iterdir()) if p.is_file()}
    else:
        identity["model"] = tc.model
        pretrained = tc.pretrained
        if pretrained and Path(pretrained).is_file():
            identity["pretrained_sha256"] = _file_digest(Path(pretrained))
        else:
            identity["pretrained"] = pretrained  # a hub tag (or none: seeded random weights)
    return identity


def _common(cfg: CCDConfig) -> dict[str, Any]:
    return {"teacher": teacher_identity(cfg),
            "classes": {"names": cfg.classes.names, "prompts": cfg.classes.prompt_templates},
            "corpus": cfg.data.corpus_uri, "corpus_format": cfg.data.corpus_format,
            "reader": READER_VERSION, "entry_layout": ENTRY_LAYOUT, "seed": cfg.seed,
            "decode": {"max_image_side": cfg.data.max_image_side,
                       "max_image_pixels": cfg.data.max_image_pixels}}


def initial_key(cfg: CCDConfig) -> dict[str, Any]:
    return {"kind": "initial", **_common(cfg),
            "views": {"random_crops": cfg.initial.random_crops,
                      "crop_scale": list(cfg.initial.crop_scale)}}


def guided_key(cfg: CCDConfig, classifier_bytes: bytes, threshold: float, round_index: int
               ) -> dict[str, Any]:
    rc = cfg.relabel
    return {"kind": "guided", **_common(cfg), "round": round_index,
            "classifier_sha256": hashlib.sha256(classifier_bytes).hexdigest(),
            "classifier_input": cfg.train.image_size, "selection_threshold": float(threshold),
            "views": {"view_source": rc.view_source, "cam_threshold": rc.cam_threshold,
                      "box_mode": rc.box_mode, "box_offset": rc.box_offset,
                      "views_per_box": rc.views_per_box, "box_jitter": rc.box_jitter,
                      "cam_resolution": rc.cam_resolution}}


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def cache_store(cfg: CCDConfig) -> RunStore:
    """The cache lives next to the runs, so every run and sweep of one output_uri shares it."""
    return RunStore.open(cfg.data.output_uri, CACHE_FOLDER, cfg.data)


def stage_name(key: dict[str, Any]) -> str:
    return f"{key['kind']}-{key_hash(key)}"


class TooManyErrors(RuntimeError):
    """More images failed than data.max_error_fraction allows; nothing of the stage is committed."""


def check_errors(cfg: CCDConfig, stage: str, counts: dict[str, Any]) -> None:
    """The error-fraction rule of every scoring stage: raise TooManyErrors (nothing of the
    stage is committed) when no image could be scored, or too many failed."""
    if counts["labeled"] == 0:
        raise TooManyErrors(f"{stage}: no image of the corpus {cfg.data.corpus_uri} could be "
                            f"labeled ({counts['images']} rows, reasons: "
                            f"{counts['errors_by_reason']}); nothing was committed.")
    fraction = counts["errors"] / counts["images"]
    if fraction > cfg.data.max_error_fraction:
        raise TooManyErrors(
            f"{stage}: {counts['errors']} of {counts['images']} images failed "
            f"({fraction:.1%} > data.max_error_fraction={cfg.data.max_error_fraction}); "
            f"reasons: {counts['errors_by_reason']}. Nothing of this stage was committed.")


class Scored(NamedTuple):
    folder: str             # the committed entry (its attempt folder: _key.json, _files.json)
    teacher_passes: int     # the teacher's forward passes run by this call (0 on a hit)
    images: int             # images scored by this call (0 on a hit)
    shards_resumed: int     # shards found committed when this call started (0 on a hit)


def _check_layout(store: RunStore, stage: str, layout: dict[str, Any]) -> None:
    """Write the corpus layout (shard count and digest) into an entry before its first
    shard; a later run resuming the entry must have the same, or shard i would be other
    files."""
    path = store.path(stage, LAYOUT_FILE)
    if exists(store.fs, path):
        previous = read_json(store.fs, path)
        if previous != layout:
            raise RuntimeError(
                f"score cache {stage}: its committed shards were read from another layout of "
                f"the corpus ({previous['shards']} shards, digest {previous['shards_sha256'][:12]}"
                f"; now {layout['shards']}, {layout['shards_sha256'][:12]}); delete "
                f"{store.path(stage)} to score it again")
        return
    write_json(store.fs, path, layout)


def _score_into_cache(cfg: CCDConfig, store: RunStore, key: dict[str, Any], scorer) -> Scored:
    """Score the entry's shards not yet committed (scorer: shard rows -> per-view rows with
    the shard columns carried), then commit the entry: the counts summed from the shards'
    markers (written from the writers' reports: no read-back pass) and the list of its
    files."""
    stage = stage_name(key)
    if store.committed(stage) is not None:
        return Scored(store.committed(stage), 0, 0, 0)
    started = time.time()
    fs, layout = corpus_layout(cfg)
    shards = len(layout.tasks)
    identity = {"shards": shards, "shards_sha256": shards_digest(layout.root, layout.tasks)}
    _check_layout(store, stage, identity)
    done = committed_shards(store, stage)
    pending = [i for i in range(shards) if i not in done]
    rows = passes = 0
    if pending:
        tally = run_shards(store, stage, scorer(shard_rows(fs, layout, pending)), pending,
                             write_views, passes_column="teacher_passes")
        rows, passes = tally.rows_done, tally.passes_done
    markers, counts = shard_totals(store, stage, shards,
                                   lambda c: check_errors(cfg, f"score cache {stage}", c))
    attempt = store.begin(stage)
    write_json(store.fs, posixpath.join(attempt, KEY_FILE), key)
    write_json(store.fs, posixpath.join(attempt, FILES_FILE), shard_files(store, stage, markers))
    store.commit(stage, attempt, {
        **counts, "teacher_passes": sum(m["teacher_passes"] for m in markers), **identity,
        "shards_resumed": len(done), "seconds": round(time.time() - started, 2), "key": key})
    return Scored(attempt, passes, rows, len(done))


def entry_files(fs, folder: str) -> list[str]:
    """The Parquet files of a committed entry (folder: its committed attempt), as its commit
    listed them: the committed shards' files, nothing of a killed attempt."""
    entry = posixpath.dirname(folder)
    return [posixpath.join(entry, f) for f in read_json(fs, posixpath.join(folder, FILES_FILE))]


def initial_view_scores(cfg: CCDConfig, store: RunStore | None = None) -> Scored:
    """Phase-1 views of the corpus, scored once per key."""
    store = store or cache_store(cfg)
    return _score_into_cache(cfg, store, initial_key(cfg), lambda rows: carry_shard(
        rows, InitialViewScorer, {"cfg_dict": cfg.to_dict()},
        actor_pool_args(cfg, cfg.compute.clip_actors)))


def guided_view_scores(cfg: CCDConfig, classifier_bytes: bytes, threshold: float,
                       round_index: int, store: RunStore | None = None) -> Scored:
    """Box-guided views of round round_index around the classifier's CAM boxes, once per key."""
    store = store or cache_store(cfg)
    return _score_into_cache(
        cfg, store, guided_key(cfg, classifier_bytes, threshold, round_index),
        lambda rows: carry_shard(rows, GuidedViewScorer, {
            "cfg_dict": cfg.to_dict(), "classifier": by_reference(classifier_bytes),
            "threshold": threshold, "round_index": round_index},
            actor_pool_args(cfg, cfg.compute.clip_actors)))


def read_pooled(fs, files: list[str] | str, num_classes: int, how: str
                ) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(ids sorted, N x C pooled scores, error rows image_id/stage/reason) of an entry's files
    (entry_files, or a folder of such files), pooled over each image's views as
    labels.aggregation says. The actors stored both poolings beside the per-view scores, so
    max and mean share an entry and this reads one C-wide row an image: a zero-copy read of
    N x C float32 and the ids, no per-row Python objects."""
    if how not in ("max", "mean"):
        raise ValueError(f"aggregation {how!r}: expected 'max' or 'mean'")
    table = pads.dataset(files, filesystem=fs, format="parquet").to_table(
        columns=["image_id", f"{how}_scores", "error", "error_stage"])
    bad = pc.is_valid(table.column("error"))
    errors = error_rows(table.filter(bad))
    if len(errors):
        table = table.filter(pc.invert(bad))
    ids = id_array(table.column("image_id"))
    pooled = list_matrix(table.column(f"{how}_scores"), num_classes)
    # entries are written in shard order, so the ids are often sorted already: no copy then
    if len(ids) > 1 and not bool(np.all(ids[1:] >= ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids, pooled = ids[order], pooled[order]
    return ids, pooled, errors
