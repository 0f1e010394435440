"""GPU check of the Ray job: the embedded default end to end on the GPU, then phase-1 scoring
throughput through Ray Data against a plain in-process loop on the same GPU.

One run on one machine:

  (1) the embedded default end to end (`jobs/run_ccd.py`'s `main(argv)`, synthetic corpus and
      pretrained tiny teacher) with `compute.device=cuda`, `compute.gpus_per_actor` > 0 (Ray
      Data GPU actor pools for the teacher, and in phase 2 the classifier's CAM boxes beside
      it; 0.5 by default, so that two actors share the one GPU when a pool grows) and
      `compute.use_gpu=true` (Ray Train on CUDA). Stage timings are read from what the run
      committed: each stage's `_COMMITTED.json` (raw scoring stages carry `seconds`), the
      labels stages' `summary.json` (`labels_seconds`), and for Ray Train the checkpoint
      folders each epoch reported (their names carry the time of the report): steps/s =
      batches of the epoch (the segment marker's metrics) / the time between two consecutive
      epochs' checkpoints. The stage lines the job itself logs ("[ccd-ray] X: done in S s")
      are shown beside them. The embedded world (corpus, teacher pretraining: about a CPU
      minute, cached in $CCD_RAY_CACHE or ~/.cache/ccd-ray) is made first and timed apart.
  (2) a plain in-process `training.train_step` loop (benchmarks/gpu_check.py's
      `measure_training`) at the embedded run's backbone, image size and batch: the Train
      step rate without Ray, for the ratio.
  (3) phase-1 scoring throughput with open_clip ViT-B-32 (random weights: `teacher.model=
      ViT-B-32`, `teacher.pretrained` null) at 224 px over a few thousand synthetic images
      (made by parallel Ray tasks, written as Parquet shards): `labeling.score_initial` over
      Ray Data with a GPU actor pool (4 actors x 0.25 GPU x 2 CPUs): after a warm-up run
      (reported, in no ratio), on a tiny corpus (the fixed cost: executor start, actor start
      + teacher load, write, counts, commit; a shard per actor, so that the pool
      grows to its size in it too) and then on the full one; rates from the stage's committed
      `seconds`, steady state = (N_full - N_tiny) / (T_full - T_tiny); each run has its own
      output URI, so its own score cache, and scores every view. Then the same work
      (PIL decode + `scoring.initial_scores`, batches of `compute.images_per_batch` images)
      in a plain loop in this process on the same GPU.

Throughout, GPU utilisation and memory are sampled in a background thread (pynvml, else
nvidia-smi) and summarised per phase (utilisation.gpu is NVML's share of time a kernel ran).
% of the bf16 FLOP limit = views/s x FLOPs per view / peak: FLOPs per view are counted with
torch.utils.flop_counter on one view of the teacher (image tower + the text matmul, 2 FLOPs
per multiply-add: 8.73 GFLOP for ViT-B-32 at 224 px; --flops-per-view overrides), the peak
is --peak-tflops (default 790: a dense bf16 matrix product measured on an H200; the teacher
runs fp16 autocast, whose tensor-core peak is the same). Peak GPU memory: the most NVML or
nvidia-smi saw in use on the device in each phase (all processes, Ray actors included), and
torch's max_memory_allocated of the plain loop.

Results: a markdown table on stdout, everything as JSON in --out (written after each phase,
so a run cut short still leaves what it measured). Each phase runs on if an earlier one
failed; the exit status is 1 if any failed.

Ray missing (a GPU machine without network, with Python and torch but no Ray): pass
`--wheels DIR`, a folder of the wheels of Ray and its dependencies for that machine's Python
(made on a machine with network, e.g. `pip download --only-binary=:all: --python-version 3.12
-d DIR "ray[data,train,tune]==2.60.0" ...`). The script installs them offline with
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target DIR/site DIR/*.whl
and puts DIR/site on the import path and, with the repository and benchmarks/, on PYTHONPATH
(the Ray workers need them). ccd_ray itself is imported from the environment:
`benchmarks/gpu_ray_check.sh` puts the repository on PYTHONPATH for a machine where the
package is not installed.

--device cpu is a smoke test of all of the above for a CPU-only machine (CI): the tiny
teacher (ccd-tiny-vit) everywhere, a 16-image embedded corpus with a random-weight teacher
(no pretraining), a few dozen images for the throughput, gpus_per_actor=0, use_gpu=false.
Its numbers say nothing about GPU speed.

Ray: ray.init(address="local", num_cpus=max(4, 2 x cores), num_gpus=<visible CUDA devices,
0 with --device cpu>, include_dashboard=False) with RAY_AUTH_MODE=disabled and
RAY_DATA_DISABLE_PROGRESS_BARS=1 set first.

Usage:
  bash benchmarks/gpu_ray_check.sh [--wheels DIR]                 # on the GPU machine
  PYTHONPATH=. python3 benchmarks/gpu_ray_check.py --out results.json   # the same, bare
  python benchmarks/gpu_ray_check.py --device cpu --out smoke.json  # CPU smoke, ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FINAL_STAGE = "final"
MARKER = "_COMMITTED.json"
PEAK_TFLOPS = 790.0  # dense bf16 matrix product, as measured on an H200

# Per device: the throughput corpus and pipeline, the embedded run, the plain train loop.
GPU = {"model": "ViT-B-32", "image_size": 224, "images": 4096, "tiny_images": 256,
       "images_per_shard": 64, "crops": 4, "batch": 320, "images_per_batch": 64,
       "clip_actors": 4, "gpus_per_actor": 0.25, "cpus_per_actor": 2.0, "plain_images": 1024,
       "embedded_gpus_per_actor": 0.5, "train_steps": 30, "train_warmup": 5,
       "object_store_gib": 4.0}
CPU = {"model": "ccd-tiny-vit", "image_size": 64, "images": 24, "tiny_images": 8,
       "images_per_shard": 8, "crops": 2, "batch": 32, "images_per_batch": 8,
       "clip_actors": 1, "gpus_per_actor": 0.0, "cpus_per_actor": 1.0, "plain_images": 24,
       "embedded_gpus_per_actor": 0.0, "train_steps": 2, "train_warmup": 1,
       "object_store_gib": None}
SMALL_EMBEDDED = {"images": 16, "seed": 7, "side": 96, "max_objects": 4}  # --device cpu


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda: the GPU check; cpu: a small smoke test of the script (CI)")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    p.add_argument("--wheels", type=Path, default=None,
                   help="a folder of the wheels of Ray and its dependencies, installed offline "
                        "into <folder>/site when Ray is not importable")
    p.add_argument("--workdir", default=None,
                   help="corpora and run stores (default: a temp dir, removed at the end)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS,
                   help=f"the FLOP/s limit the %% refers to, in TFLOP/s ({PEAK_TFLOPS:g}: dense "
                        "bf16 measured on an H200)")
    p.add_argument("--flops-per-view", type=float, default=None,
                   help="teacher FLOPs per view (default: counted with torch's flop counter)")
    p.add_argument("--skip-embedded", action="store_true", help="leave out (1) and (2)")
    p.add_argument("--skip-throughput", action="store_true", help="leave out (3)")
    p.add_argument("--embedded-corpus", choices=("default", "small"), default=None,
                   help="the embedded default's own 200-image corpus and pretrained teacher "
                        "(default with --device cuda), or a 16-image corpus and a random tiny "
                        "teacher (default with --device cpu: no teacher pretraining)")
    p.add_argument("--sample-interval", type=float, default=0.2,
                   help="seconds between GPU utilisation samples")
    p.add_argument("--ray-cpus", type=int, default=None,
                   help="ray.init(num_cpus=...); default max(4, 2 x cores)")
    sizes = p.add_argument_group("sizes (defaults depend on --device: cuda / cpu)")
    for key, kind, what in (
            ("model", str, "open_clip architecture of the throughput teacher, random weights"),
            ("image_size", int, "side of the synthetic throughput images"),
            ("images", int, "images of the full throughput corpus"),
            ("tiny_images", int, "images of the tiny corpus (the fixed cost; on the GPU a "
                                 "shard per actor, so that the pool grows there too)"),
            ("images_per_shard", int, "images per Parquet shard of the throughput corpus"),
            ("crops", int, "initial.random_crops: views per image = 1 + crops"),
            ("batch", int, "teacher.batch_size: views per forward pass"),
            ("images_per_batch", int, "compute.images_per_batch: images per actor/loop batch"),
            ("clip_actors", int, "compute.clip_actors of the throughput pipeline"),
            ("gpus_per_actor", float, "compute.gpus_per_actor of the throughput pipeline"),
            ("cpus_per_actor", float, "compute.cpus_per_actor of the throughput pipeline "
                                      "(Ray gives the actor floor(cpus) torch threads)"),
            ("plain_images", int, "images of the plain in-process loop (its rate does not "
                                  "depend on the count)"),
            ("embedded_gpus_per_actor", float, "compute.gpus_per_actor of the embedded run"),
            ("train_steps", int, "timed steps of the plain train loop"),
            ("train_warmup", int, "untimed steps of the plain train loop first"),
            ("object_store_gib", float, "Ray object store size (default: Ray's own on cpu)")):
        sizes.add_argument("--" + key.replace("_", "-"), dest=key, type=kind, default=None,
                           help=f"{what} ({GPU[key]} / {CPU[key]})")
    args = p.parse_args(argv)
    base = GPU if args.device == "cuda" else CPU
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.embedded_corpus is None:
        args.embedded_corpus = "default" if args.device == "cuda" else "small"
    if args.tiny_images >= args.images:
        p.error("--tiny-images must be smaller than --images")
    if args.device == "cpu" and (args.gpus_per_actor or args.embedded_gpus_per_actor):
        p.error("--device cpu takes no GPUs: leave --gpus-per-actor and "
                "--embedded-gpus-per-actor at 0")
    if args.device == "cuda" and not (args.gpus_per_actor > 0 and args.embedded_gpus_per_actor > 0):
        p.error("--device cuda: --gpus-per-actor and --embedded-gpus-per-actor must be > 0")
    return args


# ---- Ray from --wheels when it is missing ---------------------------------------------------

def install_command(wheels: list[str], site: str) -> list[str]:
    """The offline install line of a folder of wheels."""
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
            "--no-compile", "--no-cache-dir", "--upgrade", "--target", site, *wheels]


def ensure_ray(wheel_dir: Path | None, site: str | None = None) -> str:
    """Import Ray; if it is missing, install the wheels of wheel_dir (--wheels) into site
    (default wheel_dir/site) first and import it from there. Either way the repository and
    benchmarks/ (and site) go on PYTHONPATH, which Ray's workers inherit. Returns how."""
    extra = [str(REPO), str(BENCH)]
    try:
        importlib.import_module("ray")
        how = "ray was importable"
    except ImportError:
        wheels = sorted(str(w) for w in wheel_dir.glob("*.whl")) if wheel_dir else []
        if not wheels:
            raise SystemExit(f"ray is not importable and --wheels {wheel_dir} holds no wheels: "
                             "pass --wheels DIR, a folder of the wheels of Ray and its "
                             "dependencies for this Python (pip download them on a machine "
                             "with network)") from None
        site = site or str(wheel_dir / "site")
        command = install_command(wheels, site)
        print("ray missing: " + " ".join(command[:12]) + f" {wheel_dir.name}/*.whl", flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        sys.path.insert(0, site)
        importlib.invalidate_caches()
        importlib.import_module("ray")
        extra.insert(0, site)
        how = f"installed {len(wheels)} wheels from {wheel_dir} into {site} in " \
              f"{time.perf_counter() - started:.0f} s"
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(extra + [p for p in current if p not in extra])
    return how


# ---- GPU sampling ---------------------------------------------------------------------------

class GpuSampler:
    """Samples (time, utilisation %, memory used MiB) of GPU 0 in a background thread: NVML
    (pynvml) if importable, else `nvidia-smi --query-gpu`; nothing without either."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self.source: str | None = None
        self._read = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _setup(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)

            def read_nvml() -> tuple[float, float]:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                return float(util), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

            read_nvml()
            self._read, self.source = read_nvml, "NVML (pynvml)"
            return
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            def read_smi() -> tuple[float, float]:
                out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,"
                                      "memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                util, mem = out.strip().splitlines()[0].split(",")
                return float(util), float(mem)

            try:
                read_smi()
                self._read, self.source = read_smi, "nvidia-smi"
            except Exception:
                pass

    def start(self) -> "GpuSampler":
        self._setup()
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="gpu-sampler")
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                util, mem = self._read()
                self.samples.append((time.time(), util, mem))
            except Exception:
                pass
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def window(self, start: float, end: float) -> dict[str, Any] | None:
        return window_stats(self.samples, start, end)


def window_stats(samples: list[tuple[float, float, float]], start: float, end: float
                 ) -> dict[str, Any] | None:
    """Utilisation mean/max and the most memory in use over the samples in [start, end]."""
    inside = [s for s in samples if start <= s[0] <= end]
    if not inside:
        return None
    utils = [s[1] for s in inside]
    return {"samples": len(inside), "util_mean_pct": sum(utils) / len(utils),
            "util_max_pct": max(utils),
            "busy_share": sum(u > 0 for u in utils) / len(utils),
            "memory_used_max_gib": max(s[2] for s in inside) / 1024}


# ---- small helpers --------------------------------------------------------------------------

def rate(count: float, seconds: float | None) -> float | None:
    return None if not seconds or seconds <= 0 else count / seconds


def flop_share(views_per_s: float | None, flops_per_view: float | None, peak_tflops: float
               ) -> float | None:
    """% of the peak FLOP rate that views_per_s x flops_per_view amounts to."""
    if views_per_s is None or flops_per_view is None or peak_tflops <= 0:
        return None
    return 100.0 * views_per_s * flops_per_view / (peak_tflops * 1e12)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class Tee(io.TextIOBase):
    """Writes through to a stream and keeps every line (to read the job's own stage log)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


LOGGED_STAGE = re.compile(r"\[ccd-ray\] (\S+): done in ([0-9.]+) s")


def logged_stage_seconds(lines: list[str]) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in map(LOGGED_STAGE.search, lines) if m}


def _checkpoint_time(name: str) -> float | None:
    """Ray Train V2 names a checkpoint folder checkpoint_%Y-%m-%d_%H-%M-%S.%f (local time of
    the report)."""
    m = re.fullmatch(r"checkpoint_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d\.\d+)", name)
    return None if m is None else datetime.strptime(m.group(1), "%Y-%m-%d_%H-%M-%S.%f"
                                                     ).timestamp()


def committed_stages(store) -> list[dict[str, Any]]:
    """Every committed stage under the run store: name, its marker's info, and the seconds it
    recorded (the marker's `seconds`, else a labels stage's summary.json `labels_seconds`)."""
    import pyarrow.fs as pafs

    from ccd_ray.io.storage import read_json

    selector = pafs.FileSelector(store.root, recursive=True)
    markers = sorted((i.mtime_ns or 0, i.path) for i in store.fs.get_file_info(selector)
                     if i.type == pafs.FileType.File and posixpath.basename(i.path) == MARKER)
    stages = []
    for mtime_ns, path in markers:  # in the order they were committed
        name = posixpath.relpath(posixpath.dirname(path), store.root)
        if name.startswith("ray-train"):
            continue  # Ray Train's own storage, not a stage
        info = read_json(store.fs, path)
        seconds = info.get("seconds")
        summary = posixpath.join(posixpath.dirname(path), info.get("attempt", ""), "summary.json")
        if seconds is None and store.fs.get_file_info(summary).type == pafs.FileType.File:
            seconds = read_json(store.fs, summary).get("labels_seconds")
        stages.append({"stage": name, "seconds": seconds, "committed_at": mtime_ns / 1e9,
                       "info": info})
    return stages


def train_rates(store, stages: list[dict[str, Any]], batch_size: int | None
                ) -> list[dict[str, Any]]:
    """Ray Train step rate of each committed segment: the batches of an epoch (the marker's
    last-epoch metrics, per worker) over the time between consecutive epochs' checkpoints;
    images/s with batch_size images per step (all workers together)."""
    import pyarrow.fs as pafs

    rows = []
    for stage in stages:
        info = stage["info"]
        if "checkpoint" not in info:
            continue
        folder = posixpath.dirname(info["checkpoint"])
        names = [posixpath.basename(i.path) for i in store.fs.get_file_info(
            pafs.FileSelector(folder)) if i.type == pafs.FileType.Directory]
        times = sorted(t for t in map(_checkpoint_time, names) if t is not None)
        intervals = [b - a for a, b in zip(times, times[1:])]
        batches = info.get("metrics", {}).get("batches")
        epoch_s = sum(intervals) / len(intervals) if intervals else None
        steps_per_s = rate(batches, epoch_s) if batches else None
        rows.append({"stage": stage["stage"], "epochs": info.get("epochs"),
                     "checkpoints": len(times), "batches_per_epoch": batches,
                     "epoch_s": epoch_s, "epoch_intervals_s": intervals,
                     "first_checkpoint_at": times[0] if times else None,
                     "last_checkpoint_at": times[-1] if times else None,
                     "steps_per_s": steps_per_s,
                     "images_per_s": None if steps_per_s is None or not batch_size
                     else steps_per_s * batch_size,
                     "last_loss": info.get("metrics", {}).get("loss")})
    return rows


def _quiet_ray_data() -> None:
    """Ray Data's INFO lines (plans, per-dataset stats) stay in its log files."""
    import logging

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and \
                not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def _make_records(job: tuple[int, int, int, int]) -> list:
    """Synthetic corpus records of one generator process (top level: spawned workers)."""
    from ccd_ray.io.packing import synthetic_records

    count, seed, side, max_objects = job
    return list(synthetic_records(count, seed, side, max_objects))


def make_records(count: int, side: int, seed: int = 100, max_objects: int = 4) -> list:
    """count synthetic scenes; over 256 of them in parallel Ray tasks, 256 per seed."""
    chunk = 256
    jobs = [(min(chunk, count - start), seed + k, side, max_objects)
            for k, start in enumerate(range(0, count, chunk))]
    if len(jobs) == 1:
        return _make_records(jobs[0])
    import ray

    task = ray.remote(num_cpus=1)(_make_records)
    return [r for part in ray.get([task.remote(job) for job in jobs]) for r in part]


def make_teacher(cfg, device: str):
    """The teacher of a config on device (open_clip warns about random weights: quieted)."""
    import warnings

    from ccd_ray.method.teacher import Teacher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Teacher.from_config(cfg.teacher, cfg.classes, device)


def count_flops(teacher) -> float:
    """FLOPs of Teacher.score on one view, by torch's flop counter (2 per multiply-add). The
    model is put in train mode while counting so that nn.MultiheadAttention takes its
    decomposed path, whose projections the counter sees (its fused inference path hides
    them); CLIP has no dropout or batch norm, so the arithmetic is the same. Not counted: the
    attention score products inside scaled_dot_product_attention (~1% for ViT-B-32)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    view = torch.randn(1, 3, teacher.image_size, teacher.image_size)
    was_training = teacher.model.training
    counter = FlopCounterMode(display=False)
    teacher.model.train()
    try:
        with counter:
            teacher.score(view)
    finally:
        teacher.model.train(was_training)
    return float(counter.get_total_flops())


# ---- the phases -----------------------------------------------------------------------------

class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.result: dict[str, Any] = {"errors": {}}
        self.sampler: GpuSampler | None = None
        self.started = time.perf_counter()

    def save(self) -> None:
        self.result["wall_s"] = time.perf_counter() - self.started
        if self.args.out:
            Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.out).write_text(json.dumps(self.result, indent=2, default=str) + "\n")

    def phase(self, name: str, fn, *args) -> Any:
        print(f"\n== {name} ==", flush=True)
        try:
            return fn(*args)
        except BaseException as exc:  # noqa: BLE001 - a failed phase must not hide the others
            if isinstance(exc, KeyboardInterrupt):
                raise
            traceback.print_exc()
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"[:2000]
            return None
        finally:
            self.save()

    def gpu(self, start: float, end: float) -> dict[str, Any] | None:
        return None if self.sampler is None else self.sampler.window(start, end)

    # (1) the embedded default end to end
    def embedded(self, workdir: Path) -> None:
        import importlib.util

        from ccd_ray.cli import job_config
        from ccd_ray.config import DataConfig
        from ccd_ray.io.storage import RunStore, read_bytes

        a = self.args
        run_id = f"gpu-ray-check-{a.device}-{int(time.time())}"
        output_uri = str(workdir / "runs")
        sets = [f"data.output_uri={output_uri}", f"compute.device={a.device}",
                f"compute.gpus_per_actor={a.embedded_gpus_per_actor:g}",
                f"compute.use_gpu={'true' if a.device == 'cuda' else 'false'}"]
        if a.embedded_corpus == "small":
            import pyarrow.fs as pafs

            from ccd_ray.demo.scenes import CLASS_NAMES
            from ccd_ray.io.packing import synthetic_records, write_shards

            corpus = workdir / "embedded-small-corpus"
            s = SMALL_EMBEDDED
            write_shards(synthetic_records(s["images"], s["seed"], s["side"], s["max_objects"]),
                         pafs.LocalFileSystem(), str(corpus), s["images"])
            sets += [f"data.corpus_uri={corpus}", f"classes.names=[{', '.join(CLASS_NAMES)}]",
                     "teacher.model=ccd-tiny-vit", "teacher.pretrained=null"]
        entry = self.result["embedded"] = {"run_id": run_id, "corpus": a.embedded_corpus,
                                           "overrides": sets}
        # The embedded default's world (corpus, teacher pretraining) is made on first use;
        # made here first, so that the run's wall time is the job's alone.
        t = time.perf_counter()
        job_config(None, sets)
        entry["prepare_s"] = time.perf_counter() - t
        argv = [arg for item in sets for arg in ("--set", item)] + ["--run-id", run_id]
        print("python jobs/run_ccd.py " + " ".join(argv), flush=True)
        spec = importlib.util.spec_from_file_location("run_ccd_job", REPO / "jobs" / "run_ccd.py")
        run_ccd_job = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run_ccd_job)
        tee = Tee(sys.stdout)
        t0, w0 = time.perf_counter(), time.time()
        rc, failure = None, None
        try:
            with contextlib.redirect_stdout(tee):
                rc = run_ccd_job.main(argv)
        except Exception as exc:  # what the run committed before it failed is still read
            failure = exc
        entry["wall_s"] = time.perf_counter() - t0
        entry["gpu"] = self.gpu(w0, time.time())
        entry["logged_stage_s"] = logged_stage_seconds(tee.lines)
        entry["exit_code"] = rc
        store = RunStore.open(output_uri, run_id, DataConfig())
        entry["store"] = store.root
        stages = committed_stages(store)
        entry["stages"] = [{k: v for k, v in s.items() if k != "info"} | {
            "info": {k: v for k, v in s["info"].items() if k != "attempt"}} for s in stages]
        entry["final_committed"] = store.committed(FINAL_STAGE) is not None
        run_cfg = None
        config_path = store.path("config.yaml")
        if store.fs.get_file_info(config_path).size:
            import yaml

            run_cfg = yaml.safe_load(read_bytes(store.fs, config_path))
            entry["train_settings"] = {k: run_cfg["train"][k] for k in (
                "backbone", "image_size", "batch_size", "epochs")} | {
                "workers": run_cfg["compute"]["train_workers"],
                "use_gpu": run_cfg["compute"]["use_gpu"]}
        batch = (run_cfg["train"]["batch_size"] * run_cfg["compute"]["train_workers"]
                 if run_cfg else None)  # images per step, all workers together
        entry["train"] = train_rates(store, stages, batch)
        for row in entry["train"]:  # the GPU while the epochs between checkpoints ran
            if row["epoch_s"]:
                row["gpu"] = self.gpu(row["first_checkpoint_at"], row["last_checkpoint_at"])
        for stage in entry["stages"]:  # the GPU while a stage that timed itself ran
            if stage["seconds"] and stage["committed_at"]:
                stage["gpu"] = self.gpu(stage["committed_at"] - stage["seconds"],
                                        stage["committed_at"])
        if failure is not None:
            raise failure
        if rc != 0 or not entry["final_committed"]:
            raise RuntimeError(f"the embedded run did not complete: exit code {rc}, final stage "
                               f"committed: {entry['final_committed']}")

    # (2) the plain train_step loop at the embedded run's settings
    def train_plain(self) -> None:
        import torch
        from gpu_check import measure_training

        a = self.args
        s = self.result.get("embedded", {}).get("train_settings") or {
            "backbone": "resnet18", "image_size": 96, "batch_size": 16}
        device = torch.device(a.device)
        t0 = time.time()
        out = measure_training({"backbone": s["backbone"], "image_size": s["image_size"],
                                "train_batch": s["batch_size"], "steps": a.train_steps,
                                "warmup": a.train_warmup}, device)
        out["gpu"] = self.gpu(t0, time.time())
        self.result["train_plain"] = out
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the later phases' memory readings start clean

    # (3) phase-1 scoring throughput: the Ray Data pipeline, then the plain loop
    def throughput(self, workdir: Path) -> None:
        import pyarrow.dataset as pads
        import pyarrow.fs as pafs

        from ccd_ray.config import load_config
        from ccd_ray.demo.scenes import CLASS_NAMES
        from ccd_ray.io.packing import write_shards
        from ccd_ray.io.storage import RunStore
        from ccd_ray.stages.labeling import raw_stage, score_initial
        from ccd_ray.stages.score_cache import entry_files

        a = self.args
        fs = pafs.LocalFileSystem()
        entry = self.result["throughput"] = {}
        views_per_image = 1 + a.crops
        entry["settings"] = {
            "model": a.model, "pretrained": None, "image_size": a.image_size,
            "images": a.images, "tiny_images": a.tiny_images, "views_per_image": views_per_image,
            "teacher_batch_size": a.batch, "images_per_batch": a.images_per_batch,
            "images_per_shard": a.images_per_shard, "clip_actors": a.clip_actors,
            "gpus_per_actor": a.gpus_per_actor, "cpus_per_actor": a.cpus_per_actor}
        t = time.perf_counter()
        records = make_records(a.images, a.image_size)
        write_shards(records, fs, str(workdir / "corpus"), a.images_per_shard)
        write_shards(records[:a.tiny_images], fs, str(workdir / "corpus-tiny"),
                     a.images_per_shard)
        entry["corpus_s"] = time.perf_counter() - t
        plain_rows = [(r[0], r[1]) for r in records[:a.plain_images]]
        del records

        def config(run_id: str, corpus: str):
            return load_config(base={
                "run_id": run_id, "seed": 0, "classes": {"names": list(CLASS_NAMES)},
                "teacher": {"model": a.model, "pretrained": None, "batch_size": a.batch},
                "initial": {"random_crops": a.crops},
                # an output URI (so a score cache) per run: every run scores, none hits
                "data": {"corpus_uri": str(workdir / corpus),
                         "output_uri": str(workdir / "throughput-runs" / run_id)},
                "compute": {"clip_actors": a.clip_actors, "cpus_per_actor": a.cpus_per_actor,
                            "gpus_per_actor": a.gpus_per_actor, "device": a.device,
                            "images_per_batch": a.images_per_batch}})

        # the plain loop's teacher, made first: it also counts the FLOPs per view
        plain_cfg = config("plain", "corpus")
        teacher = make_teacher(plain_cfg, a.device)
        flops = a.flops_per_view
        entry["flops_per_view"] = flops
        entry["flops_source"] = "--flops-per-view"
        if flops is None:
            flops = entry["flops_per_view"] = count_flops(teacher)
            entry["flops_source"] = (f"torch.utils.flop_counter, Teacher.score on one "
                                     f"{a.model} view, 2 FLOPs per multiply-add, attention "
                                     "score products not counted")
        entry["peak_tflops"] = a.peak_tflops
        self.save()

        def pipeline(run_id: str, corpus: str) -> dict[str, Any]:
            cfg = config(run_id, corpus)
            store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
            w0, t0 = time.time(), time.perf_counter()
            folder = score_initial(cfg, store)
            wall = time.perf_counter() - t0
            marker = store.marker(raw_stage(0))
            table = pads.dataset(entry_files(fs, folder), filesystem=fs,
                                 format="parquet").to_table(columns=["views"])
            views = int(sum(v for v in table.column("views").to_pylist() if v))
            labeled = marker["labeled"]
            if marker["errors"] or views != labeled * views_per_image:
                raise RuntimeError(f"{run_id}: {marker['errors']} errors, {views} views for "
                                   f"{labeled} images")
            seconds = marker["seconds"]
            return {"images": labeled, "views": views, "stage_seconds": seconds,
                    "wall_s": wall, "images_per_s": rate(labeled, seconds),
                    "views_per_s": rate(views, seconds), "gpu": self.gpu(w0, time.time())}

        # The first run of a pipeline pays one-time costs that would not cancel (seen on the
        # CPU even after the embedded run: the tiny run slower than the full one): warm up.
        entry["pipeline_warmup"] = pipeline("warmup", "corpus-tiny")
        self.save()
        tiny = entry["pipeline_tiny"] = pipeline("tiny", "corpus-tiny")
        self.save()
        full = entry["pipeline_full"] = pipeline("full", "corpus")
        extra_images = full["images"] - tiny["images"]
        extra_s = full["stage_seconds"] - tiny["stage_seconds"]
        steady = {"images": extra_images, "seconds": extra_s,
                  "images_per_s": rate(extra_images, extra_s),
                  "views_per_s": rate(full["views"] - tiny["views"], extra_s)}
        steady["fixed_cost_s"] = (None if steady["images_per_s"] is None else
                                  tiny["stage_seconds"] - tiny["images"] / steady["images_per_s"])
        entry["pipeline_steady"] = steady
        self.save()
        entry["plain"] = self.plain_loop(plain_cfg, plain_rows, teacher)
        plain = entry["plain"]
        for name in ("pipeline_warmup", "pipeline_tiny", "pipeline_full", "pipeline_steady",
                     "plain"):
            if name in entry:
                entry[name]["pct_of_peak"] = flop_share(entry[name]["views_per_s"], flops,
                                                        a.peak_tflops)
        entry["ratio_steady_over_plain"] = (None if steady["images_per_s"] is None
                                            else steady["images_per_s"] / plain["images_per_s"])
        entry["ratio_full_over_plain"] = full["images_per_s"] / plain["images_per_s"]

    def plain_loop(self, cfg, rows: list[tuple[str, bytes]], teacher) -> dict[str, Any]:
        """The pipeline's per-batch work in this process: decode + initial_scores."""
        import numpy as np
        import torch
        from PIL import Image

        from ccd_ray.method.scoring import initial_scores

        device = teacher.device

        def decode(batch):
            return [torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"),
                                              dtype=np.uint8)).permute(2, 0, 1).contiguous()
                    for _, data in batch]

        step = cfg.compute.images_per_batch
        batches = [rows[i:i + step] for i in range(0, len(rows), step)]
        warm = batches[0]
        initial_scores(teacher, decode(warm), [i for i, _ in warm], cfg)  # untimed warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        teacher.forward_passes = 0
        views = 0
        w0, t0 = time.time(), time.perf_counter()
        for batch in batches:
            scores = initial_scores(teacher, decode(batch), [i for i, _ in batch], cfg)
            views += len(batch) * (1 + cfg.initial.random_crops)
            if not torch.isfinite(scores).all():
                raise RuntimeError("the plain loop produced non-finite scores")
        seconds = time.perf_counter() - t0  # scores come back to the host: synchronised
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        return {"images": len(rows), "views": views, "seconds": seconds,
                "images_per_s": rate(len(rows), seconds), "views_per_s": rate(views, seconds),
                "forward_passes": teacher.forward_passes, "torch_threads": torch.get_num_threads(),
                "torch_max_memory_allocated_gib": peak, "gpu": self.gpu(w0, time.time())}


