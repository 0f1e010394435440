"""The SynthScenes ablation: CCD's components measured on the synthetic world, like the
paper's ablation table, mean +- std over seeds.

    python -m research.synth_ablation                      # 3 seeds, every setting
    python -m research.synth_ablation --seeds 0 --settings global_only full_ccd
    python -m research.synth_ablation --set relabel.rounds=2 --tag two-rounds  # a variant
    python -m research.synth_ablation --set initial.random_crops=10 --tag paper-phase1 \
        --paired-baseline plain        # a variant's gains over the plain table's global-only
    python -m research.synth_ablation --set train.image_size=192 --set initial.random_crops=10 \
        --tag crops-192 --baseline-tag s192 --baseline-set train.image_size=192
                                       # ... or over another variant's global-only

Every setting is a real run of `pipeline.run_ccd` (the code path of jobs/run_ccd.py) on a
local Ray instance, on a synthetic corpus made from the seed, with the pretrained synthetic
teacher (trained once and cached; see ccd_ray/demo/pretrain_teacher.py) and a student whose ResNet
body is pretrained on the world's non-target classes, as the paper's starts from ImageNet
(ccd_ray/demo/pretrain_backbone.py; --from-scratch trains it from random weights). Run ids are
`<setting>-seed<seed>` under --out, so rerunning the command resumes: finished runs are read
back, not redone (--fresh starts over).

A seed's settings share what no ablated knob touches: its first run computes round-0/raw
(the teacher's global-view scores) and train-inputs (decoded, resized images), the others
copy those committed stages when their inputs are identical (--no-reuse recomputes them), so
the wall-time column of the later settings excludes those two stages.

Columns: pseudo-label mAP / CF1 / OF1 on the training split (the last round's labels, at
labels.threshold), classifier mAP on the held-out split, the paired gain (per seed, the
setting's classifier mAP minus global-only's on the same world, then mean +- std over seeds),
and the run's wall time. Every std is over seeds with ddof=0. The
zero-shot row is the teacher's global-view scores of the `global_only` runs (the teacher used
as the classifier on the held-out split); the upper bound trains the same classifier on the
same schedule with the corpus's ground truth."""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ccd_ray.config import DEFAULT_CONFIG, load_config
from ccd_ray.demo.embedded import (
    STUDENT_BACKBONE_SPEC,
    TEACHER_SPEC,
    default_cache_dir,
    make_corpus,
)
from ccd_ray.demo.pretrain_backbone import pretrained_backbone
from ccd_ray.demo.pretrain_teacher import pretrained_teacher
from ccd_ray.demo.scenes import CLASS_NAMES
from ccd_ray.io.storage import RunStore, read_json
from ccd_ray.stages.evaluate import FINAL_STAGE
from ccd_ray.stages.pipeline import check_run_config, run_ccd
from ccd_ray.stages.runtime import init_ray

# The world and schedule of every setting: global-view initial labels (no random crops, as
# the paper's baseline and the authors' code), one relabel round after a 2-epoch warm-up,
# the paper's CAM-guided views and clamped debias (the ablation measures the paper's CCD;
# the product's defaults differ in both since 2026-12-08).
BASE = ["initial.random_crops=0", "relabel.rounds=1", "relabel.views_per_box=10",
        "relabel.view_source=cam", "labels.debias=divide",
        "labels.gamma=1.0", "train.beta=1.0", "train.epochs=6", "train.warmup_epochs=2",
        "train.image_size=96", "train.holdout_fraction=0.3", "train.lr=0.0003",
        "compute.cpus_per_worker=2"]
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "global_only": ("global-only labels -> classifier",
                    ["relabel.rounds=0", "labels.gamma=0", "train.beta=0"]),
    "cam_relabel": ("+ CAM-guided relabel", ["labels.gamma=0", "train.beta=0"]),
    "debias": ("+ debias", ["train.beta=0"]),
    "full_ccd": ("+ consistency (full CCD)", []),
    "random_views": ("full CCD, random crops instead of CAM-guided",
                     ["relabel.view_source=random"]),
    "mean_pooling": ("full CCD, mean instead of max pooling", ["labels.aggregation=mean"]),
    "one_view": ("full CCD, 1 local view per box (not 10)", ["relabel.views_per_box=1"]),
    "supervised": ("supervised upper bound (ground truth, same schedule)",
                   ["train.targets=ground_truth", "relabel.rounds=0"]),
}


# Stages that no ablated knob touches, with the config they depend on: a seed's later
# settings copy them from its first run instead of recomputing the same bytes.
SHARED_STAGES = {"round-0/raw": lambda c: (c.teacher, c.classes, c.initial, c.seed, c.data,
                                           c.labels.aggregation),
                 "train-inputs": lambda c: (c.data, c.seed, c.train.image_size,
                                            c.train.holdout_fraction, c.train.inputs_encoding,
                                            c.train.inputs_quality)}


def corpus_path(out: Path, images: int, seed: int) -> Path:
    """Where a seed's corpus of that many scenes is made (once; every setting reads it)."""
    return out / f"corpus-{images}-seed{seed}"


