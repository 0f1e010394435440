"""Measure the teacher's two deficiencies on synthetic scenes, from ground truth.

- View dependency: the probability the teacher gives a present class from the global view
  against from a crop around that object (its true box widened like a CAM box), by the
  number of objects in the scene; and the mAP of global-view scores against the max over
  the global view and the true-box crops.
- Class bias: how often each class is the global view's top-1 class among the scenes that
  contain it, against its pretraining popularity (rank correlation; positive = the teacher
  leans toward popular classes).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ccd_ray.demo.scenes import Scene
from ccd_ray.method.metrics import mean_average_precision, spearman
from ccd_ray.method.teacher import Teacher
from ccd_ray.method.views import box_guided_boxes, crop_views, global_box


def _image(scene: Scene) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1).contiguous()


@torch.no_grad()
def scene_scores(teacher: Teacher, scenes: list[Scene], offset: float
                 ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(N x C global-view scores, per scene a boxes x C array of true-box crop scores)."""
    global_scores, crop_scores = [], []
    for scene in scenes:
        image = _image(scene)
        _, height, width = image.shape
        boxes = [global_box(height, width)[0]] + [
            box_guided_boxes(np.array(box), height, width, 1, offset, 0.0,
                             np.random.default_rng(0))[0] for box in scene.boxes]
        scores = teacher.score(crop_views(image, np.stack(boxes), teacher.image_size,
                                          teacher.mean, teacher.std)).numpy()
        global_scores.append(scores[0])
        crop_scores.append(scores[1:])
    return np.stack(global_scores), crop_scores


def view_dependency(scenes: list[Scene], class_names: list[str], global_scores: np.ndarray,
                    crop_scores: list[np.ndarray]) -> dict:
    index = {name: i for i, name in enumerate(class_names)}
    by_count: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for scene, g, crops in zip(scenes, global_scores, crop_scores):
        row = by_count[len(scene.boxes)]
        for box_label, crop in zip(scene.box_labels, crops):
            c = index[box_label]
            row["global"].append(float(g[c]))
            row["crop"].append(float(crop[c]))
            row["global_top1"].append(float(g.argmax() == c))
            row["crop_top1"].append(float(crop.argmax() == c))
    truth = np.zeros_like(global_scores)
    for n, scene in enumerate(scenes):
        truth[n, [index[name] for name in scene.labels]] = 1
    with_crops = np.stack([np.max(np.vstack([g[None], crops]), axis=0)
                           for g, crops in zip(global_scores, crop_scores)])
    return {
        "by_objects": {count: {"objects": len(row["global"]),
                               **{f"mean_p_{k}": float(np.mean(v)) for k, v in row.items()}}
                       for count, row in sorted(by_count.items())},
        "global_mAP": 100 * mean_average_precision(global_scores, truth),
        "global_plus_true_box_crops_mAP": 100 * mean_average_precision(with_crops, truth),
    }


def class_bias(scenes: list[Scene], class_names: list[str], global_scores: np.ndarray,
               pretrain_popularity: np.ndarray) -> dict:
    """Per class: true frequency in the scenes, top-1 rate of the global view, and the recall
    of top-1 among scenes containing the class; rank correlation of the latter two against
    pretraining popularity."""
    index = {name: i for i, name in enumerate(class_names)}
    count = len(class_names)
    present = np.zeros((len(scenes), count), dtype=bool)
    for n, scene in enumerate(scenes):
        present[n, [index[name] for name in scene.labels]] = True
    top1 = global_scores.argmax(axis=1)
    top1_rate = np.bincount(top1, minlength=count) / len(scenes)
    true_rate = present.mean(axis=0)
    hits = np.array([(top1[present[:, c]] == c).mean() if present[:, c].any() else np.nan
                     for c in range(count)])
    return {
        "classes": [{"class": class_names[c], "pretrain_popularity": float(pretrain_popularity[c]),
                     "true_frequency": float(true_rate[c]), "top1_rate": float(top1_rate[c]),
                     "top1_when_present": float(hits[c]),
                     "mean_score": float(global_scores[:, c].mean())}
                    for c in range(count)],
        "rank_corr_top1_rate_vs_popularity": spearman(top1_rate / np.maximum(
            true_rate, 1e-9), pretrain_popularity),
        "rank_corr_mean_score_vs_popularity": spearman(global_scores.mean(axis=0),
                                                               pretrain_popularity),
    }


def diagnose(teacher: Teacher, scenes: list[Scene], class_names: list[str],
             pretrain_popularity: np.ndarray, offset: float) -> dict:
    global_scores, crop_scores = scene_scores(teacher, scenes, offset)
    return {"scenes": len(scenes),
            "view_dependency": view_dependency(scenes, class_names, global_scores, crop_scores),
            "class_bias": class_bias(scenes, class_names, global_scores, pretrain_popularity)}


def diagnostics_markdown(report: dict) -> str:
    view, bias = report["view_dependency"], report["class_bias"]
    lines = ["| objects in scene | objects | mean p(class), global view | mean p(class), crop "
             "around it | top-1 from global | top-1 from crop |", "|---|---|---|---|---|---|"]
    for count, row in view["by_objects"].items():
        lines.append(f"| {count} | {row['objects']} | {row['mean_p_global']:.3f} | "
                     f"{row['mean_p_crop']:.3f} | {row['mean_p_global_top1']:.2f} | "
                     f"{row['mean_p_crop_top1']:.2f} |")
    lines += ["", f"Global-view mAP {view['global_mAP']:.1f}; max over global view and "
              f"true-box crops {view['global_plus_true_box_crops_mAP']:.1f}.", "",
              "| class | pretraining popularity | frequency in scenes | top-1 rate (global) | "
              "top-1 when present | mean score |", "|---|---|---|---|---|---|"]
    for row in sorted(bias["classes"], key=lambda r: -r["pretrain_popularity"]):
        lines.append(f"| {row['class']} | {row['pretrain_popularity']:.3f} | "
                     f"{row['true_frequency']:.3f} | {row['top1_rate']:.3f} | "
                     f"{row['top1_when_present']:.2f} | {row['mean_score']:.3f} |")
    lines += ["", "Rank correlation with pretraining popularity: top-1 rate / frequency "
              f"{bias['rank_corr_top1_rate_vs_popularity']:+.2f}, mean score "
              f"{bias['rank_corr_mean_score_vs_popularity']:+.2f}."]
    return "\n".join(lines)
