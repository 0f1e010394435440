"""Pretrain (or load the cached) synthetic-world teacher and measure its deficiencies.

    python -m research.teacher_diagnostics [--scenes 400] [--cache ~/.cache/ccd-ray]

Prints the markdown tables quoted in research/README.md and writes them with the raw numbers
to --out (JSON)."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from ccd_ray.config import ClassesConfig, TeacherConfig
from ccd_ray.demo.embedded import SCENE_SCALE, TEACHER_SPEC, default_cache_dir
from ccd_ray.demo.pretrain_teacher import class_accuracy, popularity, pretrained_teacher
from ccd_ray.demo.scenes import CLASS_NAMES, make_scenes
from ccd_ray.method.teacher import Teacher, load_clip
from research.teacher_probe import diagnose, diagnostics_markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1000, help="seed of the test scenes")
    parser.add_argument("--cache", default=str(default_cache_dir()))
    parser.add_argument("--out", default="teacher_diagnostics.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="No pretrained weights")
    torch.set_num_threads(1)
    started = time.time()
    spec_text = pretrained_teacher(args.cache, TEACHER_SPEC)
    print(f"teacher: {spec_text} ({time.time() - started:.0f} s)")
    model, *_ = load_clip(TeacherConfig(model=spec_text))
    accuracy = class_accuracy(model, TEACHER_SPEC, CLASS_NAMES)
    teacher = Teacher.from_config(TeacherConfig(model=spec_text), ClassesConfig(names=CLASS_NAMES))
    scenes = make_scenes(args.scenes, args.seed, 96, max_objects=4, scale=SCENE_SCALE)
    report = diagnose(teacher, scenes, CLASS_NAMES, popularity(TEACHER_SPEC, CLASS_NAMES),
                      offset=0.125)
    report["single_object_accuracy"] = accuracy
    print(f"single-object top-1 accuracy (pretraining-style images): {accuracy:.1%}\n")
    print(diagnostics_markdown(report))
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