def setting_config(name: str, seed: int, corpus: Path, teacher: str, out: Path,
                   backbone_weights: str | None = None, extra: list[str] = (),
                   base: list[str] = (), tag: str = ""):
    """backbone_weights: the student's pretrained body (the world's ImageNet), as in the paper;
    None trains it from scratch. base: overrides of the shared schedule, under each setting's
    own (a variant of the whole table, its run ids marked with tag). extra: overrides over
    everything (for diagnostics)."""
    backbone = [f"train.backbone_weights={backbone_weights}"] if backbone_weights else []
    run_id = f"{name}-{tag}-seed{seed}" if tag else f"{name}-seed{seed}"
    return load_config(DEFAULT_CONFIG, [*BASE, *backbone, *base, *SETTINGS[name][1],
                                        f"seed={seed}", f"run_id={run_id}",
                                        f"data.output_uri={out}", f"data.corpus_uri={corpus}",
                                        f"teacher.model={teacher}",
                                        f"classes.names={list(CLASS_NAMES)}", *extra])


def reuse_shared_stages(cfg, donor_cfg, out: Path) -> list[str]:
    """Copy the donor run's committed shared stages whose inputs are the same as cfg's."""
    copied = []
    for stage, depends_on in SHARED_STAGES.items():
        source, target = out / donor_cfg.run_id / stage, out / cfg.run_id / stage
        if (depends_on(cfg) == depends_on(donor_cfg) and (source / "_COMMITTED.json").exists()
                and not (target / "_COMMITTED.json").exists()):
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
            copied.append(stage)
    return copied


def run_setting(cfg) -> dict:
    """Run (or resume) one setting on one seed; return its metrics and wall time."""
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    timing = store.path("ablation_seconds.json")
    if store.committed(FINAL_STAGE) is None:
        started = time.time()
        run_ccd(cfg)  # checks the run's stored config itself
        Path(timing).write_text(json.dumps({"seconds": time.time() - started}))
    else:
        check_run_config(cfg, store)  # a finished run is read back only if it ran this config
    metrics = read_json(store.fs, f"{store.committed(FINAL_STAGE)}/metrics.json")
    seconds = json.loads(Path(timing).read_text())["seconds"] if Path(timing).exists() else None
    return {"metrics": metrics, "seconds": seconds}


def initial_views(cfg) -> str:
    """The views the initial labels take the teacher's max over."""
    crops = cfg.initial.random_crops
    return "global view" + (f" + {crops} random crops" if crops else "")


def rows_of(results: dict[str, dict[int, dict]], baseline: dict[int, dict] | None = None,
            initial: str = "global view") -> list[tuple[str, dict[str, list[float]]]]:
    """Table rows: (label, column -> values over seeds). baseline: the runs, by seed, that the
    paired gain subtracts; default the table's own global_only. initial: initial_views of the
    runs, which the zero-shot and global-only rows are."""
    def column(runs: dict[int, dict], pick) -> list[float]:
        return [v for v in (pick(r) for r in runs.values()) if v is not None]

    rows = []
    if "global_only" in results:
        runs = results["global_only"]
        rows.append((f"teacher zero-shot ({initial})", {
            "pseudo mAP": column(runs, lambda r: r["metrics"]["teacher_before_debias"]["mAP"]),
            "pseudo CF1": column(runs, lambda r: r["metrics"]["teacher_before_debias"]["CF1"]),
            "pseudo OF1": column(runs, lambda r: r["metrics"]["teacher_before_debias"]["OF1"]),
            "classifier mAP": column(runs, lambda r: r["metrics"]["teacher_holdout"]["mAP"])}))
    if baseline is None:
        baseline = results.get("global_only", {})
    for name, (label, _) in SETTINGS.items():
        if name not in results:
            continue
        runs = results[name]
        pseudo = name != "supervised"
        if name == "global_only" and initial != "global view":
            label = f"initial labels ({initial}) -> classifier"
        rows.append((label, {
            "pseudo mAP": column(runs, lambda r, pseudo=pseudo: r["metrics"]["rounds"][-1]["mAP"]
                                 if pseudo else None),
            "pseudo CF1": column(runs, lambda r, pseudo=pseudo: r["metrics"]["rounds"][-1]["CF1"]
                                 if pseudo else None),
            "pseudo OF1": column(runs, lambda r, pseudo=pseudo: r["metrics"]["rounds"][-1]["OF1"]
                                 if pseudo else None),
            "classifier mAP": column(runs, lambda r: r["metrics"]["classifier_holdout"]["mAP"]),
            # Seeds differ in their whole world (corpus, held-out split), which moves every
            # row together; the per-seed difference to global-only removes that shared part.
            "paired gain": [runs[s]["metrics"]["classifier_holdout"]["mAP"]
                            - baseline[s]["metrics"]["classifier_holdout"]["mAP"]
                            for s in runs if s in baseline and runs is not baseline],  # not itself
            "wall s": column(runs, lambda r: r["seconds"])}))
    return rows


