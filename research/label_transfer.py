"""Fixed-label training: does a better pseudo-label set make a better classifier, once the
training seed's noise is averaged out? Ray-free, so it runs wherever torch does (a GPU box
without Ray included).

Reads a label bundle written by `python -m research.ablation_diagnostics export` (one
folder: each world's 96-px scenes, split and truth; each label set as an array; sets.json
naming them), trains the SynthScenes ablation's student (its pretrained body, lr, head factor,
batch, 6 epochs; no consistency term unless --beta) on every set with every torch seed, and
scores held-out mAP. The student trains through the pipeline's own epoch loop
(`training.fit_epochs`: its shuffle buffer, batches and augmentations). A torch seed fixes
the head's initialisation and the batch order, so the difference between two sets at the same
seed is paired: that difference, averaged over seeds, resolves far smaller label effects than
two single runs can (their spread is the seed's noise).

    python -m research.label_transfer --bundle outputs/ablation/label-sets --torch-seeds 0 1
    python -m research.label_transfer --bundle B --torch-seeds 0-9 --device cuda --workers 4

The student's inputs are rebuilt from the 96-px scenes with the pipeline's resize; their hash
is checked against the pipeline's own train-inputs (recorded at export) and a mismatch (another
torch's resize) is printed, not hidden. On CUDA the student trains in bf16 autocast, as the
pipeline's Ray Train workers do there, and runs are not bit-reproducible.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

from ccd_ray.config import TrainConfig
from ccd_ray.io.inputs_codec import round_trip
from ccd_ray.method.classifier import CAMClassifier, resize_images
from ccd_ray.method.local import predict_pixels
from ccd_ray.method.metrics import mean_average_precision
from ccd_ray.method.thresholds import binarize
from ccd_ray.method.training import fit_epochs

MANIFEST = "sets.json"
EPOCHS, WARMUP_EPOCHS = 6, 2  # the ablation's schedule


def world_file(seed: int) -> str:
    return f"world-seed{seed}.npz"


def inputs_sha256(inputs: torch.Tensor) -> str:
    return hashlib.sha256(inputs.contiguous().numpy().tobytes()).hexdigest()


def student_inputs(scenes: np.ndarray, side: int) -> torch.Tensor:
    """uint8 N x 3 x 96 x 96 scenes resized as the exported classifier resizes its inputs
    (classifier.resize_images; the train-inputs stage's Pillow resize, io.inputs_codec.
    resize_inputs, differs from it by at most 1 in a pixel value), before encoding (see
    Bundle.pixels)."""
    return resize_images(list(torch.from_numpy(scenes)), side)


def student_config(backbone: str | None, side: int, epochs: int = EPOCHS, beta: float = 0.0
                   ) -> TrainConfig:
    """The ablation's student (synth_ablation's train settings): a ResNet-18 with this
    pretrained body at this input side, lr 3e-4 with the head at 10x, batch 16, no weight
    decay, the consistency term at weight beta after the 2 warm-up epochs."""
    return dataclasses.replace(TrainConfig(), backbone="resnet18", backbone_weights=backbone,
                               image_size=side, epochs=epochs, warmup_epochs=WARMUP_EPOCHS,
                               beta=beta, lr=3e-4, head_lr_mult=10.0, weight_decay=0.0,
                               batch_size=16)


def train_student(pixels: np.ndarray, targets: np.ndarray, train_rows: np.ndarray,
                  tc: TrainConfig, num_classes: int, torch_seed: int, device: str = "cpu"
                  ) -> CAMClassifier:
    """A student trained on fixed soft targets for tc.epochs through the pipeline's epoch loop
    (`fit_epochs`, every sample weight 1); pixels: uint8 N x 3 x S x S, targets: N x C, both
    on the CPU (moved batch by batch, as the pipeline does); train_rows: the rows trained on.
    torch_seed fixes the initialisation and (as the loop's seed) the order and augmentations."""
    torch.manual_seed(torch_seed)
    model = CAMClassifier(tc.backbone, num_classes, tc.backbone_weights).to(device)
    optimizer = torch.optim.Adam(model.param_groups(tc.lr, tc.head_lr_mult),
                                 weight_decay=tc.weight_decay)
    rows = {"pixels": np.ascontiguousarray(pixels[train_rows]),
            "targets": np.asarray(targets[train_rows], dtype=np.float32),
            "weights": np.ones(len(train_rows), dtype=np.float32)}
    fit_epochs(model, optimizer, tc, torch_seed, range(tc.epochs), lambda epoch: [rows],
               lambda metrics: None, torch.device(device))
    return model


def held_out_map(model: CAMClassifier, pixels: np.ndarray, holdout_rows: np.ndarray,
                 truth: np.ndarray) -> float:
    return 100 * mean_average_precision(predict_pixels(model, pixels[holdout_rows]),
                                        truth[holdout_rows])


class Bundle:
    """A label bundle folder, loaded lazily: worlds by seed, student inputs by (seed, side)."""

    def __init__(self, folder: str | Path, backbone: str | None = None):
        self.folder = Path(folder)
        manifest = json.loads((self.folder / MANIFEST).read_text())
        self.backbone = backbone or manifest["backbone"]
        self.sets = manifest["sets"]
        # how the runs stored their train-inputs (absent: a bundle of raw uint8 inputs)
        self.inputs = manifest.get("inputs")
        self._worlds: dict[int, dict] = {}
        self._pixels: dict[tuple[int, int], torch.Tensor] = {}

    def world(self, seed: int) -> dict:
        if seed not in self._worlds:
            with np.load(self.folder / world_file(seed)) as data:
                self._worlds[seed] = {key: data[key] for key in data.files}
        return self._worlds[seed]

    def pixels(self, seed: int, side: int) -> torch.Tensor:
        """A world's uint8 student inputs at a side (resized once per process)."""
        if (seed, side) not in self._pixels:
            pixels = student_inputs(self.world(seed)["scenes"], side)
            if self.inputs is not None:  # as the run's train-inputs readers decode them
                pixels = torch.from_numpy(round_trip(pixels.numpy(), self.inputs["encoding"],
                                                     self.inputs["quality"]))
            self._pixels[seed, side] = pixels
        return self._pixels[seed, side]

    def input_check(self, seed: int, side: int, recorded: str) -> str:
        same = inputs_sha256(self.pixels(seed, side)) == recorded
        return "identical" if same else "DIFFERENT (another resize or encoding)"

    def score(self, set_index: int, torch_seed: int, device: str, beta: float) -> float:
        entry = self.sets[set_index]
        world = self.world(entry["world_seed"])
        targets = np.load(self.folder / entry["file"])
        holdout = world["holdout"].astype(bool)
        pixels = self.pixels(entry["world_seed"], entry["side"]).numpy()
        model = train_student(pixels, targets, np.flatnonzero(~holdout),
                              student_config(self.backbone, entry["side"], beta=beta),
                              world["truth"].shape[1], torch_seed, device=device)
        return held_out_map(model, pixels, np.flatnonzero(holdout), world["truth"])


_WORKER_BUNDLE: Bundle | None = None


def _worker_init(folder: str, backbone: str | None, threads: int) -> None:
    global _WORKER_BUNDLE
    torch.set_num_threads(threads)
    _WORKER_BUNDLE = Bundle(folder, backbone)


def timed_score(bundle: Bundle, job: tuple[int, int, str, float]
                ) -> tuple[int, int, float, float]:
    """(set index, torch seed, held-out mAP, seconds) of one training."""
    set_index, torch_seed, device, beta = job
    started = time.time()
    score = bundle.score(set_index, torch_seed, device, beta)
    return set_index, torch_seed, score, time.time() - started


def _worker_job(job: tuple[int, int, str, float]) -> tuple[int, int, float, float]:
    return timed_score(_WORKER_BUNDLE, job)


def parse_seeds(text: list[str]) -> list[int]:
    """'0 1 2' or '0-9' -> seeds."""
    seeds: list[int] = []
    for item in text:
        first, _, last = item.partition("-")
        seeds.extend(range(int(first), int(last or first) + 1))
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--torch-seeds: {text} names no seeds or one twice")
    return seeds


def describe(entry: dict) -> str:
    return f"{entry['name']}, world {entry['world_seed']}, side {entry['side']},"


def run_jobs(args, bundle: Bundle, seeds: list[int], device: str) -> dict[int, dict[int, float]]:
    """Every (set, seed) score; with --workers > 1 in that many spawned processes."""
    jobs = [(i, s, device, args.beta) for i in range(len(bundle.sets)) for s in seeds]
    scores: dict[int, dict[int, float]] = {i: {} for i in range(len(bundle.sets))}
    started = time.time()

    def record(results) -> None:
        for done, (i, s, score, seconds) in enumerate(results, 1):
            scores[i][s] = score
            print(f"[{done}/{len(jobs)}] {describe(bundle.sets[i])} seed {s}: {score:.1f} "
                  f"({seconds:.0f} s)", flush=True)

    if args.workers > 1:
        context = multiprocessing.get_context("spawn")  # CUDA cannot fork
        with context.Pool(args.workers, _worker_init,
                          (str(bundle.folder), args.backbone, args.threads)) as pool:
            record(pool.imap_unordered(_worker_job, jobs))
    else:
        torch.set_num_threads(args.threads)
        record(timed_score(bundle, job) for job in jobs)
    print(f"{len(jobs)} trainings in {time.time() - started:.0f} s on {device}\n")
    return scores


def mean_std(values, signed: bool = False) -> str:
    """'mean +- std' (sample std); one value has no spread to print."""
    values = np.asarray(values, dtype=float)
    mean = f"{values.mean():+.1f}" if signed else f"{values.mean():.1f}"
    return mean + (f" +- {values.std(ddof=1):.1f}" if len(values) > 1 else "")


def mean_sem(values) -> str:
    """Signed 'mean +- standard error of the mean'."""
    values = np.asarray(values, dtype=float)
    sem = f" +- {values.std(ddof=1) / np.sqrt(len(values)):.1f}" if len(values) > 1 else ""
    return f"{values.mean():+.1f}{sem}"


def label_counts(bundle: Bundle, threshold: float) -> None:
    """The sets' labels at the threshold on each world's training split, and which labels each
    set gains and loses against its world's first set at the same side (how many are true)."""
    print(f"Labels at {threshold} on the training split\n\n| world | side | labels | labels "
          f"(precision, recall) | vs first set: gained (share true) | lost (share true) |\n"
          f"|---|---|---|---|---|---|")
    first: dict[tuple[int, int], np.ndarray] = {}
    for entry in bundle.sets:
        world = bundle.world(entry["world_seed"])
        train = ~world["holdout"]
        truth = world["truth"][train].astype(bool)
        on = binarize(np.load(bundle.folder / entry["file"])[train], threshold)
        ref = first.setdefault((entry["world_seed"], entry["side"]), on)
        gained, lost = on & ~ref, ref & ~on

        def share_true(moved: np.ndarray, truth: np.ndarray = truth) -> str:
            return f"{int(moved.sum())} ({truth[moved].mean():.2f})" if moved.any() else "0"

        print(f"| {entry['world_seed']} | {entry['side']} | {entry['name']} | {int(on.sum())} "
              f"({truth[on].mean():.2f}, {on[truth].mean():.2f}) | "
              + ("- | - |" if on is ref else f"{share_true(gained)} | {share_true(lost)} |"))
    print()


def report(bundle: Bundle, scores: dict[int, dict[int, float]], seeds: list[int]) -> dict:
    """Per-world tables, then the sets averaged over worlds. A set's paired difference is
    taken against the first set of its world and side (the export order)."""
    summary: dict[tuple[int, str], dict] = {}
    references: dict[tuple[int, int], int] = {}
    for i, entry in enumerate(bundle.sets):
        references.setdefault((entry["world_seed"], entry["side"]), i)
    for seed in sorted({e["world_seed"] for e in bundle.sets}):
        print(f"World seed {seed} (held-out mAP per torch seed {seeds[0]}..{seeds[-1]}; "
              f"paired difference: mean +- sem over torch seeds)\n")
        print("| side | labels | pseudo mAP, training split | classifier mAP, mean +- std | "
              "vs first set, paired | share of ground truth |\n|---|---|---|---|---|---|")
        for i, entry in enumerate(bundle.sets):
            if entry["world_seed"] != seed:
                continue
            ref = references[seed, entry["side"]]
            truth_index = next((j for j, e in enumerate(bundle.sets)
                                if e["world_seed"] == seed and e["side"] == entry["side"]
                                and e["key"] == "truth"), None)
            values = [scores[i][s] for s in seeds]
            paired = [scores[i][s] - scores[ref][s] for s in seeds]
            share = "-" if truth_index is None else \
                f"{100 * np.mean(values) / np.mean([scores[truth_index][s] for s in seeds]):.0f}%"
            print(f"| {entry['side']} | {entry['name']} | {entry['pseudo_map']:.1f} | "
                  f"{mean_std(values)} | {mean_sem(paired) if i != ref else '-'} | {share} |")
            row = summary.setdefault((entry["side"], entry["name"]),
                                     {"means": [], "paired": [], "pseudo": [], "first": i == ref})
            row["means"].append(float(np.mean(values)))
            row["paired"].append(float(np.mean(paired)))
            row["pseudo"].append(entry["pseudo_map"])
        print()
    worlds = len({e["world_seed"] for e in bundle.sets})
    print(f"Averaged over the worlds ({worlds}; mean +- std across worlds of each world's mean "
          f"over {len(seeds)} torch seeds)\n")
    print("| side | labels | pseudo mAP | classifier mAP | vs first set, paired |\n"
          "|---|---|---|---|---|")
    for (side, name), row in summary.items():
        print(f"| {side} | {name} | {mean_std(row['pseudo'])} | {mean_std(row['means'])} | "
              f"{'-' if row['first'] else mean_std(row['paired'], signed=True)} |")
    return {"torch_seeds": seeds, "sets": bundle.sets,
            "scores": {str(i): {str(s): v for s, v in by_seed.items()}
                       for i, by_seed in scores.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True,
                        help="the folder `python -m research.ablation_diagnostics export` wrote")
    parser.add_argument("--torch-seeds", nargs="+", default=["0", "1"],
                        help="training seeds per label set: '0 1 2' or '0-9' (0 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes training at once (on one GPU too)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--backbone", help="the student's pretrained body (a state-dict file); "
                                           "default: the path recorded at export")
    parser.add_argument("--beta", type=float, default=0.0,
                        help="consistency weight after the 2 warm-up epochs, as train.beta (0)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="the label threshold of the label counts (labels.threshold, 0.5)")
    parser.add_argument("--counts-only", action="store_true",
                        help="print the label counts and stop (no training)")
    parser.add_argument("--json", help="also write every score here")
    args = parser.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    bundle = Bundle(args.bundle, args.backbone)
    if not Path(bundle.backbone).is_file():
        raise SystemExit(f"the student's backbone {bundle.backbone} is not a file: pass --backbone")
    seeds = parse_seeds(args.torch_seeds)
    for seed, side in sorted({(e["world_seed"], e["side"]) for e in bundle.sets}):
        recorded = next(e["inputs_sha256"] for e in bundle.sets
                        if e["world_seed"] == seed and e["side"] == side)
        print(f"world {seed}, side {side}: inputs {bundle.input_check(seed, side, recorded)} "
              f"to the pipeline's train-inputs")
    label_counts(bundle, args.threshold)
    if args.counts_only:
        return
    results = report(bundle, run_jobs(args, bundle, seeds, device), seeds)
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "device": device, "beta": args.beta,
                                               "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
