"""Which final labels and which threshold rule, measured on finished runs of the job.

    python -m research.final_labels --runs fl-s0 [fl-s1 ...] [--output-uri outputs]

For each run (a committed `jobs/run_ccd.py` run whose corpus carries ground truth) it
recomputes, with the product's own functions (`labels.final_label_scores`,
`labels.class_thresholds`, `metrics.score_rows`), every `labels.final_source` on the training
split and the classifier on the held-out split, under every `labels.threshold_rule`, next to
the teacher's zero-shot scores of the same views. The classifier's probabilities come from the
run's `final/classifier.pt` over its `train-inputs/`, in this process. Ground truth only
scores; it sets no threshold. Prints one markdown table per run and the mean over runs."""

from __future__ import annotations

import argparse
import io
import json
import posixpath
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch
import yaml

from ccd_ray.config import config_from_dict
from ccd_ray.io.corpus import corpus_truth
from ccd_ray.io.inputs_codec import decode_inputs
from ccd_ray.io.storage import RunStore, read_bytes
from ccd_ray.method import labels as label_ops
from ccd_ray.method.classifier import load_classifier, normalise
from ccd_ray.method.metrics import score_rows
from ccd_ray.method.rows import align_rows
from ccd_ray.method.schedule import is_holdout
from ccd_ray.method.thresholds import class_thresholds
from ccd_ray.stages import labeling

RULES = ("fixed", "rate", "otsu", "count")
SOURCES = ("pseudo", "classifier", "fusion")


def classifier_probabilities(store: RunStore, batch_size: int = 64
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted ids, N x C probabilities, held-out flags) of the run's final classifier over its
    training inputs, computed here batch by batch."""
    model, _, size = load_classifier(io.BytesIO(read_bytes(
        store.fs, posixpath.join(store.committed("final"), "classifier.pt"))))
    model.eval()
    dataset = pads.dataset(store.committed("train-inputs"), filesystem=store.fs, format="parquet")
    ids, probs, holdout = [], [], []
    for batch in dataset.to_batches(columns=["image_id", "image", "holdout"],
                                    batch_size=batch_size):
        pixels = torch.from_numpy(decode_inputs(batch.column("image").to_pylist(), size))
        with torch.no_grad():
            probs.append(torch.sigmoid(model(normalise(pixels))[0]).numpy())
        ids.append(np.asarray(batch.column("image_id").to_pylist(), dtype=str))
        holdout.append(np.asarray(batch.column("holdout").to_pylist(), dtype=bool))
    all_ids = np.concatenate(ids)
    order = np.argsort(all_ids)
    return all_ids[order], np.concatenate(probs)[order], np.concatenate(holdout)[order]


def measure_run(output_uri: str, run_id: str) -> dict[str, dict[str, dict[str, float]]]:
    """{row name: {rule: {mAP, CF1, OF1}}} of one finished run."""
    local = Path(output_uri) / run_id / "config.yaml"
    cfg = config_from_dict(yaml.safe_load(local.read_text()))
    store = RunStore.open(output_uri, run_id, cfg.data)
    truth = corpus_truth(cfg)
    if not truth:
        raise SystemExit(f"run {run_id}: its corpus carries no ground truth to measure against")
    held = {i for i in truth if is_holdout(i, cfg.train.holdout_fraction, cfg.seed)}
    train_truth = {i: v for i, v in truth.items() if i not in held}
    holdout_truth = {i: v for i, v in truth.items() if i in held}
    raw_ids, raw, _ = labeling.read_raw(cfg, store, 0)
    pseudo_ids, pseudo = labeling.read_labels(store, cfg.relabel.rounds)
    clf_ids, clf, clf_holdout = classifier_probabilities(store)
    rows = align_rows(pseudo_ids, clf_ids, np.arange(len(clf_ids)))
    names, fixed = cfg.classes.names, cfg.labels.threshold

    def scored(ids, scores, against, thresholds):
        m = score_rows(ids, scores, against, names, thresholds)
        return {k: round(m[k], 1) for k in ("mAP", "CF1", "OF1")}

    table: dict[str, dict[str, dict[str, float]]] = {}
    for rule in RULES:
        def own(ids, scores, rule=rule):
            return class_thresholds(scores, rule, fixed, align_rows(ids, raw_ids, raw))
        table.setdefault("teacher zero-shot, training split", {})[rule] = scored(
            raw_ids, raw, train_truth, own(raw_ids, raw))
        for source in SOURCES:
            final = label_ops.final_label_scores(source, pseudo, clf[rows], cfg.labels.alpha)
            table.setdefault(f"final labels ({source}), training split", {})[rule] = scored(
                pseudo_ids, final, train_truth, own(pseudo_ids, final))
        table.setdefault("teacher zero-shot, held-out split", {})[rule] = scored(
            raw_ids, raw, holdout_truth, own(raw_ids, raw))
        table.setdefault("classifier, held-out split", {})[rule] = scored(
            clf_ids[clf_holdout], clf[clf_holdout], holdout_truth,
            own(clf_ids[~clf_holdout], clf[~clf_holdout]))
    return table


def markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    head = "| what | " + " | ".join(f"{r} mAP | {r} CF1 | {r} OF1" for r in RULES) + " |"
    lines = [head, "| --- |" + " ---: |" * (3 * len(RULES))]
    for name, by_rule in table.items():
        cells = [f"{by_rule[r][k]:.1f}" for r in RULES for k in ("mAP", "CF1", "OF1")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_table(tables: list[dict]) -> dict:
    return {name: {rule: {k: float(np.mean([t[name][rule][k] for t in tables]))
                          for k in ("mAP", "CF1", "OF1")} for rule in RULES}
            for name in tables[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run ids of finished runs")
    parser.add_argument("--output-uri", default="outputs")
    parser.add_argument("--out", default=None, help="also write the tables as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tables = {run: measure_run(args.output_uri, run) for run in args.runs}
    for run, table in tables.items():
        print(f"\n## {run}\n\n{markdown(table)}")
    if len(tables) > 1:
        print(f"\n## mean over {len(tables)} runs\n\n{markdown(mean_table(list(tables.values())))}")
    if args.out:
        Path(args.out).write_text(json.dumps(tables, indent=1))


if __name__ == "__main__":
    main()
