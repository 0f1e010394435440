"""Why the SynthScenes ablation comes out as it does: probes of a finished ablation
(`python -m research.synth_ablation --out OUT`), each in one process without Ray.

    python -m research.ablation_diagnostics transfer --out outputs/ablation --seed 0
    python -m research.ablation_diagnostics transfer --out outputs/ablation --sets oracle truth
    python -m research.ablation_diagnostics export --out outputs/ablation --seed 0 --bundle B
    python -m research.ablation_diagnostics views --out outputs/ablation --seed 0

transfer: does a better pseudo-label set make a better classifier? Trains the ablation's
  student (research/label_transfer.py: same pretrained backbone, lr, batch, 6 epochs, no
  consistency term) on one fixed label set at a time, several torch seeds each, and scores
  held-out mAP: the labels' effect without the pipeline's schedule, and how far the training
  seed alone moves the classifier. One set is an oracle: full CCD's relabel round with the
  views placed around each object's true box instead of the CAM's (same views per box,
  offset, jitter, debias and fusion), the most any view guidance can give with this teacher.
  Three more take full CCD's relabel apart: its round-0 labels (the initial ones debiased),
  its round 1 without the debias (raw initial labels fused with the raw view scores), and the
  views alone.
export: transfer's label sets written into a label bundle folder (--bundle) instead of trained
  here; run it for several seeds and variants into one folder, then train them all with
  `python -m research.label_transfer`, on a GPU machine without Ray if there is one. Export
  every world's sets in the same order: each set's paired difference is taken against its
  world's first.
views: what the relabel round's views hold. From full_ccd's warm-up classifier, one relabel
  round (scoring.relabel_boxes, then scoring.score_boxes and labels.round_labels: the
  functions of the Ray stages and of ccd_ray/method/rounds.py) with the configured
  class selection and CAM views, the authors' selection, CAM region and box, and random
  crops: classes selected per image, view area, whole objects per view, and the round's
  pseudo-label quality on the training split. --student-side S warms the student up again in
  this process at input side S (a finer CAM grid), --warm-up-epochs E for E epochs (both
  through the pipeline's epoch loop, training.fit_epochs, with full_ccd's train settings and
  no consistency term); --warm-up-on truth warms it up on the ground truth, to tell the CAM
  mechanism from the quality of the classifier that feeds it; --after-round 1 probes a second
  round, its views placed by the classifier trained on round 1's labels (full_ccd's final
  one, 4 epochs on them).

    python -m research.ablation_diagnostics views --out outputs/ablation --student-side 192
fusion: which labels full_ccd's relabel fusion moves across labels.threshold (round 0 ->
  round 1 on the training split), and how many of them are true.

All probes read a variant of the table (`python -m research.synth_ablation --set ... --tag T`)
when given the same --set values and --tag.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import torch

from ccd_ray.demo.embedded import (
    IMAGE_SIDE,
    MAX_OBJECTS,
    SCENE_SCALE,
    STUDENT_BACKBONE_SPEC,
    TEACHER_SPEC,
    default_cache_dir,
)
from ccd_ray.demo.pretrain_backbone import pretrained_backbone
from ccd_ray.demo.pretrain_teacher import pretrained_teacher
from ccd_ray.demo.scenes import CLASS_NAMES, make_scenes
from ccd_ray.io.corpus import corpus_truth
from ccd_ray.io.inputs_codec import decode_inputs, round_trip
from ccd_ray.io.storage import RunStore
from ccd_ray.method import labels as label_ops
from ccd_ray.method.cam import select_classes
from ccd_ray.method.classifier import load_classifier
from ccd_ray.method.metrics import f1_scores, mean_average_precision, truth_matrix
from ccd_ray.method.rows import align_rows
from ccd_ray.method.schedule import is_holdout, selection_threshold
from ccd_ray.method.scoring import classifier_outputs, relabel_boxes, score_boxes
from ccd_ray.method.teacher import Teacher
from ccd_ray.method.thresholds import binarize
from ccd_ray.method.views import box_guided_boxes, rng_for
from ccd_ray.stages.labeling import read_labels, read_raw
from research import label_transfer, synth_ablation

# transfer's label sets: key -> (row label, the ablation setting and round whose labels it
# is); those without are computed from full_ccd's stages (label_set)
LABEL_SETS = {"global": ("initial labels (global_only, round 0)", "global_only", 0),
              "debiased": ("initial labels debiased (full_ccd, round 0)", "full_ccd", 0),
              "cam_relabel": ("+ CAM-guided relabel (round 1)", "cam_relabel", 1),
              "full_ccd": ("full CCD (round 1)", "full_ccd", 1),
              "views_alone": ("full CCD's round-1 CAM views alone (raw, no debias or fusion)",
                              None, None),
              "not_debiased": ("full CCD's round 1 without debias (raw initial fused with raw "
                               "views)", None, None),
              "oracle": ("full CCD, true-box views (oracle round 1)", None, None),
              "truth": ("ground truth", None, None)}
VIEW_VARIANTS = {"CAM views, threshold selection (as run)": [],
                 "CAM views, avg_count selection (authors)": ["relabel.class_selection=avg_count"],
                 "CAM views, region at 0.95 of the CAM peak (authors)":
                     ["relabel.cam_threshold=0.95"],
                 "CAM views, the authors' region, box and selection":
                     ["relabel.cam_threshold=0.95", "relabel.box_mode=first_last",
                      "relabel.class_selection=avg_count"],
                 "random crops (as random_views)": ["relabel.view_source=random"]}


def run_store(args, out: Path, setting: str, extra: list[str] = ()):
    """The config (the ablation's own, of its --set/--tag variant, plus extra overrides) and
    store of one ablation run of args.seed."""
    cfg = synth_ablation.setting_config(
        setting, args.seed, synth_ablation.corpus_path(out, args.images, args.seed),
        pretrained_teacher(default_cache_dir(), TEACHER_SPEC), out,
        pretrained_backbone(default_cache_dir(), STUDENT_BACKBONE_SPEC), extra, base=args.base,
        tag=args.tag)
    return cfg, RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)


def training_split(cfg, ids: list[str]) -> np.ndarray:
    """Bool mask of the ids the run trained on (not held out)."""
    return np.array([not is_holdout(i, cfg.train.holdout_fraction, cfg.seed) for i in ids])


def raw_scores(cfg, store: RunStore, round_index: int, ids: list[str]) -> torch.Tensor:
    """A round's raw teacher scores (before debias and fusion), one row per id in order."""
    raw_ids, scores, _ = read_raw(cfg, store, round_index)
    return torch.from_numpy(align_rows(np.asarray(ids), raw_ids, scores))


def committed_labels(store: RunStore, round_index: int, ids: list[str]) -> np.ndarray:
    """A committed round's soft labels, one row per id in order."""
    return align_rows(np.asarray(ids), *read_labels(store, round_index))


def label_set(args, out: Path, key: str, ids: list[str]) -> np.ndarray:
    """One of LABEL_SETS (not the truth) as float32 rows in the order of ids."""
    _, setting, round_index = LABEL_SETS[key]
    if setting is not None:
        store = run_store(args, out, setting)[1]
        return committed_labels(store, round_index, ids).astype(np.float32)
    if key == "oracle":
        by_image = oracle_labels(args, out)
        return np.stack([by_image[i] for i in ids]).astype(np.float32)
    cfg, store = run_store(args, out, "full_ccd")
    initial, views = (raw_scores(cfg, store, r, ids) for r in (0, 1))
    labels = views if key == "views_alone" else label_ops.fuse(initial, views, cfg.labels.alpha)
    return labels.numpy().astype(np.float32)


def export(args, out: Path, bundle: Path) -> None:
    """Write the label sets of args.seed's world into a label bundle for
    research/label_transfer.py: the world's 96-px scenes, split and truth once (checked equal
    if already there), and each set's labels at the variant's train.image_size."""
    cfg, donor = run_store(args, out, "global_only")
    side = cfg.train.image_size
    rows = pads.dataset(donor.committed("train-inputs"), filesystem=donor.fs).to_table().to_pylist()
    by_id = {r["image_id"]: r for r in rows}
    _, ids, images = world_scenes(args, cfg)
    pipeline_inputs = torch.from_numpy(decode_inputs([by_id[i]["image"] for i in ids], side))
    scene_pixels = torch.stack(images).numpy()
    resized = round_trip(label_transfer.student_inputs(scene_pixels, side).numpy(),
                         cfg.train.inputs_encoding, cfg.train.inputs_quality)
    if not np.array_equal(resized, pipeline_inputs.numpy()):
        raise SystemExit("the scenes resized and encoded here differ from the run's train-inputs")
    holdout = np.array([by_id[i]["holdout"] for i in ids])
    truth = truth_matrix(corpus_truth(cfg), ids, CLASS_NAMES).astype(np.float32)
    bundle.mkdir(parents=True, exist_ok=True)
    world = bundle / label_transfer.world_file(args.seed)
    if world.exists():
        with np.load(world) as data:
            if not (list(data["ids"]) == ids and np.array_equal(data["holdout"], holdout)
                    and np.array_equal(data["scenes"], scene_pixels)):
                raise SystemExit(f"{world} holds another world: a different --images or ablation?")
    else:
        np.savez_compressed(world, ids=np.array(ids), scenes=scene_pixels, holdout=holdout,
                            truth=truth, class_names=np.array(CLASS_NAMES))
    manifest_path = bundle / label_transfer.MANIFEST
    inputs = {"encoding": cfg.train.inputs_encoding, "quality": cfg.train.inputs_quality}
    manifest = (json.loads(manifest_path.read_text()) if manifest_path.exists()
                else {"backbone": cfg.train.backbone_weights, "inputs": inputs, "sets": []})
    if manifest.get("inputs") != inputs:  # one stored form per bundle: students decode it so
        raise SystemExit(f"{manifest_path} holds sets of inputs stored as "
                         f"{manifest.get('inputs')}, this run's are {inputs}")
    train, inputs_sha256 = ~holdout, label_transfer.inputs_sha256(pipeline_inputs)
    for key in args.sets:
        name = LABEL_SETS[key][0]
        labels = truth if key == "truth" else label_set(args, out, key, ids)
        variant = args.tag or "plain"
        entry = {"world_seed": args.seed, "side": side, "key": key,
                 "name": name if key == "truth" else f"{name} [{variant}]",
                 "file": f"labels-seed{args.seed}-{variant}-{key}-{side}.npy",
                 "pseudo_map": 100 * mean_average_precision(labels[train], truth[train]),
                 "inputs_sha256": inputs_sha256}
        np.save(bundle / entry["file"], labels)
        manifest["sets"] = [e for e in manifest["sets"] if e["file"] != entry["file"]] + [entry]
        print(f"{bundle / entry['file']}: {entry['name']}, side {side}, pseudo mAP "
              f"{entry['pseudo_map']:.1f}", flush=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))


