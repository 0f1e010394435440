"""Label quality on synthetic worlds held out from tuning: CCD's final labels and distilled
classifier against the teacher's zero-shot labels and a classifier trained on the ground truth.

    python benchmarks/quality.py                                # every world, 2 seeds each
    python benchmarks/quality.py --worlds base crowded --seeds 0   # a subset
    python benchmarks/quality.py --set labels.debias=divide --tag divide   # a variant

A world is a corpus recipe (scenes, objects per scene, object size, background clutter, class
frequencies) and a teacher (WORLDS). Worlds are either `tuning` (the product's defaults may be
chosen on them) or `test` (reported, never tuned on). For each world and seed, a corpus is drawn
and two runs of the CCD round loop (`ccd_ray.method.rounds.run_rounds`, the loop the Ray job
runs) go in this process through `method.local.LocalExecutor`, with the embedded default's
config, the world's keys and the --set values:
  ccd    the method as configured;
  bound  the same schedule with `train.targets=ground_truth` (a classifier trained on the
         corpus's own labels; it reuses the ccd run's teacher scores, which it never trains on).
Both are scored by `stages.evaluate.evaluate_run`, the job's own evaluation (the Ray job and
this executor give the same labels: tests/test_reference.py). A world is valid for testing
distillation only when the bound's held-out mAP beats the teacher's held-out zero-shot mAP by
at least VALID_GAP: the table says so per world.

Per seed, paired on the same corpus: the final labels minus the teacher's zero-shot labels
(training split, mAP and CF1), round-0 pseudo-labels minus the raw scores they come from, the
classifier minus the teacher on the held-out split, and the classifier as a percentage of the
bound. Rows are mean +- std over seeds (ddof=0). Prints a markdown table with the command and
the date; writes it, the per-seed figures and each run's score matrices under --out."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ccd_ray.config import DEFAULT_CONFIG, CCDConfig, load_config
from ccd_ray.demo.embedded import (
    IMAGE_SIDE,
    STUDENT_BACKBONE_SPEC,
    TEACHER_SPEC,
    default_cache_dir,
    embedded_defaults,
)
from ccd_ray.demo.pretrain_backbone import pretrained_backbone
from ccd_ray.demo.pretrain_teacher import SIGMOID_SPEC, pretrained_teacher
from ccd_ray.demo.scenes import CLASS_NAMES
from ccd_ray.io.decode import decode_image
from ccd_ray.io.packing import synthetic_records
from ccd_ray.method.local import (
    CachedScores,
    LocalExecutor,
    TeacherScores,
    TrainingInputs,
    predict_pixels,
)
from ccd_ray.method.metrics import truth_matrix
from ccd_ray.method.rounds import RoundsResult, run_rounds
from ccd_ray.method.teacher import Teacher
from ccd_ray.stages.evaluate import (
    ClassifierScores,
    ZeroShot,
    evaluate_run,
    final_labels,
)

VALID_GAP = 5.0  # bound's held-out mAP minus the teacher's, for a world to test distillation
TEACHERS = {"clip": TEACHER_SPEC,                              # the embedded default's
            "sigmoid": SIGMOID_SPEC,                           # SigLIP-style loss and scoring
            "clip-weak": replace(TEACHER_SPEC, steps=250)}     # the same, a third of the steps


@dataclass(frozen=True)
class World:
    role: str                         # "tuning" or "test"
    note: str
    images: int = 800
    max_objects: int = 4              # objects per scene: 1..max_objects
    scale: tuple[float, float] = (0.25, 0.45)  # object diameter / scene side
    clutter: tuple[int, int] = (4, 10)  # background strokes: [low, high)
    zipf: float = 0.0                 # class frequency ~ 1 / rank^zipf (0: uniform)
    teacher: str = "clip"
    keys: tuple[str, ...] = ()        # the world's own config keys (sizes, not method choices)

    def class_probs(self, seed: int) -> np.ndarray | None:
        if self.zipf == 0:
            return None
        order = np.random.default_rng(seed + 7).permutation(len(CLASS_NAMES))
        weights = 1.0 / (np.arange(len(CLASS_NAMES)) + 1.0) ** self.zipf
        return (weights / weights.sum())[np.argsort(order)]


WORLDS = {
    "base": World("tuning", "the embedded default's scenes, more of them"),
    "crowded": World("tuning", "1-6 smaller objects", max_objects=6, scale=(0.18, 0.35)),
    "long-tail": World("test", "Zipf 1.0 class frequencies, heavy clutter", zipf=1.0,
                       clutter=(10, 24)),
    "siglip": World("test", "SigLIP-style teacher, 1-3 larger objects", teacher="sigmoid",
                    max_objects=3, scale=(0.3, 0.5)),
    "weak-teacher": World("test", "teacher pretrained a third as long", teacher="clip-weak"),
}
# the schedule every world trains on: long enough for the bound to beat the teacher
SCHEDULE = ("train.epochs=8", "train.warmup_epochs=3")
# config keys the benchmark sets itself
OWN_KEYS = ("seed", "train.targets", "teacher.model", "data.corpus_uri")


def world_corpus(world: World, seed: int
                 ) -> tuple[list[str], list[torch.Tensor], dict[str, list[str]]]:
    """(sorted ids, decoded images, truth) of the world's corpus for a seed, decoded from PNG
    as a run decodes it."""
    records = synthetic_records(world.images, 1000 + seed, IMAGE_SIDE, world.max_objects,
                                world.scale, class_probs=world.class_probs(seed),
                                clutter=world.clutter)
    rows = sorted((image_id, png, labels) for image_id, png, labels in records)
    images = [torch.from_numpy(decode_image(png, max_pixels=IMAGE_SIDE ** 2).image)
              for _, png, _ in rows]
    return [r[0] for r in rows], images, {r[0]: list(r[2]) for r in rows}


def world_config(world: World, seed: int, sets: list[str], bound: bool) -> CCDConfig:
    teacher = pretrained_teacher(default_cache_dir(), TEACHERS[world.teacher])
    return load_config(DEFAULT_CONFIG, [
        *SCHEDULE, *world.keys, *sets, f"seed={seed}", f"teacher.model={teacher}",
        f"train.targets={'ground_truth' if bound else 'pseudo'}"],
        base=embedded_defaults("outputs"))


def evaluated(cfg: CCDConfig, executor: LocalExecutor, result: RoundsResult,
              truth: dict[str, list[str]], zero_shot: ZeroShot) -> tuple[dict, np.ndarray]:
    """The run's metrics.json, as the job's final stage computes it, and the classifier's
    probabilities of every image."""
    inputs = executor.inputs
    classifier = ClassifierScores(inputs.ids, predict_pixels(result.trained.model, inputs.pixels),
                                  inputs.holdout)
    final = final_labels(cfg, result.ids, result.final_labels, classifier, zero_shot, truth)
    return evaluate_run(cfg, lambda r: (result.ids, result.labels[r]), truth, classifier, final,
                        zero_shot), classifier.probs


def run_world_seed(world: World, seed: int, sets: list[str], scores_file: Path
                   ) -> dict[str, dict]:
    """Both runs of one world and seed: their metrics. Their score matrices go to scores_file
    (NumPy .npz: ids, truth, holdout, each round's raw scores and labels, both classifiers'
    probabilities), for research on the final stage without rerunning."""
    ids, images, truth = world_corpus(world, seed)
    cfg = world_config(world, seed, sets, bound=False)
    teacher = Teacher.from_config(cfg.teacher, cfg.classes)
    inputs = TrainingInputs.from_images(ids, images, cfg)
    ccd = LocalExecutor(cfg, ids, TeacherScores(images, ids, lambda: teacher), inputs)
    result = run_rounds(cfg, ccd)
    zero_shot = ZeroShot(result.ids, result.raw[0])
    metrics, probs = {}, {}
    metrics["ccd"], probs["ccd"] = evaluated(cfg, ccd, result, truth, zero_shot)
    bound_cfg = world_config(world, seed, sets, bound=True)
    truth_rows = truth_matrix(truth, ids, bound_cfg.classes.names)
    bound = LocalExecutor(bound_cfg, ids, CachedScores(result.raw), inputs, truth=truth_rows)
    metrics["bound"], probs["bound"] = evaluated(bound_cfg, bound, run_rounds(bound_cfg, bound),
                                                 truth, zero_shot)
    np.savez_compressed(scores_file, ids=np.asarray(ids), truth=truth_rows,
                        holdout=inputs.holdout, classifier=probs["ccd"], bound=probs["bound"],
                        **{f"raw{r}": raw for r, raw in enumerate(result.raw)},
                        **{f"labels{r}": labels for r, labels in enumerate(result.labels)})
    return metrics


def seed_figures(ccd: dict, bound: dict) -> dict[str, float]:
    """One seed's paired figures from its two runs' metrics."""
    def get(metrics: dict, key: str, metric: str = "mAP") -> float:
        return float(metrics[key][metric])

    def round0(metric: str) -> float:
        return float(ccd["rounds"][0][metric])

    bound_map = get(bound, "classifier_holdout")
    return {
        "labels_gain_mAP": get(ccd, "final_labels") - get(ccd, "teacher_before_debias"),
        "labels_gain_CF1": (get(ccd, "final_labels", "CF1")
                            - get(ccd, "teacher_before_debias", "CF1")),
        "round0_minus_raw_mAP": round0("mAP") - get(ccd, "teacher_before_debias"),
        "classifier_gain_mAP": get(ccd, "classifier_holdout") - get(ccd, "teacher_holdout"),
        "classifier_of_bound_pct": 100.0 * get(ccd, "classifier_holdout") / bound_map,
        "bound_gain_mAP": bound_map - get(ccd, "teacher_holdout"),
        "teacher_mAP": get(ccd, "teacher_before_debias"),
        "final_mAP": get(ccd, "final_labels"),
        "teacher_holdout_mAP": get(ccd, "teacher_holdout"),
        "classifier_holdout_mAP": get(ccd, "classifier_holdout"),
        "bound_holdout_mAP": bound_map,
    }


# (figure, column head, target on the mean or None, signed)
COLUMNS = [("labels_gain_mAP", "final - zero-shot mAP", 3.0, True),
           ("labels_gain_CF1", "final - zero-shot CF1", 3.0, True),
           ("round0_minus_raw_mAP", "round 0 - raw mAP", 0.0, True),
           ("classifier_gain_mAP", "classifier - teacher mAP (held-out)", 0.0, True),
           ("classifier_of_bound_pct", "classifier / bound (%)", 90.0, False),
           ("bound_gain_mAP", "bound - teacher mAP (held-out)", VALID_GAP, True)]


def summary(per_seed: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each figure's mean and std (ddof=0) over seeds, and its values in seed order."""
    return {key: {"mean": float(np.mean([f[key] for f in per_seed])),
                  "std": float(np.std([f[key] for f in per_seed])),
                  "values": [f[key] for f in per_seed]} for key in per_seed[0]}


