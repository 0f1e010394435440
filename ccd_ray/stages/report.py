"""report.md and its PNG plots: mAP per round, per-class AP, sample images with CAM boxes
and their ground truth."""

from __future__ import annotations

import io
import posixpath
import textwrap
from typing import Any

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
from matplotlib.figure import Figure  # no pyplot: no GUI backend on cluster nodes
from matplotlib.patches import Rectangle

from ccd_ray.config import CCDConfig
from ccd_ray.io.inputs_codec import decode_inputs
from ccd_ray.io.storage import RunStore, write_bytes
from ccd_ray.method.cam import cam_boxes, select_classes
from ccd_ray.method.classifier import load_classifier, normalise

SAMPLES = 8


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def class_colours(count: int) -> list[tuple[float, float, float, float]]:
    """One distinct colour per class: tab10 up to 10 classes, beyond that `count` evenly
    spaced hues (hsv is cyclic, so its end point, a second red, is left out)."""
    if count <= 10:
        return [matplotlib.colormaps["tab10"](c) for c in range(count)]
    return [tuple(float(v) for v in matplotlib.colormaps["hsv"](c / count))
            for c in range(count)]


def plot_map_per_round(metrics: dict[str, Any]) -> bytes:
    rounds = [r for r in metrics["rounds"] if "mAP" in r]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot([r["round"] for r in rounds], [r["mAP"] for r in rounds], "o-", label="pseudo-labels")
    for key, colour, name in (("teacher_before_debias", "tab:grey", "teacher zero-shot"),
                              ("final_labels", "tab:purple", "final labels"),
                              ("classifier_holdout", "tab:green", "classifier (held out)")):
        if metrics.get(key):
            ax.axhline(metrics[key]["mAP"], color=colour, ls="--", label=name)
    ax.set_xlabel("round")
    ax.set_ylabel("mAP (%)")
    ax.set_xticks([r["round"] for r in rounds])
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_per_class_ap(metrics: dict[str, Any], class_names: list[str]) -> bytes:
    series = {"teacher zero-shot": metrics.get("teacher_before_debias"),
              "last round's pseudo-labels": metrics["rounds"][-1] if metrics["rounds"] else None,
              "final labels": metrics.get("final_labels"),
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


def sample_rows(store: RunStore, inputs_path: str) -> pa.Table:
    """Up to SAMPLES training inputs, held-out ones first, by row selection, never the whole
    table: their ids come from scans of the small id and split columns that stop once they
    have them, then one scan for those ids stops at the last of them. The driver holds one
    batch of SAMPLES rows at a time (plus at most one Parquet row group being decoded)."""
    dataset = pads.dataset(inputs_path, filesystem=store.fs, format="parquet")
    fragments = list(dataset.get_fragments())

    def head(count: int, columns: list[str], condition) -> pa.Table:
        # file by file, in order: a dataset-wide scan reads files ahead of the one it is in
        # (fragment_readahead >= 1), so how far past the last row it needs varied run to run
        parts, found = [dataset.schema.empty_table().select(columns)], 0
        for fragment in fragments:
            if found >= count:
                break
            parts.append(fragment.head(count - found, columns=columns, filter=condition,
                                       batch_size=SAMPLES, batch_readahead=1))
            found += parts[-1].num_rows
        return pa.concat_tables(parts)

    ids = head(SAMPLES, ["image_id"], pc.field("holdout")).column("image_id").to_pylist()
    if len(ids) < SAMPLES:
        ids += head(SAMPLES - len(ids), ["image_id"], ~pc.field("holdout")
                    ).column("image_id").to_pylist()
    rows = head(len(ids), ["image_id", "image"], pc.field("image_id").isin(ids))
    position = {image_id: i for i, image_id in enumerate(ids)}
    return rows.take(np.argsort([position[i] for i in rows.column("image_id").to_pylist()]))


def samples_figure(cfg: CCDConfig, rows: pa.Table, classifier_bytes: bytes,
                   thresholds: np.ndarray, truth: dict[str, list[str]]) -> Figure:
    """The rows' images with the classifier's CAM boxes and labels, and each image's ground
    truth where the corpus has it. A dashed box, labelled '< threshold', is of a class below
    its threshold (the top class, boxed so that every image gets a look)."""
    model, names, size = load_classifier(io.BytesIO(classifier_bytes))
    pixels = torch.from_numpy(decode_inputs(rows.column("image").to_pylist(), size))
    with torch.no_grad():
        logits, cams = model(normalise(pixels))
    probs = torch.sigmoid(logits)
    chosen = select_classes(probs, torch.from_numpy(thresholds))
    cols = 4
    grid_rows = (len(pixels) + cols - 1) // cols
    fig = Figure(figsize=(3 * cols, 3.5 * grid_rows))
    axes = fig.subplots(grid_rows, cols, squeeze=False)
    colours = class_colours(len(names))
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in enumerate(axes.ravel()[:len(pixels)]):
        ax.imshow(pixels[i].permute(1, 2, 0).numpy())
        boxes = cam_boxes(cams[i], chosen[i], size, size, cfg.relabel.cam_threshold,
                          cfg.relabel.box_mode, cfg.relabel.cam_resolution)
        for c, (x0, y0, x1, y1) in zip(chosen[i], boxes):
            below = float(probs[i, c]) < float(thresholds[c])
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5,
                                   ls="--" if below else "-", color=colours[c]))
            ax.text(x0 + 1, y0 + 6, f"{names[c]} {probs[i, c]:.2f}"
                    + (f" < {thresholds[c]:.2f}" if below else ""), fontsize=6,
                    color="white", backgroundcolor=colours[c])
        image_id = rows.column("image_id")[i].as_py()
        title = image_id[-24:]
        if image_id in truth:
            # wrapped: a long list would run into the neighbouring titles
            title += "\n" + textwrap.fill("truth: " + (", ".join(truth[image_id]) or "none"), 40)
        ax.set_title(title, fontsize=7)
    return fig


