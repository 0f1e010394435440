"""The embedded default: the synthetic world (a corpus of scenes, a teacher pretrained on
captioned synthetic images and a student backbone pretrained on single synthetic objects of
other styles), made on first use by `prepare_embedded`, so that
`python jobs/run_ccd.py` with no arguments does the whole job on one machine in minutes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from ccd_ray.demo.pretrain_backbone import BackboneSpec, backbone_file, pretrained_backbone
from ccd_ray.demo.pretrain_teacher import PretrainSpec, pretrained_teacher, teacher_folder
from ccd_ray.demo.scenes import CLASS_NAMES
from ccd_ray.io.packing import synthetic_records, write_shards
from ccd_ray.method.teacher import LOCAL_DIR_PREFIX

CORPUS_IMAGES, CORPUS_SEED, IMAGE_SIDE, MAX_OBJECTS, SHARD_SIZE = 200, 7, 96, 4, 50
SCENE_SCALE = (0.25, 0.45)  # object diameter / scene side: overlaps the pretraining scales
TEACHER_SPEC = PretrainSpec()
STUDENT_BACKBONE_SPEC = BackboneSpec()


def default_cache_dir() -> Path:
    """Where the pretrained teacher and student backbone are cached: $CCD_RAY_CACHE, else
    ~/.cache/ccd-ray/teachers."""
    return Path(os.environ.get("CCD_RAY_CACHE", Path.home() / ".cache" / "ccd-ray" / "teachers"))


def make_corpus(folder: Path, images: int = CORPUS_IMAGES, seed: int = CORPUS_SEED) -> Path:
    """Write synthetic shards into a temporary folder, then rename it into place."""
    partial = folder.with_name(folder.name + ".partial")
    write_shards(synthetic_records(images, seed, IMAGE_SIDE, MAX_OBJECTS, SCENE_SCALE),
                 pafs.LocalFileSystem(), str(partial.resolve()), SHARD_SIZE)
    partial.rename(folder)
    return folder


def corpus_folder(workdir: str | Path) -> Path:
    return Path(workdir).resolve() / f"synth-corpus-v2-{CORPUS_IMAGES}-{CORPUS_SEED}"


def embedded_defaults(workdir: str | Path) -> dict[str, Any]:
    """Config values of the embedded default: where its corpus and teacher are, whether or
    not they exist yet (prepare_embedded makes them). Building a config does no work."""
    teacher = teacher_folder(default_cache_dir(), TEACHER_SPEC)
    return {"classes": {"names": list(CLASS_NAMES)},
            "teacher": {"model": LOCAL_DIR_PREFIX + str(teacher)},
            "train": {"backbone_weights": str(backbone_file(default_cache_dir(),
                                                            STUDENT_BACKBONE_SPEC))},
            "data": {"corpus_uri": str(corpus_folder(workdir))}}


def prepare_embedded(workdir: str | Path) -> None:
    """Make the embedded default's corpus and pretrain its teacher and student backbone where
    they are missing (seconds and a few CPU minutes, once; all cached). The student starts
    from a pretrained backbone because on 150 training images a random-init ResNet learns
    almost nothing in a few epochs (held-out CF1 near zero)."""
    corpus = corpus_folder(workdir)
    if not corpus.is_dir():
        make_corpus(corpus)
    pretrained_teacher(default_cache_dir(), TEACHER_SPEC)
    pretrained_backbone(default_cache_dir(), STUDENT_BACKBONE_SPEC)