def markdown(results: dict[str, dict], header: str) -> str:
    """One row per world (tuning worlds first), then each role's mean over its worlds; a
    figure below its target is marked with '(miss)'."""
    def cell(stats: dict[str, float], target: float | None, signed: bool) -> str:
        sign = "+" if signed else ""
        text = f"{stats['mean']:{sign}.1f} +- {stats['std']:.1f}"
        return text + (" (miss)" if target is not None and stats["mean"] < target else "")

    heads = " | ".join(h for _, h, _, _ in COLUMNS)
    lines = [header, "", f"| world | role | teacher zero-shot mAP | final mAP | {heads} |",
             "|---|---|---:|---:|" + "---:|" * len(COLUMNS)]
    for role in ("tuning", "test"):
        names = [n for n, r in results.items() if r["role"] == role]
        for name in names:
            stats = results[name]["summary"]
            cells = " | ".join(cell(stats[k], t, s) for k, _, t, s in COLUMNS)
            lines.append(f"| {name} | {role} | {stats['teacher_mAP']['mean']:.1f} "
                         f"| {stats['final_mAP']['mean']:.1f} | {cells} |")
        if len(names) > 1:
            pooled = summary([f for n in names for f in results[n]["per_seed"]])
            cells = " | ".join(cell(pooled[k], t, s) for k, _, t, s in COLUMNS)
            lines.append(f"| **all {role} worlds** | {role} | {pooled['teacher_mAP']['mean']:.1f} "
                         f"| {pooled['final_mAP']['mean']:.1f} | {cells} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every run (repeatable; needs --tag)")
    parser.add_argument("--tag", default="default", help="names the output files")
    parser.add_argument("--out", default="outputs/quality")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.set and args.tag == "default":
        parser.error("--set changes the runs: give them a --tag")
    owned = [s for s in args.set if s.split("=", 1)[0].strip() in OWN_KEYS]
    if owned:
        parser.error(f"--set {owned[0]}: the benchmark sets {', '.join(OWN_KEYS)} itself")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: a seed is given twice")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pretrained_backbone(default_cache_dir(), STUDENT_BACKBONE_SPEC)
    started = time.time()
    results = {}
    for name in args.worlds:
        world = WORLDS[name]
        per_seed = []
        for seed in args.seeds:
            t0 = time.time()
            metrics = run_world_seed(world, seed, args.set,
                                     out / f"scores-{args.tag}-{name}-s{seed}.npz")
            per_seed.append(seed_figures(metrics["ccd"], metrics["bound"]))
            print(f"[quality] {name} seed {seed}: {time.time() - t0:.0f} s "
                  + ", ".join(f"{k} {v:.1f}" for k, v in per_seed[-1].items()), flush=True)
        results[name] = {"role": world.role, "world": asdict(world), "seeds": args.seeds,
                         "per_seed": per_seed, "summary": summary(per_seed)}
    command = shlex.join(["python", *sys.argv]) if argv is None else "main(...)"
    header = (f"`{command}`, {time.strftime('%Y-%m-%d', time.gmtime())}, "
              f"{time.time() - started:.0f} s on {os.cpu_count()} CPUs; seeds "
              f"{', '.join(map(str, args.seeds))}; --set {args.set or 'none'}.")
    table = markdown(results, header)
    (out / f"quality-{args.tag}.md").write_text(table + "\n")
    (out / f"quality-{args.tag}.json").write_text(json.dumps(
        {"command": command, "sets": args.set, "results": results}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
