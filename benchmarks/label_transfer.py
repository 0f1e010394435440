"""Does a better pseudo-label set make a better classifier? Reads a finished SynthScenes
ablation (benchmarks/synth_ablation.py --out OUT) and, in one process without Ray, trains the
ablation's student (same pretrained backbone, lr, batch, 6 epochs, no consistency term) on
one fixed label set at a time, several torch seeds each, scoring held-out mAP. It separates
the labels' effect from the pipeline's schedule (2 warm-up epochs on round 0, then round 1)
and measures how much the classifier moves with the training seed alone.

    python benchmarks/label_transfer.py --out outputs/ablation --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccd_ray.classifier import CAMClassifier, normalise  # noqa: E402
from ccd_ray.config import load_config  # noqa: E402
from ccd_ray.embedded import DEFAULT_CONFIG, STUDENT_BACKBONE_SPEC, default_cache_dir  # noqa: E402
from ccd_ray.evaluate import corpus_truth, truth_matrix  # noqa: E402
from ccd_ray.labeling import read_labels  # noqa: E402
from ccd_ray.metrics import mean_average_precision  # noqa: E402
from ccd_ray.storage import RunStore  # noqa: E402
from ccd_ray.synth.backbone import pretrained_backbone  # noqa: E402
from ccd_ray.synth.scenes import CLASS_NAMES  # noqa: E402
from ccd_ray.training import batch_indices, train_epoch  # noqa: E402

LABEL_SETS = {"global-only labels (round 0)": ("global_only", 0),
              "+ CAM-guided relabel (round 1)": ("cam_relabel", 1),
              "full CCD (round 1)": ("full_ccd", 1)}


def run_store(out: Path, setting: str, seed: int, images: int):
    """The config and store of one ablation run (only what reading it back needs)."""
    cfg = load_config(DEFAULT_CONFIG, [f"run_id={setting}-seed{seed}", f"data.output_uri={out}",
                                       f"data.corpus_uri={out}/corpus-{images}-seed{seed}",
                                       f"classes.names={list(CLASS_NAMES)}"])
    return cfg, RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)


def train_and_score(images, targets, train_rows, holdout_rows, truth, backbone: str,
                    torch_seed: int, epochs: int = 6) -> float:
    torch.manual_seed(torch_seed)
    model = CAMClassifier("resnet18", len(CLASS_NAMES), backbone)
    optimizer = torch.optim.Adam(model.param_groups(3e-4, 10.0))
    generator = torch.Generator().manual_seed(torch_seed)
    for epoch in range(epochs):
        order = train_rows[torch.randperm(len(train_rows), generator=generator)]
        batches = [(normalise(images[i]), targets[i], None) for i in batch_indices(order, 16)]
        train_epoch(model, optimizer, batches, epoch, 0.0, 2, generator)
    model.eval()
    with torch.no_grad():
        probs = torch.sigmoid(model(normalise(images[holdout_rows]))[0]).numpy()
    return 100 * mean_average_precision(probs, truth[holdout_rows.numpy()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the ablation's --out folder")
    parser.add_argument("--seed", type=int, default=0, help="the ablation seed to read")
    parser.add_argument("--images", type=int, default=300, help="the ablation's --images")
    parser.add_argument("--torch-seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    out = Path(args.out).resolve()
    backbone = pretrained_backbone(default_cache_dir(), STUDENT_BACKBONE_SPEC)
    cfg, donor = run_store(out, "global_only", args.seed, args.images)
    rows = pads.dataset(donor.committed("train-inputs"), filesystem=donor.fs).to_table().to_pylist()
    ids = [r["image_id"] for r in rows]
    side = int(round((len(rows[0]["pixels"]) / 3) ** 0.5))
    images = torch.stack([torch.frombuffer(bytearray(r["pixels"]), dtype=torch.uint8)
                          .reshape(3, side, side) for r in rows])
    holdout = torch.tensor([r["holdout"] for r in rows])
    train_rows, holdout_rows = torch.nonzero(~holdout).flatten(), torch.nonzero(holdout).flatten()
    truth = truth_matrix(corpus_truth(cfg), ids, CLASS_NAMES).astype(np.float32)
    label_sets = {}
    for name, (setting, round_index) in LABEL_SETS.items():
        labels = read_labels(run_store(out, setting, args.seed, args.images)[1], round_index)
        label_sets[name] = np.stack([labels[i] for i in ids]).astype(np.float32)
    label_sets["ground truth"] = truth
    print(f"| labels (seed {args.seed}) | pseudo mAP, training split | classifier held-out mAP "
          f"per torch seed {args.torch_seeds} | mean |\n|---|---|---|---|")
    for name, targets in label_sets.items():
        pseudo = 100 * mean_average_precision(targets[train_rows.numpy()],
                                              truth[train_rows.numpy()])
        scores = [train_and_score(images, torch.from_numpy(targets), train_rows, holdout_rows,
                                  truth, backbone, s) for s in args.torch_seeds]
        print(f"| {name} | {pseudo:.1f} | {', '.join(f'{s:.1f}' for s in scores)} | "
              f"{np.mean(scores):.1f} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same numbers on any machine
    main()
