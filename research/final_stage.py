"""The final stage's choices, replayed on the quality benchmark's saved score matrices.

    python -m research.final_stage outputs/quality/scores-default-*.npz

`benchmarks/quality.py` saves, per world and seed, every round's raw scores and labels, the
classifier's probabilities and the truth (`scores-<tag>-<world>-s<seed>.npz`). This replays
the final stage with the product's own functions (`labels.final_label_scores`,
`thresholds.class_thresholds`, `metrics`) under other fusion weights (`labels.alpha` as the
final fusion uses it), sources and threshold rules, without training again, and prints the
final labels' mAP and CF1 minus the teacher's zero-shot labels (training split, each thresholded
by the same rule from its own scores, as the job's evaluation does), mean over the files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ccd_ray.method.labels import final_label_scores
from ccd_ray.method.metrics import f1_scores, mean_average_precision, per_class_ap
from ccd_ray.method.thresholds import class_thresholds

RULES = ("count", "otsu", "rate")
VARIANTS = [("pseudo", 0.4), *(("fusion", a) for a in (0.2, 0.4, 0.6, 0.8)), ("classifier", 0.4)]


def scored(scores: np.ndarray, truth: np.ndarray, train: np.ndarray, rule: str,
           zero_shot: np.ndarray) -> tuple[float, float]:
    """(mAP, CF1) in percent on the training split, CF1 at the rule's label-free thresholds
    taken over every image (as the job's final stage takes them)."""
    thresholds = class_thresholds(scores, rule, 0.5, zero_shot)
    return (100 * mean_average_precision(scores[train], truth[train]),
            100 * f1_scores(scores[train], truth[train], thresholds)["CF1"])


def replay(path: Path) -> dict[tuple[str, float, str], tuple[float, float]]:
    """Per (source, alpha, rule): the final labels minus zero-shot (mAP, CF1), training split."""
    data = np.load(path)
    train, truth, raw = ~data["holdout"], data["truth"], data["raw0"]
    rounds = sorted(int(k[len("labels"):]) for k in data.files if k.startswith("labels"))
    pseudo, classifier = data[f"labels{rounds[-1]}"], data["classifier"]
    out = {}
    for rule in RULES:
        base = scored(raw, truth, train, rule, raw)
        for source, alpha in VARIANTS:
            final = final_label_scores(source, pseudo, classifier, alpha)
            got = scored(final, truth, train, rule, raw)
            out[(source, alpha, rule)] = (got[0] - base[0], got[1] - base[1])
    return out


def per_class(path: Path, alpha: float = 0.4) -> list[tuple[float, float, float, float]]:
    """Per class on the training split: (share of images holding it, zero-shot AP, final
    labels' AP (fusion at alpha), classifier's held-out AP minus the teacher's), percent."""
    data = np.load(path)
    train, truth, raw = ~data["holdout"], data["truth"], data["raw0"]
    rounds = sorted(int(k[len("labels"):]) for k in data.files if k.startswith("labels"))
    final = final_label_scores("fusion", data[f"labels{rounds[-1]}"], data["classifier"], alpha)
    held = data["holdout"]
    zs, fi = per_class_ap(raw[train], truth[train]), per_class_ap(final[train], truth[train])
    cl = per_class_ap(data["classifier"][held], truth[held]) - per_class_ap(raw[held],
                                                                           truth[held])
    share = truth[train].mean(axis=0)
    return [(100 * f, 100 * z, 100 * g, 100 * c) for f, z, g, c in zip(share, zs, fi, cl)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--per-class", action="store_true",
                        help="also each file's per-class APs, by class frequency")
    args = parser.parse_args()
    if args.per_class:
        for path in args.files:
            print(f"{path.name}\n\n| class share (%) | zero-shot AP | final AP | classifier - "
                  "teacher AP (held-out) |\n|---:|---:|---:|---:|")
            for row in sorted(per_class(path), reverse=True):
                print("| " + " | ".join(f"{v:.1f}" for v in row) + " |")
            print()
    results = [replay(f) for f in args.files]
    print(f"{len(results)} files: {', '.join(f.name for f in args.files)}\n")
    print("| source | alpha | rule | final - zero-shot mAP | final - zero-shot CF1 |")
    print("|---|---:|---|---:|---:|")
    for key in results[0]:
        gains = np.array([r[key] for r in results])
        print(f"| {key[0]} | {key[1]} | {key[2]} | {gains[:, 0].mean():+.1f} "
              f"| {gains[:, 1].mean():+.1f} |")


if __name__ == "__main__":
    main()