def transfer(args, out: Path) -> None:
    with tempfile.TemporaryDirectory() as bundle:
        export(args, out, Path(bundle))
        label_transfer.main(["--bundle", bundle, "--torch-seeds", *map(str, args.torch_seeds)])


def _inside(view: np.ndarray, box) -> float:
    """The fraction of an object's box that lies inside a view."""
    width = max(0.0, min(view[2], box[2]) - max(view[0], box[0]))
    height = max(0.0, min(view[3], box[3]) - max(view[1], box[1]))
    return width * height / max((box[2] - box[0]) * (box[3] - box[1]), 1)


def world_scenes(args, cfg):
    """The corpus's scenes regenerated (the shards keep labels, not boxes), their ids and
    uint8 3 x 96 x 96 images; an error if they no longer match the corpus."""
    scenes = make_scenes(args.images, 1000 + args.seed, size=IMAGE_SIDE,
                         max_objects=MAX_OBJECTS, scale=SCENE_SCALE)
    ids = [f"synth-{1000 + args.seed}-{i:06d}" for i in range(args.images)]
    truth_by_id = corpus_truth(cfg)
    if any(sorted(truth_by_id[i]) != s.labels for i, s in zip(ids, scenes)):
        raise SystemExit("the regenerated scenes differ from the corpus: generator changed?")
    images = [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1) for s in scenes]
    return scenes, ids, images