def plot_samples(cfg: CCDConfig, store: RunStore, classifier_bytes: bytes, inputs_path: str,
                 thresholds: np.ndarray, truth: dict[str, list[str]]) -> bytes:
    """Held-out images (training inputs if too few) as samples_figure draws them."""
    return _png(samples_figure(cfg, sample_rows(store, inputs_path), classifier_bytes,
                               thresholds, truth))


def _metrics_row(name: str, split: str, m: dict[str, Any] | None) -> str:
    if not m or "mAP" not in m:
        return f"| {name} | {split} | - | - | - | - |"
    return (f"| {name} | {split} | {m['images']} | {m['mAP']:.1f} | {m['CF1']:.1f} | "
            f"{m['OF1']:.1f} |")


FINAL_SOURCE_TEXT = {
    "pseudo": "the last round's pseudo-labels",
    "classifier": "the classifier's probabilities",
    "fusion": "alpha * the last round's pseudo-labels + (1 - alpha) * the classifier's "
              "probabilities"}


def report_markdown(cfg: CCDConfig, metrics: dict[str, Any]) -> str:
    lc = cfg.labels
    lines = [f"# ccd-ray report: run `{cfg.run_id}`", "",
             f"Corpus `{cfg.data.corpus_uri}`, {len(cfg.classes.names)} classes, "
             f"{cfg.relabel.rounds} relabel round(s), {cfg.train.epochs} epochs "
             f"(alpha={lc.alpha}, gamma={lc.gamma}, beta={cfg.train.beta}).", "",
             "Final labels of every image: `final/labels/`, from "
             f"{FINAL_SOURCE_TEXT[lc.final_source]} (`labels.final_source={lc.final_source}`); "
             "images that could not be labeled are in `final/errors.parquet`.", ""]
    ground_truth_trained = cfg.train.targets == "ground_truth"
    if ground_truth_trained:
        lines += ["**This classifier was trained on the corpus's ground-truth labels** "
                  "(`train.targets=ground_truth`, a supervised upper bound), not on the "
                  "pseudo-labels: the pseudo-label rows below were not its training targets.", ""]
    if not metrics.get("ground_truth_images"):
        lines += ["No ground truth in the corpus: nothing to score.", "",
                  "![samples with CAM boxes](samples.png)", ""]
        return "\n".join(lines)
    if lc.threshold_rule == "fixed":
        at = f"at threshold {lc.threshold}"
    elif lc.threshold_rule == "count":
        at = ("at per-class thresholds of `labels.threshold_rule=count`: each row labels, per "
              "class, as many images as Otsu's split of the teacher's zero-shot scores gives "
              "that class, in the order of the row's own scores (the classifier's over its "
              "training split); no ground truth sets them")
    else:
        at = (f"at per-class thresholds of `labels.threshold_rule={lc.threshold_rule}`, each "
              "row's from its own scores over the corpus and the classifier's from its "
              "training-split probabilities; no ground truth sets them")
    unused = " (not trained on)" if ground_truth_trained else ""
    lines += [f"Scored against the ground truth of {metrics['ground_truth_images']} images "
              f"(CF1/OF1 {at}).", "",
              "| what | split | images | mAP | CF1 | OF1 |",
              "| --- | --- | --- | --- | --- | --- |",
              _metrics_row("teacher zero-shot (same views)", "training",
                           metrics.get("teacher_before_debias"))]
    lines += [_metrics_row(f"pseudo-labels, round {r['round']}{unused}", "training", r)
              for r in metrics["rounds"]]
    lines += [_metrics_row(f"final labels ({lc.final_source})", "training",
                           metrics.get("final_labels")),
              _metrics_row("teacher zero-shot (same views)", "held-out",
                           metrics.get("teacher_holdout")),
              _metrics_row("classifier", "held-out", metrics.get("classifier_holdout")), "",
              "![mAP per round](map_per_round.png)", "", "![per-class AP](per_class_ap.png)", "",
              "![samples with CAM boxes](samples.png)", ""]
    return "\n".join(lines)


# every text a plot draws (class names, image ids) is data: '$' must not start mathtext,
# which raises on names such as 'm00$\frac$' after all the run's work is done
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def write_report(cfg: CCDConfig, store: RunStore, folder: str, metrics: dict[str, Any],
                 classifier_bytes: bytes, inputs_path: str, truth: dict[str, list[str]]) -> None:
    with matplotlib.rc_context(LITERAL_TEXT):
        _write_report(cfg, store, folder, metrics, classifier_bytes, inputs_path, truth)


def _write_report(cfg: CCDConfig, store: RunStore, folder: str, metrics: dict[str, Any],
                  classifier_bytes: bytes, inputs_path: str, truth: dict[str, list[str]]) -> None:
    if metrics.get("ground_truth_images"):
        write_bytes(store.fs, posixpath.join(folder, "map_per_round.png"),
                    plot_map_per_round(metrics))
        write_bytes(store.fs, posixpath.join(folder, "per_class_ap.png"),
                    plot_per_class_ap(metrics, cfg.classes.names))
    thresholds = np.asarray(list(metrics["thresholds"]["classifier"].values()), np.float32)
    write_bytes(store.fs, posixpath.join(folder, "samples.png"),
                plot_samples(cfg, store, classifier_bytes, inputs_path, thresholds, truth))
    write_bytes(store.fs, posixpath.join(folder, "report.md"),
                report_markdown(cfg, metrics).encode())
