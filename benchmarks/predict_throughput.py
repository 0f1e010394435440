"""Throughput of labeling with the distilled classifier (jobs/predict.py) against phase-1 CLIP
labeling (the teacher's global view + random crops), on the same images, from one run.

Two measurements, each on the same synthetic corpus (local Parquet shards):

  (a) the actors' work without Ray: `InitialViewScorer` and `ClassifierPredictor` (the
      classes the two Ray Data pools run) called on the same pyarrow batches, after a
      warm-up batch each, taking turns batch by batch (so a busy machine slows both alike):
      decode + views/resize + forward passes + output table;
  (b) the whole Ray Data stages, one actor each: `score_cache.initial_view_scores` (phase 1
      of a run, written to a fresh score cache) and `stages.predict.predict_corpus` (read ->
      classifier pool -> per-shard writes and commits -> the gathered predict stage), wall
      time including every fixed cost (executor start, actor start-up, model load), one
      after the other.

Both sides use the config's defaults unless overridden: phase 1 scores 1 + initial.random_crops
views per image (10 crops by default) with the teacher; predict runs the student once per
image at train.image_size. The teacher is an open_clip architecture with random weights and
the classifier a random-weight CAM classifier (speed does not depend on the weights; nothing is
downloaded). Torch threads: --threads in this process and for each actor
(compute.cpus_per_actor, which Ray turns into OMP_NUM_THREADS).

Usage:
  python benchmarks/predict_throughput.py [--images 48] [--teacher ViT-B-32] [--crops 10]
      [--backbone resnet18] [--student-size 224] [--threads 2] [--skip-ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=48, help="images in the corpus")
    p.add_argument("--image-size", type=int, default=160, help="side of the synthetic scenes")
    p.add_argument("--teacher", default="ViT-B-32", help="open_clip architecture (random weights)")
    p.add_argument("--crops", type=int, default=10, help="initial.random_crops")
    p.add_argument("--backbone", default="resnet18", help="train.backbone of the classifier")
    p.add_argument("--student-size", type=int, default=224, help="train.image_size")
    p.add_argument("--images-per-batch", type=int, default=16, help="compute.images_per_batch")
    p.add_argument("--threads", type=int, default=2, help="torch threads, here and per actor")
    p.add_argument("--skip-ray", action="store_true", help="only measurement (a)")
    p.add_argument("--json", dest="json_path", help="also write the numbers here")
    args = p.parse_args(argv)
    if min(args.images, args.image_size, args.images_per_batch, args.threads) < 1:
        p.error("--images, --image-size, --images-per-batch and --threads must be >= 1")
    return args


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # read when ray.data is imported
    warnings.filterwarnings("ignore")
    import io

    import pyarrow as pa
    import torch

    from ccd_ray.config import load_config
    from ccd_ray.demo.scenes import CLASS_NAMES
    from ccd_ray.io.corpus import corpus_layout, read_task_rows
    from ccd_ray.io.packing import synthetic_records, write_shards
    from ccd_ray.io.storage import filesystem_for
    from ccd_ray.method.classifier import CAMClassifier, save_classifier
    from ccd_ray.stages.actors import InitialViewScorer
    from ccd_ray.stages.predict import ClassifierPredictor

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="predict-throughput-"))
    cfg = load_config(overrides=[
        f"teacher.model={args.teacher}", "teacher.pretrained=null",
        f"initial.random_crops={args.crops}", f"train.backbone={args.backbone}",
        f"train.image_size={args.student_size}",
        f"compute.images_per_batch={args.images_per_batch}",
        f"compute.cpus_per_actor={args.threads}", "compute.device=cpu",
        f"data.corpus_uri={work / 'corpus'}", f"data.output_uri={work / 'runs'}"],
        base={"classes": {"names": list(CLASS_NAMES)}})
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    write_shards(synthetic_records(args.images, seed=0, size=args.image_size, max_objects=3),
                 fs, root, images_per_shard=args.images_per_batch)
    torch.manual_seed(0)
    buffer = io.BytesIO()
    save_classifier(buffer, CAMClassifier(args.backbone, len(CLASS_NAMES)), CLASS_NAMES,
                    args.student_size)
    classifier = buffer.getvalue()
    (work / "classifier.pt").write_bytes(classifier)

    # (a) the actors' per-batch work, in this process
    fs, layout = corpus_layout(cfg)
    rows = pa.concat_tables([t for files in layout.tasks
                             for t in read_task_rows(fs, layout.without_tasks(), files)])
    rows = rows.append_column("shard", pa.array([0] * rows.num_rows, pa.int64())).append_column(
        "shard_rows", pa.array([rows.num_rows] * rows.num_rows, pa.int64()))
    batches = [rows.slice(i, args.images_per_batch)
               for i in range(0, rows.num_rows, args.images_per_batch)]
    teacher_actor = InitialViewScorer(cfg.to_dict())
    classifier_actor = ClassifierPredictor(cfg.to_dict(), lambda: classifier)
    results: dict = {"images": rows.num_rows, "views_per_image": 1 + args.crops,
                     "teacher": args.teacher, "classifier": f"{args.backbone} at "
                     f"{args.student_size} px", "threads": args.threads,
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                     f"load average {os.getloadavg()[0]:.1f} at start",
                     "date": time.strftime("%Y-%m-%d", time.gmtime())}
    actors = {"phase1": teacher_actor, "predict": classifier_actor}
    seconds = dict.fromkeys(actors, 0.0)
    for actor in actors.values():
        actor(batches[0])  # warm-up: first forward passes allocate
    # batch by batch in turn, so both sides see the same load of a shared machine
    for batch in batches:
        for name, actor in actors.items():
            seconds[name] += _timed(lambda actor=actor, batch=batch: actor(batch))
    for name in actors:
        results[f"actor_{name}_images_per_s"] = rows.num_rows / seconds[name]
    results["actor_ratio"] = results["actor_predict_images_per_s"] / \
        results["actor_phase1_images_per_s"]

    # (b) the whole Ray Data stages, one actor each
    if not args.skip_ray:
        import ray

        from ccd_ray.stages import score_cache
        from ccd_ray.stages.predict import predict_corpus

        ray.init(address="local", num_cpus=max(4, args.threads + 2), include_dashboard=False,
                 log_to_driver=False)
        phase1 = _timed(lambda: score_cache.initial_view_scores(cfg))
        predicted = _timed(lambda: predict_corpus(cfg, str(work / "classifier.pt"), classifier))
        results["ray_phase1_images_per_s"] = rows.num_rows / phase1
        results["ray_predict_images_per_s"] = rows.num_rows / predicted
        results["ray_ratio"] = phase1 / predicted
        ray.shutdown()

    print(f"{results['images']} images, {results['views_per_image']} teacher views each; "
          f"teacher {results['teacher']}, classifier {results['classifier']}; "
          f"{results['threads']} threads; {results['machine']}")
    print("| measurement | phase-1 CLIP images/s | predict images/s | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for key, label in (("actor", "actor work, no Ray (decode + model)"),
                       ("ray", "Ray Data stage, one actor, wall incl. start-up")):
        if f"{key}_ratio" in results:
            print(f"| {label} | {results[f'{key}_phase1_images_per_s']:.2f} | "
                  f"{results[f'{key}_predict_images_per_s']:.2f} | "
                  f"{results[f'{key}_ratio']:.1f}x |")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