def full_ccd_round_inputs(args, out: Path):
    """full_ccd's config and store, the world's scenes, ids, uint8 images and truth, and the
    relabel round's inputs: the round-0 debiased labels, the bias vector and the teacher."""
    cfg, store = run_store(args, out, "full_ccd")
    scenes, ids, images = world_scenes(args, cfg)
    truth = truth_matrix(corpus_truth(cfg), ids, CLASS_NAMES).astype(np.float32)
    initial = raw_scores(cfg, store, 0, ids)
    lc = cfg.labels
    bias, _ = label_ops.initial_bias(initial, lc.threshold, cfg.initial.entropy_threshold,
                                     lc.bias_statistic)
    previous = label_ops.round_labels(initial, None, bias, lc.gamma, lc.alpha, lc.debias)
    teacher = Teacher.from_config(cfg.teacher, cfg.classes)
    return cfg, store, scenes, ids, images, truth, previous, bias, teacher


def oracle_labels(args, out: Path) -> dict[str, np.ndarray]:
    """full_ccd's relabel round with its views around the true boxes, as image_id -> labels."""
    cfg, _, scenes, ids, images, _, previous, bias, teacher = full_ccd_round_inputs(args, out)
    rc = cfg.relabel
    boxes = []
    for scene, image, image_id in zip(scenes, images, ids):
        rng = rng_for(cfg.seed, image_id, 1)
        boxes.append(np.concatenate([
            box_guided_boxes(np.array(box), image.shape[1], image.shape[2], rc.views_per_box,
                             rc.box_offset, rc.box_jitter, rng) for box in scene.boxes]))
    fused = label_ops.round_labels(score_boxes(teacher, images, boxes, cfg), previous, bias,
                                   cfg.labels.gamma, cfg.labels.alpha, cfg.labels.debias)
    return dict(zip(ids, fused.numpy()))