# ---- report ---------------------------------------------------------------------------------

def report(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [f"# GPU Ray check ({s['device']}): {s['device_name']}, torch {s['torch']} "
             f"(CUDA {s['cuda']}), Ray {s['ray']}, Python {s['python']}, {s['cpus']} CPUs; "
             f"{fmt(r.get('wall_s'))} s", ""]
    lines += ["| measurement | setting | result | GPU util mean/max, memory max |",
              "| --- | --- | --- | --- |"]

    def gpu(d: dict | None) -> str:
        g = (d or {}).get("gpu")
        if not g:
            return "-"
        return (f"{g['util_mean_pct']:.0f}% / {g['util_max_pct']:.0f}%, "
                f"{g['memory_used_max_gib']:.1f} GiB")

    e = r.get("embedded")
    if e:
        done = sum(1 for x in e.get("stages", []))
        lines.append(f"| (1) embedded default end to end (`jobs/run_ccd.py`) | corpus "
                     f"{e['corpus']}, {' '.join(o for o in e['overrides'] if 'compute' in o)} | "
                     f"{fmt(e.get('wall_s'))} s, {done} stages committed, final committed: "
                     f"{e.get('final_committed')} (world made first in "
                     f"{fmt(e.get('prepare_s'))} s) | {gpu(e)} |")
        logged = e.get("logged_stage_s", {})
        for st in e.get("stages", []):
            info = st["info"]
            detail = ", ".join(f"{k} {info[k]}" for k in ("images", "labeled", "errors", "epochs")
                               if k in info)
            lines.append(f"| &nbsp; stage `{st['stage']}` | {detail} | committed "
                         f"{fmt(st['seconds'], 2)} s; logged {fmt(logged.get(st['stage']))} s | "
                         f"{gpu(st)} |")
        ts = e.get("train_settings", {})
        for t in e.get("train", []):
            lines.append(f"| (1) Ray Train step rate, `{t['stage']}` | {ts.get('backbone')} "
                         f"{ts.get('image_size')} px, batch {ts.get('batch_size')}, "
                         f"{ts.get('workers')} worker(s), use_gpu={ts.get('use_gpu')}; "
                         f"{t['batches_per_epoch']} batches/epoch, epoch {fmt(t['epoch_s'], 2)} s "
                         f"between checkpoints | {fmt(t['steps_per_s'], 2)} steps/s, "
                         f"{fmt(t['images_per_s'])} images/s | {gpu(t)} |")
    tp = r.get("train_plain")
    if tp:
        lines.append(f"| (2) plain `train_step` loop, no Ray | {tp['backbone']} "
                     f"{tp['image_size']} px, batch {tp['batch']}, {tp['steps']} steps | "
                     f"{fmt(tp['steps_per_s'], 2)} steps/s, {fmt(tp['images_per_s'])} images/s, "
                     f"peak torch memory {fmt(tp.get('peak_gpu_memory_gib'), 2)} GiB | "
                     f"{gpu(tp)} |")
    th = r.get("throughput")
    if th:
        st = th["settings"]
        setting = (f"{st['model']} random weights, {st['image_size']} px, "
                   f"{st['views_per_image']} views/image, batch {st['teacher_batch_size']}")

        def row(name: str, key: str, what: str) -> None:
            d = th.get(key)
            if not d:
                return
            seconds = d.get("stage_seconds", d.get("seconds"))
            lines.append(f"| {name} | {what} | {fmt(d.get('images_per_s'))} images/s, "
                         f"{fmt(d.get('views_per_s'))} views/s ({d.get('images')} images in "
                         f"{fmt(seconds, 2)} s); {fmt(d.get('pct_of_peak'), 2)}% of peak | "
                         f"{gpu(d)} |")

        pool = (f"{st['clip_actors']} actor(s) x {st['gpus_per_actor']:g} GPU, "
                f"{st['cpus_per_actor']:g} CPU")
        row("(3) pipeline warm-up, tiny corpus", "pipeline_warmup", f"{setting}; in no ratio")
        row("(3) pipeline, tiny corpus", "pipeline_tiny",
            f"all of `score_initial` (committed seconds); {pool}")
        row("(3) pipeline, full corpus", "pipeline_full",
            f"all of `score_initial` (committed seconds); {pool}")
        row("**(3) pipeline, steady state**", "pipeline_steady",
            f"full minus tiny; fixed cost {fmt(th.get('pipeline_steady', {}).get('fixed_cost_s'))}"
            " s")
        p = th.get("plain")
        row("**(3) plain in-process loop**", "plain",
            f"PIL decode + `initial_scores`, same device, {p and p['torch_threads']} torch "
            f"threads; peak torch memory "
            f"{fmt(p and p.get('torch_max_memory_allocated_gib'), 2)} GiB")
        lines.append(f"| (3) pipeline / plain | steady state; total | "
                     f"{fmt(th.get('ratio_steady_over_plain'), 2)}x; "
                     f"{fmt(th.get('ratio_full_over_plain'), 2)}x | |")
        lines += ["", f"- FLOPs per view: {th['flops_per_view'] / 1e9:.3f} GFLOP "
                      f"({th['flops_source']}); % of peak = views/s x that / "
                      f"{th['peak_tflops']:g} TFLOP/s (--peak-tflops: dense bf16 measured on an "
                      "H200; the teacher runs fp16 autocast, same tensor-core peak)"]
    lines.append(f"- GPU sampling: {s.get('gpu_sampler') or 'none'} every "
                 f"{s['sample_interval_s']} s; memory = the most in use on the device (all "
                 "processes) during the row's window")
    if r["errors"]:
        lines.append("- FAILED phases: " + "; ".join(f"{k}: {v.splitlines()[0]}"
                                                     for k, v in r["errors"].items()))
    if s["device"] == "cpu":
        lines.append("- CPU smoke run at tiny sizes: these numbers say nothing about GPU speed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # the embedded default's corpus goes to outputs/_embedded here
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"  # read when ray.data is imported
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    install = ensure_ray(args.wheels)

    import ray
    import torch

    modules = {}
    for name in ("ray.data", "ray.train", "open_clip", "torchvision", "pyarrow", "yaml",
                 "matplotlib", "PIL"):
        try:
            module = importlib.import_module(name)
            top = sys.modules[name.split(".")[0]]
            modules[name] = getattr(module, "__version__", getattr(top, "__version__", "?"))
        except Exception as exc:  # noqa: BLE001 - reported, and the phase needing it fails
            modules[name] = f"MISSING: {type(exc).__name__}: {exc}"
    print("modules: " + ", ".join(f"{k} {v}" for k, v in modules.items()), flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"--device cuda, but torch {torch.__version__} sees no CUDA device; "
              "--device cpu runs the CPU smoke test", file=sys.stderr)
        return 2
    check = Check(args)
    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    check.result["settings"] = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if gpus else "cpu (smoke run)",
        "torch": torch.__version__, "cuda": torch.version.cuda, "ray": ray.__version__,
        "python": platform.python_version(), "cpus": cpus, "gpus": gpus, "ray_install": install,
        "modules": modules, "sample_interval_s": args.sample_interval, "args": vars(args)}
    if args.device == "cuda":
        check.sampler = GpuSampler(args.sample_interval).start()
        check.result["settings"]["gpu_sampler"] = check.sampler.source
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-ray-check-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        init = {"address": "local", "num_cpus": args.ray_cpus or max(4, 2 * cpus),
                "num_gpus": gpus, "include_dashboard": False}
        if args.object_store_gib:
            init["object_store_memory"] = int(args.object_store_gib * 2**30)
        ray.init(**init)
        _quiet_ray_data()
        check.result["settings"]["ray_init"] = {
            **init, "seconds": time.perf_counter() - t, "resources": ray.cluster_resources(),
            # where this instance logs, for the wrapper to show Ray's errors after a failure
            "logs_dir": ray._private.worker._global_node.get_logs_dir_path()}
        check.save()
        if not args.skip_embedded:
            check.phase("(1) embedded default end to end", check.embedded, workdir)
            check.phase("(2) plain train_step loop", check.train_plain)
        if not args.skip_throughput:
            check.phase("(3) phase-1 scoring throughput", check.throughput, workdir)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if check.sampler is not None:
            check.sampler.stop()
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    check.save()
    print("\n" + report(check.result), flush=True)
    if args.out:
        print(f"\nwrote {args.out}")
    return 1 if check.result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
