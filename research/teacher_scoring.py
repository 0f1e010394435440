"""Teacher scoring by model family on the synthetic world: softmax vs sigmoid on the
SigLIP-style teacher, and the learned logit scale vs a fixed 100 on the CLIP-style one.

    python -m research.teacher_scoring [--images 200] [--set key=value ...] [--out FILE]

Both teachers are pretrained on the world's captioned images (or loaded from the cache):
`ccd-tiny-sigmoid` with open_clip's SigLIP loss, `ccd-tiny-vit` (the embedded default's
teacher) with the CLIP loss; their single-object top-1 accuracy is printed first. Each
setting scores the embedded default's corpus (its scenes, ids and seed) with phase 1 of the
embedded default's config (global view and random crops, max-pooled) through
`ccd_ray.method.scoring.initial_scores`, then derives round-0 pseudo-labels as a run does
(`labels.initial_bias` and `labels.round_labels`: debias, no fusion). It reports, against the
scenes' ground truth, the raw scores' and the pseudo-labels' mAP and CF1/OF1 at
labels.threshold, labels per image, how many pseudo-label scores the debias clamped to
exactly 1.0, and the same bias under each `labels.debias` form (`divide`, `logit_shift`).
Prints a markdown table; writes it with the numbers to --out."""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ccd_ray.config import DEFAULT_CONFIG, CCDConfig, TeacherConfig, load_config
from ccd_ray.demo.embedded import (
    CORPUS_SEED,
    IMAGE_SIDE,
    MAX_OBJECTS,
    SCENE_SCALE,
    TEACHER_SPEC,
    default_cache_dir,
)
from ccd_ray.demo.pretrain_teacher import SIGMOID_SPEC, class_accuracy, pretrained_teacher
from ccd_ray.demo.scenes import CLASS_NAMES
from ccd_ray.io.decode import decode_image
from ccd_ray.io.packing import synthetic_records
from ccd_ray.method.labels import DEBIAS_FORMS, debias, initial_bias, round_labels
from ccd_ray.method.metrics import f1_scores, mean_average_precision
from ccd_ray.method.scoring import initial_scores
from ccd_ray.method.teacher import Teacher, load_clip

# (row name, which teacher, teacher overrides)
SETTINGS = [
    ("sigmoid-family teacher, scoring=softmax", "sigmoid", ["teacher.scoring=softmax"]),
    ("sigmoid-family teacher, scoring=sigmoid (auto)", "sigmoid", ["teacher.scoring=auto"]),
    ("default teacher, logit_scale=100 (before)", "clip", ["teacher.logit_scale=100"]),
    ("default teacher, logit_scale=null (learned)", "clip", ["teacher.logit_scale=null"]),
]


def world_corpus(images: int) -> tuple[list[torch.Tensor], list[str], np.ndarray]:
    """(decoded images, ids, N x C 0/1 truth) of the embedded default's corpus scenes (its
    first `images`, the default's corpus when 200), decoded from PNG as a run decodes them."""
    pixels, ids, truth = [], [], []
    for image_id, png, labels in synthetic_records(images, CORPUS_SEED, IMAGE_SIDE, MAX_OBJECTS,
                                                   SCENE_SCALE):
        pixels.append(torch.from_numpy(decode_image(png, max_pixels=IMAGE_SIDE * IMAGE_SIDE).image))
        ids.append(image_id)
        truth.append([name in labels for name in CLASS_NAMES])
    return pixels, ids, np.array(truth, dtype=np.int8)