def views(args, out: Path) -> None:
    cfg, store, scenes, ids, images, truth, previous, bias, teacher = full_ccd_round_inputs(
        args, out)
    lc = cfg.labels
    train = training_split(cfg, ids)
    student_side = args.student_side or cfg.train.image_size
    side = [f"train.image_size={student_side}"]
    warm_up_epochs = args.warm_up_epochs or cfg.train.warmup_epochs
    in_process = args.student_side or args.warm_up_on == "truth" or args.warm_up_epochs
    if args.after_round and in_process:
        raise SystemExit("--after-round reads the pipeline's classifier: no warm-up flags")
    round_index = args.after_round + 1
    if args.after_round:
        # a further round: full_ccd's classifier after training on round 1's labels places the
        # views, and round 1's labels are the ones it fuses into
        previous = torch.from_numpy(committed_labels(store, args.after_round, ids))
    if in_process:
        # full_ccd's warm-up again in this process: at another input side (a finer CAM grid),
        # longer, or on the ground truth (are a well-trained student's CAMs on the objects?)
        warm_up = dataclasses.replace(cfg.train, image_size=student_side,
                                      epochs=warm_up_epochs, beta=0.0)
        model = label_transfer.train_student(
            label_transfer.student_inputs(torch.stack(images).numpy(), student_side).numpy(),
            truth if args.warm_up_on == "truth" else previous.numpy(), np.flatnonzero(train),
            warm_up, len(CLASS_NAMES), cfg.seed)
    else:
        segment = store.committed(f"train/segment-{args.after_round}")
        model = load_classifier(f"{segment}/classifier.pt")[0]
    probs, cams = classifier_outputs(model, images, student_side)

    def quality(labels: torch.Tensor) -> str:
        scores, f1 = labels.numpy()[train], f1_scores(labels.numpy()[train], truth[train],
                                                      lc.threshold)
        return (f"{100 * mean_average_precision(scores, truth[train]):.1f} | "
                f"{100 * f1['CF1']:.1f} | {100 * f1['OF1']:.1f}")

    print(f"Seed {args.seed}: {np.mean([len(s.boxes) for s in scenes]):.2f} objects, "
          f"{truth.sum(1).mean():.2f} classes per scene; CAM grid {tuple(cams.shape[-2:])} at "
          f"train.image_size {student_side}; views placed by "
          + (f"a warm-up of {warm_up_epochs} epochs on {args.warm_up_on} (in this process)"
             if in_process else f"train/segment-{args.after_round}") + ".\n")
    print("| relabel views | classes selected per image | view area / image | whole objects "
          "per view | views with exactly one | pseudo mAP | CF1 | OF1 |\n"
          "|---|---|---|---|---|---|---|---|")
    print(f"| none (round {args.after_round}) | - | - | - | - | {quality(previous)} |")
    for name, overrides in VIEW_VARIANTS.items():
        variant, _ = run_store(args, out, "full_ccd", [*side, *overrides])
        threshold = selection_threshold(variant, lambda: probs[torch.from_numpy(train)].numpy())
        selected = select_classes(probs, threshold)
        boxes = relabel_boxes(probs, cams, images, ids, threshold, round_index, variant)
        area, whole = [], []
        for scene, image_boxes in zip(scenes, boxes):
            for view in image_boxes:
                area.append((view[2] - view[0]) * (view[3] - view[1]) / IMAGE_SIDE ** 2)
                whole.append(sum(_inside(view, b) >= 0.7 for b in scene.boxes))
        labels = label_ops.round_labels(score_boxes(teacher, images, boxes, variant), previous,
                                        bias, variant.labels.gamma, variant.labels.alpha,
                                        variant.labels.debias)
        print(f"| {name} | {np.mean([len(s) for s in selected]):.2f} | {np.mean(area):.2f} | "
              f"{np.mean(whole):.2f} | {np.mean(np.array(whole) == 1):.2f} | {quality(labels)} |",
              flush=True)


