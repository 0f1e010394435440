"""Throughput of phase-1 teacher scoring: the Ray Data pipeline with one actor against plain loops.

One run, on the same images and the same teacher weights, measures:

  (a) `labeling.score_initial` on a local Parquet corpus, `compute.clip_actors=1`: the whole
      Ray Data stage (read tasks -> InitialViewScorer actor -> write_parquet -> counts from
      two columns -> commit; each run with its own output URI, so its own score cache).
      After a warm-up run on the tiny corpus (reported, in no ratio: the first Ray Data
      execution of a fresh Ray instance also starts and warms its task workers), it is run on
      a tiny corpus (one shard of a few images), whose wall time is essentially the
      pipeline's fixed cost (executor start, actor start-up and teacher load, first forward
      pass, write, counts), then on the full corpus.
      The steady-state rate is derived from the difference:
          rate_ss = (N_full - N_tiny) / (T_full - T_tiny)
      Two cross-checks come from Ray Data's own records (its log, read by a handler): the
      same difference over its execution time of the read->actor->write dataset only
      (without the counts and commit), and over the time the actor spent on its batches
      (`task_worker_completion_time_s` of MapBatches(ShardCarrier), the InitialViewScorer
      pool: decode + score + output table, no actor start-up, no waiting). Their ratio to
      the steady-state wall time is the actor's utilisation: ~1 means the actor never
      waited for reads or writes; it is measured in one time window, so it is the number
      least disturbed by other load on the machine (above 1 only by noise in the fixed
      costs).
  (b) a plain single-process loop doing the same batched work: decode with
      `ccd_ray.io.decode.decode_image`, `scoring.initial_scores`, batches of
      `compute.images_per_batch` images (teacher forward passes of up to `teacher.batch_size`
      views);
  (c) the authors' way: the same views, but `teacher.score` on a one-view batch per forward
      pass, on the first --per-view-images images (it is slow; its rate does not depend on
      the count).

Where the pipeline's CPU goes: before and after each pipeline run, the user + system CPU
seconds of every process on the machine (/proc/<pid>/stat), summed per group: the teacher's
actor (a process titled ray::..MapWorker..), Ray's other workers (read and write tasks, idle
pooled workers), Ray's daemons (raylet, GCS, dashboard, monitors), this driver process, and
the rest of the machine. Full minus tiny gives each group's steady-state CPU seconds, against
the host's capacity (steady-state seconds x host CPUs). A process that exits between the two
samples drops out of them (Ray's task workers are pooled, so few do).

The loops (b) and (c) run in this process after an untimed warm-up and time only the
decode + crop + score work (the shard bytes are read into memory and the teacher is loaded
before timing). (b) runs once before and once after the pipeline, so drift in the machine's
load shows; ratios use the mean of its two rates. Target: steady-state (a) >= 0.8 x (b).
The pipeline's scores (pooled per image) are checked against (b)'s (same weights, views and
batching).

Threads: Ray sets OMP_NUM_THREADS = floor(num_cpus) in every worker whose environment does
not set it (actors included; num_cpus < 1 or unset gives 1), and torch takes its intra-op
thread count from it. So the actor gets `--threads` threads through
`compute.cpus_per_actor=--threads`, and this process calls `torch.set_num_threads(--threads)`;
the script checks the actor side with a probe actor of the same num_cpus and prints it.

Ray: ray.init(address="local", num_cpus=4, include_dashboard=False) with RAY_AUTH_MODE=disabled
and RAY_DATA_DISABLE_PROGRESS_BARS=1 set first; address="local" so that a cluster another
process started on this machine with `ray start` is never joined.

The teacher is an open_clip architecture (default ViT-B-32) with random weights, saved once
as a `local-dir:` folder in the work directory so the actor and the loops load identical
weights; nothing is downloaded.

Usage:
  python benchmarks/relabel_throughput.py [--images 48] [--crops 3] [--image-size 128]
      [--model ViT-B-32] [--batch 32] [--images-per-batch 16] [--threads 2]
      [--cpus-per-actor N] [--per-view-images 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48, help="images in the full corpus")
    p.add_argument("--crops", type=int, default=3,
                   help="initial.random_crops (views per image = 1 + crops)")
    p.add_argument("--image-size", type=int, default=128, help="side of the synthetic images")
    p.add_argument("--model", default="ViT-B-32",
                   help="open_clip architecture, random weights (pretrained=None)")
    p.add_argument("--batch", type=int, default=32,
                   help="teacher.batch_size: views per forward pass in (a) and (b)")
    p.add_argument("--images-per-batch", type=int, default=16,
                   help="compute.images_per_batch: images per actor batch / loop batch")
    p.add_argument("--images-per-shard", type=int, default=16,
                   help="images per Parquet shard of the full corpus")
    p.add_argument("--tiny-images", type=int, default=4,
                   help="images in the one-shard corpus that measures the fixed overhead")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads of the actor (via compute.cpus_per_actor) and of the "
                        "in-process loops")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="compute.cpus_per_actor; default --threads (Ray then gives the actor "
                        "floor(cpus) torch threads; set 1 to see the project default)")
    p.add_argument("--per-view-images", type=int, default=12,
                   help="images scored by loop (c), the first ones of the corpus (it is slow "
                        "and its rate does not depend on the count); 0 = all")
    p.add_argument("--ray-cpus", type=int, default=None,
                   help="ray.init(num_cpus=...); default max(4, threads + 2) so the read and "
                        "write tasks are not starved by the actor")
    p.add_argument("--max-objects", type=int, default=3, help="objects per synthetic scene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-per-view", action="store_true", help="skip loop (c)")
    p.add_argument("--workdir", default=None,
                   help="folder for the corpus, teacher and run outputs (default: a temp dir, "
                        "removed at the end)")
    p.add_argument("--verbose", action="store_true",
                   help="keep Ray Data's INFO log lines (plans, stats) on the console")
    p.add_argument("--json", dest="json_path", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    for name in ("images", "image_size", "batch", "images_per_batch", "images_per_shard",
                 "tiny_images", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.crops < 0:
        p.error("--crops must be >= 0")
    if args.per_view_images < 0:
        p.error("--per-view-images must be >= 0")
    if args.tiny_images >= args.images:
        p.error("--tiny-images must be smaller than --images")
    return args


CPU_GROUPS = ("teacher actor", "other Ray workers", "Ray daemons", "driver (this process)",
              "rest of the machine")


def _cpu_group(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "driver (this process)"
    if "MapWorker" in command:
        return "teacher actor"  # the benchmark's only actor pool
    if command.startswith("ray::") or "default_worker.py" in command:
        return "other Ray workers"
    if any(name in command for name in ("raylet", "gcs_server", "dashboard", "log_monitor",
                                        "ray/_private", "runtime_env", "monitor.py")):
        return "Ray daemons"
    return "rest of the machine"


def cpu_by_group() -> dict[str, float]:
    """CPU seconds (user + system) used so far by the machine's live processes, per group."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(CPU_GROUPS, 0.0)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited while being read
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state) on
        seconds = (int(fields[11]) + int(fields[12])) / tick  # fields 14, 15: utime, stime
        totals[_cpu_group(int(entry.name), command)] += seconds
    return totals


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _rate(count: float, seconds: float | None) -> float | None:
    if seconds is None:
        return None
    return count / seconds if seconds > 0 else float("nan")


