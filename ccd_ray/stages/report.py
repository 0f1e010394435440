"""report.md and its PNG plots: mAP per round, per-class AP, sample images with CAM boxes."""

from __future__ import annotations

import io
import posixpath
from typing import Any

import matplotlib
import numpy as np
import pyarrow.dataset as pads
import torch
from matplotlib.figure import Figure  # no pyplot: no GUI backend on cluster nodes
from matplotlib.patches import Rectangle

from ccd_ray.config import CCDConfig
from ccd_ray.io.storage import RunStore, write_bytes
from ccd_ray.method.cam import cam_boxes, select_classes
from ccd_ray.method.classifier import load_classifier, normalise

SAMPLES = 8


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_map_per_round(metrics: dict[str, Any]) -> bytes:
    rounds = [r for r in metrics["rounds"] if "mAP" in r]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot([r["round"] for r in rounds], [r["mAP"] for r in rounds], "o-", label="pseudo-labels")
    holdout = metrics.get("classifier_holdout")
    if holdout:
        ax.axhline(holdout["mAP"], color="tab:green", ls="--", label="classifier (held out)")
    ax.set_xlabel("round")
    ax.set_ylabel("mAP (%)")
    ax.set_xticks([r["round"] for r in rounds])
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_per_class_ap(metrics: dict[str, Any], class_names: list[str]) -> bytes:
    series = {"teacher, before debias": metrics.get("teacher_before_debias"),
              "final pseudo-labels": metrics["rounds"][-1] if metrics["rounds"] else None,
              "classifier (held out)": metrics.get("classifier_holdout")}
    series = {k: v for k, v in series.items() if v and "per_class_AP" in v}
    fig = Figure(figsize=(max(6, 0.6 * len(class_names)), 3.5))
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(class_names))
    for i, (name, values) in enumerate(series.items()):
        ap = [values["per_class_AP"].get(c) or 0.0 for c in class_names]
        ax.bar(x + i * width, ap, width, label=name)
    ax.set_xticks(x + width * (len(series) - 1) / 2, class_names, rotation=45, ha="right")
    ax.set_ylabel("AP (%)")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_samples(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes, inputs_path: str
                 ) -> bytes:
    """Held-out images (training inputs if none) with the classifier's CAM boxes and labels."""
    table = pads.dataset(inputs_path, filesystem=store.fs, format="parquet").to_table()
    order = np.argsort(~np.asarray(table.column("holdout").to_pylist()), kind="stable")
    rows = table.take(order[:SAMPLES])
    model, names, size = load_classifier(io.BytesIO(classifier_bytes))
    pixels = torch.from_numpy(np.stack([np.frombuffer(p, np.uint8).reshape(3, size, size)
                                        for p in rows.column("pixels").to_pylist()]))
    with torch.no_grad():
        logits, cams = model(normalise(pixels))
    probs = torch.sigmoid(logits)
    chosen = select_classes(probs, cfg.labels.threshold)
    cols = 4
    grid_rows = (len(pixels) + cols - 1) // cols
    fig = Figure(figsize=(3 * cols, 3.3 * grid_rows))
    axes = fig.subplots(grid_rows, cols, squeeze=False)
    colours = matplotlib.colormaps["tab10"]
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:len(pixels)]):
        ax.imshow(pixels[i].permute(1, 2, 0).numpy())
        boxes = cam_boxes(cams[i], chosen[i], size, size, cfg.relabel.cam_threshold,
                          cfg.relabel.box_mode, cfg.relabel.cam_resolution)
        for c, (x0, y0, x1, y1) in zip(chosen[i], boxes):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                   color=colours(c % 10)))
            ax.text(x0 + 1, y0 + 6, f"{names[c]} {probs[i, c]:.2f}", fontsize=6,
                    color="white", backgroundcolor=colours(c % 10))
        ax.set_title(rows.column("image_id")[i].as_py()[-24:], fontsize=7)
    return _png(fig)


def _metrics_row(name: str, m: dict[str, Any] | None) -> str:
    if not m or "mAP" not in m:
        return f"| {name} | - | - | - | - |"
    return f"| {name} | {m['images']} | {m['mAP']:.1f} | {m['CF1']:.1f} | {m['OF1']:.1f} |"


def report_markdown(cfg: CCDConfig, metrics: dict[str, Any]) -> str:
    lines = [f"# ccd-ray report: run `{cfg.run_id}`", "",
             f"Corpus `{cfg.data.corpus_uri}`, {len(cfg.classes.names)} classes, "
             f"{cfg.relabel.rounds} relabel round(s), {cfg.train.epochs} epochs "
             f"(alpha={cfg.labels.alpha}, gamma={cfg.labels.gamma}, beta={cfg.train.beta}).", ""]
    if not metrics.get("ground_truth_images"):
        lines += ["No ground truth in the corpus: nothing to score. The labels are in "
                  "`round-*/labels/`.", "", "![samples with CAM boxes](samples.png)", ""]
        return "\n".join(lines)
    lines += [f"Scored against the ground truth of {metrics['ground_truth_images']} images "
              f"(CF1/OF1 at threshold {cfg.labels.threshold}).", "",
              "| what | images | mAP | CF1 | OF1 |", "| --- | --- | --- | --- | --- |",
              _metrics_row("teacher scores, before debias", metrics.get("teacher_before_debias"))]
    lines += [_metrics_row(f"pseudo-labels, round {r['round']}", r) for r in metrics["rounds"]]
    lines += [_metrics_row("classifier, held-out split", metrics.get("classifier_holdout")), "",
              "![mAP per round](map_per_round.png)", "", "![per-class AP](per_class_ap.png)", "",
              "![samples with CAM boxes](samples.png)", ""]
    return "\n".join(lines)


def write_report(cfg: CCDConfig, store: RunStore, folder: str, metrics: dict[str, Any],
                 classifier_bytes: bytes, inputs_path: str) -> None:
    if metrics.get("ground_truth_images"):
        write_bytes(store.fs, posixpath.join(folder, "map_per_round.png"),
                    plot_map_per_round(metrics))
        write_bytes(store.fs, posixpath.join(folder, "per_class_ap.png"),
                    plot_per_class_ap(metrics, cfg.classes.names))
    write_bytes(store.fs, posixpath.join(folder, "samples.png"),
                plot_samples(cfg, store, classifier_bytes, inputs_path))
    write_bytes(store.fs, posixpath.join(folder, "report.md"),
                report_markdown(cfg, metrics).encode())
