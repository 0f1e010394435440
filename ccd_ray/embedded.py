"""The embedded default: a synthetic corpus and a tiny teacher made on first use, so that
`python jobs/run_ccd.py` with no arguments does the whole job on one machine in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from ccd_ray.packing import synthetic_records, write_shards
from ccd_ray.synth.scenes import CLASS_NAMES
from ccd_ray.teacher import LOCAL_DIR_PREFIX, load_clip, save_local_dir
from ccd_ray.config import TeacherConfig

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.yaml"
CORPUS_IMAGES, CORPUS_SEED, IMAGE_SIDE, MAX_OBJECTS, SHARD_SIZE = 160, 7, 96, 3, 40


def _make_corpus(folder: Path) -> None:
    """Write the synthetic shards into a temporary folder, then rename it into place."""
    partial = folder.with_name(folder.name + ".partial")
    write_shards(synthetic_records(CORPUS_IMAGES, CORPUS_SEED, IMAGE_SIDE, MAX_OBJECTS),
                 pafs.LocalFileSystem(), str(partial.resolve()), SHARD_SIZE)
    partial.rename(folder)


def _make_teacher(folder: Path, seed: int) -> None:
    """A tiny open_clip teacher saved as a local-dir checkpoint (random weights, seeded)."""
    torch.manual_seed(seed)
    model, _, _, _ = load_clip(TeacherConfig(model="ccd-tiny-vit", pretrained=None))
    partial = folder.with_name(folder.name + ".partial")
    save_local_dir(model, "ccd-tiny-vit", partial)
    partial.rename(folder)


def embedded_defaults(workdir: str | Path) -> dict[str, Any]:
    """Config values of the embedded default, creating its corpus and teacher if missing."""
    workdir = Path(workdir).resolve()
    corpus, teacher = workdir / "synth-corpus-v1", workdir / "synth-teacher-v1"
    if not corpus.is_dir():
        _make_corpus(corpus)
    if not teacher.is_dir():
        _make_teacher(teacher, seed=CORPUS_SEED)
    return {"classes": {"names": list(CLASS_NAMES)},
            "teacher": {"model": LOCAL_DIR_PREFIX + str(teacher)},
            "data": {"corpus_uri": str(corpus)}}