def markdown_table(rows, seeds: list[int]) -> str:
    columns = ["pseudo mAP", "pseudo CF1", "pseudo OF1", "classifier mAP", "paired gain",
               "wall s"]
    lines = [f"| setting ({len(seeds)} seeds: mean +- std) | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for label, values in rows:
        cells = []
        for c in columns:
            v = values.get(c, [])
            if not v:
                cells.append("-")
            elif c == "wall s":
                cells.append(f"{np.mean(v):.0f}")
            elif c == "paired gain":
                cells.append(f"{np.mean(v):+.1f} +- {np.std(v):.1f}")
            else:
                cells.append(f"{np.mean(v):.1f} +- {np.std(v):.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--images", type=int, default=300, help="scenes per seed's corpus")
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--from-scratch", action="store_true",
                        help="train the student's ResNet from random weights (no pretraining)")
    parser.add_argument("--set", dest="base", action="append", default=[], metavar="KEY=VALUE",
                        help="change the shared schedule of every setting (under the setting's "
                             "own overrides); needs --tag")
    parser.add_argument("--tag", default="", help="marks the run ids of a --set variant")
    parser.add_argument("--paired-baseline", choices=("variant", "plain"), default="variant",
                        help="the global-only runs a --set variant's paired gain subtracts: its "
                             "own, or the plain table's (run or read back from --out)")
    parser.add_argument("--baseline-tag", default="",
                        help="pair a variant instead with the global-only runs of another "
                             "variant (its --tag; run or read back from --out)")
    parser.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE",
                        help="the --set values of the --baseline-tag variant")
    parser.add_argument("--no-reuse", action="store_true",
                        help="recompute round-0/raw and train-inputs in every run")
    args = parser.parse_args()
    if args.base and not args.tag:
        parser.error("--set changes the runs: give them a --tag so they do not read as the "
                     "plain table's")
    if args.paired_baseline == "plain" and not args.tag:
        parser.error("--paired-baseline plain compares a --set/--tag variant with the plain "
                     "table")
    if args.baseline_set and not args.baseline_tag:
        parser.error("--baseline-set configures the runs of a --baseline-tag variant")
    if args.baseline_tag and (args.paired_baseline == "plain" or not args.tag):
        parser.error("--baseline-tag pairs a --set/--tag variant with another variant, not "
                     "with the plain table")
    warnings.filterwarnings("ignore", message="No pretrained weights")
    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = pretrained_teacher(default_cache_dir(), TEACHER_SPEC)
    backbone = (None if args.from_scratch
                else pretrained_backbone(default_cache_dir(), STUDENT_BACKBONE_SPEC))
    init_ray()
    results: dict[str, dict[int, dict]] = {}
    started = time.time()
    for seed in args.seeds:
        corpus = corpus_path(out, args.images, seed)
        if not corpus.is_dir():
            make_corpus(corpus, images=args.images, seed=1000 + seed)
        donor = None
        for name in args.settings:
            cfg = setting_config(name, seed, corpus, teacher, out, backbone, base=args.base,
                                 tag=args.tag)
            if donor is not None and not args.no_reuse:
                copied = reuse_shared_stages(cfg, donor, out)
                if copied:
                    print(f"[ablation] {cfg.run_id}: reusing {copied} of {donor.run_id}")
            donor = donor or cfg
            result = run_setting(cfg)
            results.setdefault(name, {})[seed] = result
            holdout = result["metrics"]["classifier_holdout"]["mAP"]
            print(f"[ablation] {name} seed {seed}: classifier mAP {holdout:.1f} "
                  f"({result['seconds'] or 0:.0f} s; {time.time() - started:.0f} s so far)",
                  flush=True)
    baseline, title = None, ""
    # the plain table is the baseline variant with no --set values and no tag
    other_baseline = args.paired_baseline == "plain" or bool(args.baseline_tag)
    if args.tag:
        against = "the variant's own"
        if args.paired_baseline == "plain":
            against = "the plain table's"
        elif args.baseline_tag:
            sets = " ".join(f"--set {b}" for b in args.baseline_set)
            against = f"variant `{args.baseline_tag}`'s ({sets})"
        title = (f"Variant `{args.tag}`: {' '.join(f'--set {b}' for b in args.base)} under every "
                 f"setting's own overrides; paired gain against {against} global-only runs.\n\n")
    if args.tag and other_baseline:
        baseline = {seed: run_setting(setting_config("global_only", seed,
                                                     corpus_path(out, args.images, seed),
                                                     teacher, out, backbone,
                                                     base=args.baseline_set,
                                                     tag=args.baseline_tag))
                    for seed in args.seeds}
    initial = initial_views(setting_config("global_only", args.seeds[0],
                                           corpus_path(out, args.images, args.seeds[0]),
                                           teacher, out, base=args.base))
    table = title + markdown_table(rows_of(results, baseline, initial), args.seeds)
    stem = f"ablation-{args.tag}" if args.tag else "ablation"
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps(
        {name: {str(s): r for s, r in runs.items()} for name, runs in results.items()}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
