"""Wall time of a 9-trial alpha x gamma sweep with the score cache against without it.

One run, one local Ray instance, the same corpus, teacher and trials for both arms:

  cache on   jobs/sweep.py's default: the base config's CLIP stages (round-0 views, then the
             base classifier's box-guided views) are scored once by the Ray Data actors into
             a fresh, empty score cache (their cost is included); every trial re-derives its
             labels from the cached scores (0 CLIP passes) and trains + evaluates.
  cache off  the naive sweep (`--no-cache`): every trial loads the teacher and scores every
             view itself (round 0, then round 1 around its own classifier's CAM boxes), then
             trains + evaluates the same way. Exact for every value, and the cost the cache
             avoids.

Both arms build the same training inputs (one Ray Data stage each) and use the corpus's
ground truth on the held-out images as the labeled validation subset, so each trial also
reports the proxy objective; the script prints the wall times and their ratio, the CLIP work
of each arm, the rank correlation (Spearman) of the cached trials' objective with the exact
ones, and of proxy_mAP with val_mAP in each arm.

The default teacher is `ccd-small-vit` (benchmarks/model_configs: a 5M-parameter open_clip
ViT, 128 px input, ~50 views/s on one busy CPU core) with random weights, so mAPs are near
chance and the rank correlations say little about a real teacher. It is ~40x cheaper per view
than ViT-B-32 and several hundred times cheaper than the paper's RN50x64 at 448 px: the
cache's gain grows with the teacher's cost. --model takes any open_clip architecture (random
weights, nothing downloaded), e.g. ccd-tiny-vit (almost free) or ViT-B-32 (slow here);
`--model synth-pretrained` uses the SynthScenes teacher (ccd_ray/demo/pretrain_teacher.py), whose
scores mean something, for the proxy-vs-labeled rank correlation.
Ray: ray.init(address="local", num_cpus=4).

Usage:
  python benchmarks/sweep_cache.py [--images 24] [--image-size 96] [--crops 10]
      [--views-per-box 10] [--epochs 2] [--model ccd-small-vit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

ALPHAS, GAMMAS = [0.2, 0.4, 0.6], [0.5, 1.0, 2.0]
PRETRAINED = "synth-pretrained"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="synthetic scenes in the corpus")
    p.add_argument("--image-size", type=int, default=96, help="side of the scenes")
    p.add_argument("--crops", type=int, default=10, help="initial.random_crops (paper: ~10)")
    p.add_argument("--views-per-box", type=int, default=10,
                   help="relabel.views_per_box (paper: ~10)")
    p.add_argument("--epochs", type=int, default=2, help="train.epochs (warm-up 1)")
    p.add_argument("--model", default="ccd-small-vit",
                   help=f"open_clip architecture (random weights), or {PRETRAINED!r}: the "
                   "embedded default's pretrained teacher (a real proxy-vs-labeled ranking)")
    p.add_argument("--workdir", help="keep the corpus and outputs here (default: a temp dir)")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def prepare(workdir: Path, args) -> dict:
    """Corpus shards and a seeded random-weight teacher saved as a local-dir checkpoint."""
    import open_clip
    import pyarrow.fs as pafs
    import torch

    from ccd_ray.config import TeacherConfig
    from ccd_ray.demo.scenes import CLASS_NAMES
    from ccd_ray.io.packing import synthetic_records, write_shards
    from ccd_ray.method.teacher import load_clip, save_local_dir

    open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")
    corpus = workdir / "corpus"
    write_shards(synthetic_records(args.images, 21, args.image_size, 3), pafs.LocalFileSystem(),
                 str(corpus), 16)
    if args.model == PRETRAINED:
        from ccd_ray.demo.embedded import TEACHER_SPEC, default_cache_dir
        from ccd_ray.demo.pretrain_teacher import pretrained_teacher

        teacher = pretrained_teacher(default_cache_dir(), TEACHER_SPEC)
    else:
        torch.manual_seed(21)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _, _, _ = load_clip(TeacherConfig(model=args.model, pretrained=None))
        teacher = save_local_dir(model, args.model, workdir / "teacher")
    return {"classes": {"names": list(CLASS_NAMES)}, "teacher": {"model": teacher},
            "data": {"corpus_uri": str(corpus)}}


def run_arm(base: dict, args, workdir: Path, cache: bool) -> dict:
    from ccd_ray.config import load_config
    from ccd_ray.sweep.spec import parse_sweep_spec
    from ccd_ray.sweep.tune import run_sweep

    name = "cache-on" if cache else "cache-off"
    cfg = load_config(overrides=[
        f"run_id={name}", f"data.output_uri={workdir / ('out-' + name)}",
        f"initial.random_crops={args.crops}", f"relabel.views_per_box={args.views_per_box}",
        "relabel.rounds=1", "relabel.cam_resolution=16", "train.image_size=32",
        f"train.epochs={args.epochs}", "train.warmup_epochs=1", "train.batch_size=8",
        "train.holdout_fraction=0.25", "compute.images_per_batch=16",
        "teacher.batch_size=64"], base=base)
    spec = parse_sweep_spec({"sweep_id": name, "params": {"alpha": ALPHAS, "gamma": GAMMAS},
                             "cache": cache, "cpus_per_trial": 1,
                             "validation": {"from_corpus": 10_000}}, cfg)
    started = time.time()
    outcome = run_sweep(cfg, spec)
    seconds = time.time() - started
    summary = outcome.summary
    return {"arm": name, "seconds": seconds, "summary": summary,
            "trial_passes": sum(t.get("teacher_forward_passes") or 0 for t in summary["trials"]),
            "trial_teacher_seconds": sum(t.get("teacher_seconds") or 0
                                         for t in summary["trials"]),
            "base_passes": summary.get("base_teacher_passes_this_run", 0)}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    import ray
    import ray.data  # noqa: F401

    from ccd_ray.method.metrics import spearman

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ccd-sweep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        base = prepare(workdir, args)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        arms = [run_arm(base, args, workdir, cache=True), run_arm(base, args, workdir, cache=False)]
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    on, off = arms
    exact = {t["trial"]: t for t in off["summary"]["trials"]}
    paired = [(t["objective"], exact[t["trial"]]["objective"]) for t in on["summary"]["trials"]
              if t["trial"] in exact]
    rho_exact = spearman([a for a, _ in paired], [b for _, b in paired])
    print()
    print(f"9-trial sweep, alpha in {ALPHAS} x gamma in {GAMMAS}; {args.images} scenes of "
          f"{args.image_size} px, teacher {args.model}"
          f"{'' if args.model == PRETRAINED else ' (random weights)'}, {1 + args.crops} "
          f"round-0 views per image, {args.views_per_box} views per CAM box, "
          f"{args.epochs} epochs, ray.init(num_cpus=4) on {os.cpu_count()} cores")
    print()
    print("| arm | wall time (s) | shared stages (s) | Tune trials (s) | CLIP passes, base | "
          "CLIP passes, trials | trials' time in CLIP (s, summed) | best trial | best val_mAP |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for arm in arms:
        s, best = arm["summary"], arm["summary"]["best"]
        print(f"| {arm['arm']} | {arm['seconds']:.1f} | {s['base_seconds']:.1f} | "
              f"{s['tune_seconds']:.1f} | {arm['base_passes']} | {arm['trial_passes']} | "
              f"{arm['trial_teacher_seconds']:.1f} | {best['trial']} | {best['objective']:.2f} |")
    print()
    print(f"speed-up, cache off / cache on: {off['seconds'] / on['seconds']:.2f}x")
    print(f"Spearman, cached trials' val_mAP vs exact trials' val_mAP: {rho_exact:.3f}")
    for arm in arms:
        rho = arm["summary"].get("proxy_vs_labeled_spearman")
        print(f"Spearman, proxy_mAP vs val_mAP ({arm['arm']}): "
              f"{'undefined' if rho is None else f'{rho:.3f}'}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "arms": [{k: v for k, v in a.items() if k != "summary"}
                                          | {"trials": a["summary"]["trials"]} for a in arms],
             "spearman_cached_vs_exact": rho_exact}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