def label_quality(raw: torch.Tensor, truth: np.ndarray, cfg: CCDConfig) -> dict[str, float]:
    """Raw pooled scores and their round-0 pseudo-labels (debiased with cfg.labels) against
    truth: mAP, CF1 and OF1 (percent) at labels.threshold, labels per image, and the fraction
    of pseudo-label scores at exactly 1.0 (clamped by labels.debias=divide); and mAP/CF1 of
    the same bias under each labels.debias form."""
    lc = cfg.labels
    bias, _ = initial_bias(raw, lc.threshold, cfg.initial.entropy_threshold, lc.bias_statistic)
    pseudo = round_labels(raw, None, bias, lc.gamma, lc.alpha, lc.debias).numpy()
    out: dict[str, float] = {}
    for name, scores in (("raw", raw.numpy()), ("pseudo", pseudo)):
        f1 = f1_scores(scores, truth, lc.threshold)
        out[f"{name}_mAP"] = 100 * mean_average_precision(scores, truth)
        out[f"{name}_CF1"] = 100 * f1["CF1"]
        out[f"{name}_OF1"] = 100 * f1["OF1"]
        out[f"{name}_labels_per_image"] = float((scores >= lc.threshold).sum(axis=1).mean())
    out["pseudo_at_1"] = float((pseudo == 1.0).mean())
    for form in DEBIAS_FORMS:
        debiased = debias(raw, bias, lc.gamma, form).numpy()
        out[f"{form}_mAP"] = 100 * mean_average_precision(debiased, truth)
        out[f"{form}_CF1"] = 100 * f1_scores(debiased, truth, lc.threshold)["CF1"]
    out["truth_labels_per_image"] = float(truth.sum(axis=1).mean())
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| setting | scale | bias | raw mAP | raw CF1 | pseudo mAP | pseudo CF1 | pseudo OF1 "
            "| labels/image (truth) | pseudo at 1.0 | divide mAP / CF1 | logit_shift mAP / CF1 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head] + [
        f"| {r['setting']} | {r['logit_scale']:.2f} | {r['logit_bias']:.2f} "
        f"| {r['raw_mAP']:.1f} | {r['raw_CF1']:.1f} | {r['pseudo_mAP']:.1f} "
        f"| {r['pseudo_CF1']:.1f} | {r['pseudo_OF1']:.1f} "
        f"| {r['pseudo_labels_per_image']:.2f} ({r['truth_labels_per_image']:.2f}) "
        f"| {100 * r['pseudo_at_1']:.1f}% | {r['divide_mAP']:.1f} / {r['divide_CF1']:.1f} "
        f"| {r['logit_shift_mAP']:.1f} / {r['logit_shift_CF1']:.1f} |"
        for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200,
                        help="scenes of the embedded corpus (200 = all of it)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="extra config override for every setting, e.g. labels.gamma=0")
    parser.add_argument("--cache", default=str(default_cache_dir()))
    parser.add_argument("--out", default="teacher_scoring.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="No pretrained weights")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip logs each load at INFO/WARNING
    torch.set_num_threads(1)
    started = time.time()
    specs = {"sigmoid": SIGMOID_SPEC, "clip": TEACHER_SPEC}
    teachers = {which: pretrained_teacher(args.cache, spec) for which, spec in specs.items()}
    accuracy = {which: class_accuracy(load_clip(TeacherConfig(model=teachers[which]))[0], spec,
                                      CLASS_NAMES) for which, spec in specs.items()}
    print(f"single-object top-1 (pretraining-style images): {accuracy}", flush=True)
    images, ids, truth = world_corpus(args.images)
    rows = []
    for setting, which, overrides in SETTINGS:
        cfg = load_config(DEFAULT_CONFIG, [f"classes.names={list(CLASS_NAMES)}",
                                           f"teacher.model={teachers[which]}", *overrides,
                                           *args.overrides])
        teacher = Teacher.from_config(cfg.teacher, cfg.classes)
        raw = initial_scores(teacher, images, ids, cfg)
        rows.append({"setting": setting, "teacher": teachers[which], "scoring": teacher.scoring,
                     "logit_scale": teacher.logit_scale, "logit_bias": teacher.logit_bias,
                     **label_quality(raw, truth, cfg)})
        print(f"{setting}: done ({time.time() - started:.0f} s)", flush=True)
    table = markdown(rows)
    print(f"\n{len(ids)} images, overrides {args.overrides or 'none'}\n\n{table}")
    Path(args.out).write_text(json.dumps({"images": len(ids), "overrides": args.overrides,
                                          "single_object_accuracy": accuracy, "rows": rows,
                                          "table": table}, indent=2))


if __name__ == "__main__":
    main()