def _per(seconds: float | None, count: float) -> float | None:
    return None if seconds is None else seconds / count


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class _RayDataLog(logging.Handler):
    """Collects from Ray Data's own log records each dataset's execution time ("Execution plan
    of Dataset X: ..." / "Dataset X execution finished in S seconds", INFO) and each
    operator's final metrics ("Operator NAME completed. Operator Metrics: {...}", DEBUG), of
    which `task_worker_completion_time_s` is the summed wall time of the operator's tasks as
    measured where they ran (for an actor pool: inside the actor, batch by batch; actor
    construction is not in it) and `function_body_time_s` the part inside the UDF bodies."""

    _METRICS = ("task_worker_completion_time_s", "function_body_time_s", "num_tasks_finished")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.plans: dict[str, str] = {}
        self.finished: list[tuple[str, float]] = []  # (plan, seconds)
        self.operators: list[tuple[str, dict[str, float]]] = []  # (operator, metrics)

    def clear(self) -> None:
        self.finished.clear()
        self.operators.clear()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        done_op = re.match(r"Operator (.+?) completed\. Operator Metrics:", message)
        if done_op:
            metrics = {}
            for key in self._METRICS:
                found = re.search(rf"'{key}': ([0-9.eE+-]+)", message)
                if found:
                    metrics[key] = float(found.group(1))
            self.operators.append((done_op.group(1), metrics))
            return
        plan = re.search(r"Execution plan of Dataset (\S+?): (.*)", message)
        if plan:
            self.plans[plan.group(1)] = plan.group(2)
        done = re.search(r"Dataset (\S+) execution finished in ([0-9.]+) seconds", message)
        if done:
            self.finished.append((self.plans.get(done.group(1), ""), float(done.group(2))))

    def seconds(self, marker: str) -> float | None:
        times = [t for plan, t in self.finished if marker in plan]
        return sum(times) if times else None

    def operator_metric(self, marker: str, key: str) -> float | None:
        values = [m[key] for name, m in self.operators if marker in name and key in m]
        return sum(values) if values else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # Must be set before ray (and ray.data) are imported: ccd_ray.stages.labeling imports ray.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"

    import numpy as np
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    import ray
    import ray.data
    import torch

    from ccd_ray.config import TeacherConfig, load_config
    from ccd_ray.demo.scenes import CLASS_NAMES
    from ccd_ray.io.decode import decode_image
    from ccd_ray.io.packing import synthetic_records, write_shards
    from ccd_ray.io.storage import RunStore, list_files
    from ccd_ray.method.labels import pool_views
    from ccd_ray.method.scoring import initial_scores
    from ccd_ray.method.teacher import Teacher, load_clip, save_local_dir
    from ccd_ray.method.views import crop_views, initial_boxes
    from ccd_ray.stages import labeling, score_cache

    data_context = ray.data.DataContext.get_current()
    saved_progress_bars = data_context.enable_progress_bars
    data_context.enable_progress_bars = False
    ray_data_logger = logging.getLogger("ray.data")
    ray_data_log = _RayDataLog()
    ray_data_logger.addHandler(ray_data_log)
    quieted = []
    if not args.verbose:  # Ray Data's INFO lines (plans, timings) stay in its log files
        for handler in ray_data_logger.handlers:
            if isinstance(handler, logging.StreamHandler) and \
                    not isinstance(handler, logging.FileHandler) and handler is not ray_data_log:
                quieted.append((handler, handler.level))
                handler.setLevel(logging.WARNING)

    torch.set_num_threads(args.threads)
    cpus_per_actor = float(args.cpus_per_actor if args.cpus_per_actor is not None
                           else args.threads)
    ray_cpus = args.ray_cpus or max(4, math.ceil(cpus_per_actor) + 2)

    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ccd-relabel-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    fs = pafs.LocalFileSystem()
    views_per_image = 1 + args.crops
    n_full, n_tiny = args.images, args.tiny_images
    n_view = min(args.per_view_images or n_full, n_full)
    load_before = os.getloadavg()
    started = time.perf_counter()

    try:
        # ---- teacher weights: one random model, saved once, loaded by everyone ----
        torch.manual_seed(args.seed)
        model, _, _, _ = load_clip(TeacherConfig(model=args.model, pretrained=None))
        spec = save_local_dir(model, args.model, workdir / "teacher")
        del model

        def config(run_id: str, corpus: str):
            return load_config(base={
                "run_id": run_id, "seed": args.seed,
                "classes": {"names": list(CLASS_NAMES)},
                "teacher": {"model": spec, "pretrained": None, "batch_size": args.batch},
                "initial": {"random_crops": args.crops},
                # an output URI (so a score cache) per run: every run scores, none hits
                "data": {"corpus_uri": str(workdir / corpus),
                         "output_uri": str(workdir / "out" / run_id)},
                "compute": {"clip_actors": 1, "cpus_per_actor": cpus_per_actor,
                            "images_per_batch": args.images_per_batch, "device": "cpu",
                            "gpus_per_actor": 0.0},
            })

        # ---- corpora: the full one and a one-shard tiny one (its first images) ----
        records = list(synthetic_records(n_full, args.seed, args.image_size, args.max_objects))
        write_shards(records, fs, str(workdir / "corpus"), args.images_per_shard)
        write_shards(records[:n_tiny], fs, str(workdir / "corpus-tiny"), n_tiny)
        cfg = config("full", "corpus")
        cfg_tiny = config("tiny", "corpus-tiny")

        # The loops read the very bytes the pipeline reads, before timing.
        rows: list[tuple[str, bytes]] = []
        for path in list_files(fs, str(workdir / "corpus"), (".parquet",)):
            table = pq.read_table(path, columns=["image_id", "image"], filesystem=fs)
            rows.extend(zip(table.column("image_id").to_pylist(),
                            table.column("image").to_pylist()))
        assert len(rows) == n_full

        teacher = Teacher.from_config(cfg.teacher, cfg.classes, "cpu")

        def decode(batch: list[tuple[str, bytes]]) -> tuple[list[str], list]:
            ids, images = [], []
            for image_id, data in batch:
                decoded = decode_image(data, cfg.data.max_image_pixels, cfg.data.max_image_side)
                if decoded.error:
                    raise RuntimeError(f"{image_id}: {decoded.error}")
                ids.append(image_id)
                images.append(torch.from_numpy(decoded.image))
            return ids, images

        def plain_loop() -> dict[str, Any]:
            """(b): decode + initial_scores, images_per_batch images at a time."""
            teacher.forward_passes = 0
            scores: dict = {}
            t, c = time.perf_counter(), time.process_time()
            for batch in _chunks(rows, args.images_per_batch):
                ids, images = decode(batch)
                scores.update(zip(ids, initial_scores(teacher, images, ids, cfg)))
            return {"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                    "scores": scores, "forward_passes": teacher.forward_passes}

        def per_view_loop() -> dict[str, Any]:
            """(c): the same views of the first n_view images, one view per forward pass."""
            teacher.forward_passes = 0
            scores: dict = {}
            t, c = time.perf_counter(), time.process_time()
            for image_id, data in rows[:n_view]:
                _, (image,) = decode([(image_id, data)])
                boxes = initial_boxes(image.shape[1], image.shape[2], cfg.initial.random_crops,
                                      cfg.initial.crop_scale, cfg.seed, image_id)
                views = crop_views(image, boxes, teacher.image_size, teacher.mean, teacher.std)
                per_view = torch.cat([teacher.score(v[None]) for v in views])
                scores[image_id] = torch.from_numpy(pool_views(
                    per_view.numpy(), np.array([len(boxes)]), cfg.labels.aggregation)[0])
            return {"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                    "scores": scores, "forward_passes": teacher.forward_passes}

        # untimed warm-up (the first forward passes allocate and pick kernels)
        ids, images = decode(rows[:n_tiny])
        initial_scores(teacher, images, ids, cfg)
        teacher.score(crop_views(images[0], initial_boxes(
            images[0].shape[1], images[0].shape[2], 0, cfg.initial.crop_scale, cfg.seed, ids[0]),
            teacher.image_size, teacher.mean, teacher.std))

        plain_1 = plain_loop()
        plain_scores = plain_1["scores"]
        view = None
        view_diff = None
        if n_view:
            view = per_view_loop()
            view_diff = max(float((view["scores"][i] - plain_scores[i]).abs().max())
                            for i in view["scores"])

        # ---- (a) the Ray Data pipeline, one actor ----
        t = time.perf_counter()
        # address="local": always a fresh private instance, never a cluster that another
        # process on this machine started with `ray start` (ray.init() would join that one)
        ray.init(address="local", num_cpus=ray_cpus, include_dashboard=False)
        t_ray_init = time.perf_counter() - t

        @ray.remote
        class _ThreadProbe:
            def threads(self) -> tuple[int, str | None]:
                import torch as actor_torch
                return actor_torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")

        probe = _ThreadProbe.options(num_cpus=cpus_per_actor).remote()
        actor_threads, actor_omp = ray.get(probe.threads.remote())
        ray.kill(probe)

        # the teacher's actor pool, as Ray Data names it: score_cache wraps InitialViewScorer
        # in stages.shards.ShardCarrier, which carries each row's shard columns through
        actor_op = "MapBatches(ShardCarrier)"

        def pipeline(run_cfg) -> dict[str, Any]:
            store = RunStore.open(run_cfg.data.output_uri, run_cfg.run_id, run_cfg.data)
            ray_data_log.clear()
            cpu_before = cpu_by_group()
            t = time.perf_counter()
            folder = labeling.score_initial(run_cfg, store)
            seconds = time.perf_counter() - t
            cpu_after = cpu_by_group()
            return {"seconds": seconds, "folder": folder, "cfg": run_cfg, "store": store,
                    "cpu_s": {g: cpu_after[g] - cpu_before[g] for g in CPU_GROUPS},
                    "scoring_dataset_s": ray_data_log.seconds(actor_op),
                    "count_pass_s": 0.0,  # counts come from two columns read on the driver
                    "actor_busy_s": ray_data_log.operator_metric(
                        actor_op, "task_worker_completion_time_s"),
                    "actor_udf_s": ray_data_log.operator_metric(
                        actor_op, "function_body_time_s"),
                    "actor_batches": ray_data_log.operator_metric(
                        actor_op, "num_tasks_finished")}

        # The first Ray Data execution of a fresh Ray instance also pays one-time costs
        # (task workers start and import ray.data, pyarrow, torch); the tiny run must not
        # carry them, or they would not cancel, so a warm-up run of it goes first.
        cold = pipeline(config("warm-up", "corpus-tiny"))
        tiny = pipeline(cfg_tiny)
        full = pipeline(cfg)

        out_ids, out_scores, out_errors = labeling.read_raw(full["cfg"], full["store"], 0)
        views_table = pads.dataset(score_cache.entry_files(fs, full["folder"]), filesystem=fs,
                                   format="parquet").to_table(columns=["views"])
        pipeline_views = int(sum(views_table.column("views").to_pylist()))
        if out_errors.num_rows or len(out_ids) != n_full:
            raise RuntimeError(f"pipeline labeled {len(out_ids)} of {n_full} images, "
                               f"{out_errors.num_rows} errors")
        if pipeline_views != n_full * views_per_image:
            raise RuntimeError(f"pipeline scored {pipeline_views} views, expected "
                               f"{n_full * views_per_image}")
        pipe_diff = float(np.max(np.abs(
            out_scores - np.stack([plain_scores[i].numpy() for i in out_ids]))))
        ray.shutdown()

        # (b) again, so the two plain runs bracket the pipeline in time
        plain_2 = plain_loop()
    finally:
        ray_data_logger.removeHandler(ray_data_log)
        for handler, level in quieted:
            handler.setLevel(level)
        data_context.enable_progress_bars = saved_progress_bars
        if ray.is_initialized():
            ray.shutdown()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    # ---- numbers ----
    extra = n_full - n_tiny

    def entry(images: int, seconds: float | None, cpu_s: float | None = None,
              **more: Any) -> dict[str, Any]:
        rate = _rate(images, seconds)
        return {"images": images, "seconds": seconds, "images_per_s": rate,
                "views_per_s": None if rate is None else rate * views_per_image,
                "cpu_s_per_image": _per(cpu_s, images), **more}

    def pipeline_entry(run: dict[str, Any], images: int) -> dict[str, Any]:
        # the run's config and store locate its outputs; they are not figures
        return entry(images, run["seconds"], **{k: v for k, v in run.items() if k not in (
            "seconds", "folder", "cfg", "store", "cpu_s")}, cpu_s_by_group=run["cpu_s"])

    steady = entry(extra, full["seconds"] - tiny["seconds"])
    steady["fixed_overhead_s"] = (tiny["seconds"] - n_tiny / steady["images_per_s"]
                                  if steady["seconds"] > 0 else None)
    dataset_steady = entry(extra, _diff(full["scoring_dataset_s"], tiny["scoring_dataset_s"]))
    steady["cpu_s_by_group"] = {g: full["cpu_s"][g] - tiny["cpu_s"][g] for g in CPU_GROUPS}
    steady["cpu_capacity_s"] = steady["seconds"] * (os.cpu_count() or 1)
    steady["actor_cpu_s_per_image"] = _per(steady["cpu_s_by_group"]["teacher actor"], extra)
    actor_steady = entry(extra, _diff(full["actor_busy_s"], tiny["actor_busy_s"]))
    actor_steady["udf_seconds"] = _diff(full["actor_udf_s"], tiny["actor_udf_s"])
    # share of the steady-state pipeline time the actor spent working on batches: measured
    # in one time window, so it is far less sensitive to the machine's load than the ratios
    actor_steady["utilisation"] = (None if actor_steady["seconds"] is None
                                   or steady["seconds"] <= 0
                                   else actor_steady["seconds"] / steady["seconds"])
    b1 = entry(n_full, plain_1["seconds"], plain_1["cpu_s"],
               forward_passes=plain_1["forward_passes"])
    b2 = entry(n_full, plain_2["seconds"], plain_2["cpu_s"])
    rate_plain = (b1["images_per_s"] + b2["images_per_s"]) / 2
    cpu_plain = (b1["cpu_s_per_image"] + b2["cpu_s_per_image"]) / 2
    c = None if view is None else entry(n_view, view["seconds"], view["cpu_s"],
                                        forward_passes=view["forward_passes"])
    ratio_actor = (None if actor_steady["images_per_s"] is None
                   else actor_steady["images_per_s"] / rate_plain)
    result: dict[str, Any] = {
        "settings": {
            "model": args.model, "pretrained": None, "images": n_full,
            "tiny_images": n_tiny, "per_view_images": n_view, "image_size": args.image_size,
            "random_crops": args.crops, "views_per_image": views_per_image,
            "teacher_batch_size": args.batch, "images_per_batch": args.images_per_batch,
            "images_per_shard": args.images_per_shard, "loop_torch_threads": args.threads,
            "cpus_per_actor": cpus_per_actor, "actor_torch_threads": actor_threads,
            "actor_OMP_NUM_THREADS": actor_omp, "ray_num_cpus": ray_cpus,
            "host_cpus": os.cpu_count(), "loadavg_1min_before": load_before[0],
            "loadavg_1min_after": os.getloadavg()[0], "ray_version": ray.__version__,
            "torch_version": torch.__version__,
        },
        "pipeline_warmup_tiny": pipeline_entry(cold, n_tiny),
        "pipeline_tiny": pipeline_entry(tiny, n_tiny),
        "pipeline_full": pipeline_entry(full, n_full),
        "pipeline_steady": steady,
        "pipeline_dataset_steady": dataset_steady,
        "pipeline_actor_steady": actor_steady,
        "plain_batched_before": b1,
        "plain_batched_after": b2,
        "plain_batched_mean": {"images_per_s": rate_plain,
                               "views_per_s": rate_plain * views_per_image,
                               "cpu_s_per_image": cpu_plain},
        "per_view": c,
        "ray_init_seconds": t_ray_init,
        "ratios": {
            "pipeline_steady_over_plain": steady["images_per_s"] / rate_plain,
            "pipeline_total_over_plain": _rate(n_full, full["seconds"]) / rate_plain,
            "pipeline_dataset_steady_over_plain": None
            if dataset_steady["images_per_s"] is None
            else dataset_steady["images_per_s"] / rate_plain,
            "actor_busy_over_plain": ratio_actor,
            "actor_utilisation_in_steady_state": actor_steady["utilisation"],
            "plain_over_per_view": None if c is None else rate_plain / c["images_per_s"],
        },
        "max_abs_score_diff": {"pipeline_vs_plain": pipe_diff, "per_view_vs_plain": view_diff},
        "target": {"pipeline_steady_over_plain_at_least": 0.8},
        "total_benchmark_seconds": time.perf_counter() - started,
    }
    result["target"]["met"] = result["ratios"]["pipeline_steady_over_plain"] >= 0.8
    print(report(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json_path}")
    return result


def report(r: dict[str, Any]) -> str:
    s, ratios = r["settings"], r["ratios"]
    cold, tiny, full = r["pipeline_warmup_tiny"], r["pipeline_tiny"], r["pipeline_full"]
    steady, dataset, actor = (r["pipeline_steady"], r["pipeline_dataset_steady"],
                              r["pipeline_actor_steady"])
    b1, b2, bm, view = (r["plain_batched_before"], r["plain_batched_after"],
                        r["plain_batched_mean"], r["per_view"])

    def row(name: str, includes: str, d: dict[str, Any]) -> str:
        return (f"| {name} | {includes} | {d.get('images', '-')} | {_fmt(d.get('seconds'))} | "
                f"{_fmt(d.get('images_per_s'))} | {_fmt(d.get('views_per_s'))} | "
                f"{_fmt(d.get('cpu_s_per_image'), 3)} |")

    def parts(d: dict[str, Any]) -> str:
        batches = d.get("actor_batches")
        return (f"Ray Data executing read->actor->write {_fmt(d['scoring_dataset_s'], 1)} s, "
                f"the actor busy in it {_fmt(d['actor_busy_s'], 1)} s over "
                f"{'-' if batches is None else int(batches)} batches; read-back count pass "
                f"{_fmt(d['count_pass_s'], 1)} s")

    lines = [
        f"# relabel throughput: phase-1 teacher scoring, {s['model']} (random weights)",
        "",
        f"{s['images']} images of {s['image_size']} px, {s['views_per_image']} views each "
        f"(global + {s['random_crops']} crops), teacher.batch_size={s['teacher_batch_size']}, "
        f"images_per_batch={s['images_per_batch']}, {s['images_per_shard']} images/shard. "
        f"torch threads: loops {s['loop_torch_threads']} (torch.set_num_threads), actor "
        f"{s['actor_torch_threads']} (compute.cpus_per_actor={s['cpus_per_actor']:g} -> Ray sets "
        f"OMP_NUM_THREADS={s['actor_OMP_NUM_THREADS']}). ray.init(num_cpus={s['ray_num_cpus']}) "
        f"on {s['host_cpus']} host CPUs. 1-min load average before/after: "
        f"{s['loadavg_1min_before']:.2f}/{s['loadavg_1min_after']:.2f}.",
        "",
        "| run | what the time includes | images | seconds | images/s | views/s | "
        "CPU s/image |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        row("(a) pipeline, warm-up run on the tiny corpus", "as the next row, plus the "
            "one-time start of Ray's task workers; in no ratio", cold),
        row("(a) pipeline, tiny corpus (1 shard)", "all of score_initial: Ray Data executor "
            "start, actor start + teacher load, the images, Parquet write, read-back count "
            f"pass, commit ({parts(tiny)})", tiny),
        row("(a) pipeline, full corpus", f"all of score_initial, as above ({parts(full)})", full),
        row("**(a) pipeline, steady state**", "full minus tiny wall time: the extra images' "
            "work only, fixed costs cancel", steady),
        row("(a) read->actor->write only, steady state", "full minus tiny of Ray Data's "
            "own execution time of that dataset (leaves out the read-back count pass, a fixed "
            "cost)", dataset),
        row("(a) actor only, steady state", "full minus tiny of the time the actor spent on "
            "its batches (Ray Data's task_worker_completion_time_s of "
            "MapBatches(ShardCarrier), the InitialViewScorer pool: decode + score + output "
            "table; no actor start, no waiting)", actor),
        row("(b) plain batched loop, before (a)", f"decode + crop + score, "
            f"{b1['forward_passes']} forward passes; warm teacher, bytes in memory", b1),
        row("(b) plain batched loop, after (a)", "same", b2),
        row("**(b) plain batched loop, mean**", "mean of the two", bm),
    ]
    if view is not None:
        lines.append(row("(c) one view per forward pass", f"decode + crop + score, first "
                         f"{view['images']} images, {view['forward_passes']} forward passes",
                         view))
    lines += [
        "",
        f"- (a)/(b), steady state: **{_fmt(ratios['pipeline_steady_over_plain'], 3)}x** "
        f"(target >= {r['target']['pipeline_steady_over_plain_at_least']}x: "
        f"{'met' if r['target']['met'] else 'NOT met'})",
        f"- (a)/(b), total wall time of score_initial incl. fixed costs: "
        f"{_fmt(ratios['pipeline_total_over_plain'], 3)}x; read->actor->write only, steady "
        f"state: {_fmt(ratios['pipeline_dataset_steady_over_plain'], 3)}x",
        f"- actor utilisation in steady state (actor-only seconds / steady-state seconds, "
        f"one time window, so the least load-sensitive number here): "
        f"{_fmt(ratios['actor_utilisation_in_steady_state'], 3)}; actor-only/(b): "
        f"{_fmt(ratios['actor_busy_over_plain'], 3)}x",
        f"- (b)/(c): {_fmt(ratios['plain_over_per_view'], 3)}x",
        f"- CPU seconds in the steady state (full minus tiny run), of a capacity of "
        f"{_fmt(steady['cpu_capacity_s'], 1)} ({_fmt(steady['seconds'], 1)} s x "
        f"{s['host_cpus']} CPUs): " + ", ".join(
            f"{group} {_fmt(seconds, 1)}" for group, seconds in
            steady["cpu_s_by_group"].items()) + f"; (b) used {_fmt(bm['cpu_s_per_image'], 3)} "
        f"CPU s an image, the actor {_fmt(steady['actor_cpu_s_per_image'], 3)}",
        "- CPU s/image (loops only): this process's CPU time, all threads, per image; about "
        "threads x seconds/image when the cores are free",
        f"- fixed pipeline cost (tiny run minus its {tiny['images']} images at the steady rate):"
        f" {_fmt(steady['fixed_overhead_s'])} s; ray.init (in no row): "
        f"{_fmt(r['ray_init_seconds'])} s",
        f"- max |score difference| vs (b): pipeline "
        f"{r['max_abs_score_diff']['pipeline_vs_plain']:.1e}, per-view "
        + (f"{r['max_abs_score_diff']['per_view_vs_plain']:.1e}"
           if r['max_abs_score_diff']['per_view_vs_plain'] is not None else "-"),
        f"- one run, wall-clock times: on a shared or loaded machine they are noisy; compare "
        f"the two (b) rows for drift (benchmark total {_fmt(r['total_benchmark_seconds'], 1)} s)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