def fusion(args, out: Path) -> None:
    """What full_ccd's relabel fusion changes: the labels it moves across labels.threshold
    between round 0 (debiased) and round 1, and how many of them are true."""
    cfg, store = run_store(args, out, "full_ccd")
    ids, before = read_labels(store, 0)
    ids = ids.tolist()
    train = training_split(cfg, ids)
    truth = truth_matrix(corpus_truth(cfg), ids, CLASS_NAMES)[train].astype(bool)
    old, new = before[train], committed_labels(store, 1, ids)[train]
    threshold = cfg.labels.threshold
    was, now = binarize(old, threshold), binarize(new, threshold)
    lost, gained = was & ~now, ~was & now

    def share_true(moved: np.ndarray) -> str:
        return f"{truth[moved].mean():.2f}" if moved.any() else "-"

    def count(positive: np.ndarray) -> str:
        return f"{int(positive.sum())} ({int((positive & truth).sum())})"

    print(f"| seed | training images | true labels | labels at {threshold}, round 0 (true) | "
          f"round 1 (true) | lost (share true) | gained (share true) |\n"
          f"|---|---|---|---|---|---|---|")
    print(f"| {args.seed} | {int(train.sum())} | {int(truth.sum())} | {count(was)} | "
          f"{count(now)} | {int(lost.sum())} ({share_true(lost)}) | {int(gained.sum())} "
          f"({share_true(gained)}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("transfer", "export", "views", "fusion"))
    parser.add_argument("--out", required=True, help="the ablation's --out folder")
    parser.add_argument("--seed", type=int, default=0, help="the ablation seed to read")
    parser.add_argument("--images", type=int, default=300, help="the ablation's --images")
    parser.add_argument("--torch-seeds", type=int, nargs="+", default=[0, 1],
                        help="transfer: training seeds per label set")
    parser.add_argument("--student-side", type=int,
                        help="views: warm the student up here at this input side instead of "
                             "reading full_ccd's warm-up classifier")
    parser.add_argument("--warm-up-on", choices=("labels", "truth"), default="labels",
                        help="views: 'truth' warms the student up here on the ground truth "
                             "instead of the round-0 labels")
    parser.add_argument("--warm-up-epochs", type=int,
                        help="views: warm the student up here for this many epochs")
    parser.add_argument("--after-round", type=int, default=0, choices=(0, 1),
                        help="views: 1 probes a second round, placed by full_ccd's classifier "
                             "after its training on round 1's labels")
    parser.add_argument("--sets", nargs="+", choices=list(LABEL_SETS), default=list(LABEL_SETS),
                        help="transfer, export: the label sets to train on or write")
    parser.add_argument("--bundle", help="export: the label bundle folder (default OUT/label-sets)")
    parser.add_argument("--set", dest="base", action="append", default=[], metavar="KEY=VALUE",
                        help="read the runs of synth_ablation's variant made with these --set "
                             "values (with its --tag)")
    parser.add_argument("--tag", default="", help="the variant's --tag")
    args = parser.parse_args()
    if bool(args.base) != bool(args.tag):
        parser.error("a variant's runs are named by --tag and configured by --set: give both")
    out = Path(args.out).resolve()
    if args.probe == "export":
        export(args, out, Path(args.bundle).resolve() if args.bundle else out / "label-sets")
    else:
        {"transfer": transfer, "views": views, "fusion": fusion}[args.probe](args, out)


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same numbers on any machine
    main()
