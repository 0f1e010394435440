"""How a run's cost grows with the corpus: the same job at several synthetic corpus sizes, per
stage, with a fit of fixed + per-image cost, and a driver-side label-derivation micro-benchmark.

For each size in --sizes, a synthetic corpus of that many 96 px scenes is written as Parquet
shards (ccd_ray.io.packing, as the embedded default makes its corpus) and
`python jobs/run_ccd.py --config <size's config> --run-id scale-<N>` runs in a subprocess with
its own output URI (so its own score cache: every run scores everything). The job: the
embedded default's config (ccd_ray/configs/default.yaml) with its pretrained synthetic
teacher, changed as JOB_OVERRIDES says (2 random crops, one relabel round with 2 views a box,
resnet18 at 64 px, 2 epochs, one teacher actor, one classifier actor, one Train worker).

Per stage of each run (the lines ccd_ray/stages/pipeline.py stage_log writes into the run's
log file, `<output>/<run>/logs/`: `[ccd-ray] <stage>: done in S s ...` and the time-stamped
`<stage>: started`; a stage spans S seconds from its start):
  seconds         from the done line;
  driver RSS      the child process's VmRSS, sampled every --interval s while the stage ran
                  (the run's overall driver peak is its VmHWM, the kernel's own peak);
  worker PSS      the summed Pss (/proc/<pid>/smaps_rollup) of the child's descendant
                  processes whose command line is a Ray worker (`ray::...` or
                  default_worker.py): actors, tasks and Train workers; Ray's own daemons
                  (raylet, GCS, dashboard) are summed apart;
  bytes written   the files under the run's output URI, each counted in the stage folder
                  (the folder holding `_COMMITTED.json`) it lies in; a score-cache entry in
                  the raw stage whose marker names it; other files under their top folder
                  (Ray Train's own storage holds the checkpoints).
Between stage lines the driver derives labels and starts/stops executions; that time is the
run's wall time minus the stages' sum ("outside stages").

The fit is least squares of seconds = fixed + per_image * N over the sizes run (at least two),
for the whole run and per stage, and of the driver's peak RSS and the bytes written likewise.
Extrapolation to 10^6 and 10^7 images assumes that fit holds: the same machine and settings
(one teacher actor, one Train worker), linear stages, no stage hitting a memory or disk
limit; with more workers the per-image term divides, the fixed term does not.

The micro-benchmark (--micro-rows x --micro-classes, default 10^6 x 80) times on the driver,
on synthetic scores: score_cache.read_pooled of a written score-cache entry of
--micro-views views an image (the round's raw scores as labeling.read_raw reads them),
labels.initial_bias, labels.round_labels (round 0, and round 1 fused with round 0),
labeling.read_scores of a labels folder, and rows.labels_table (the table
commit_labels writes) on --micro-table-rows rows, scaled linearly to --micro-rows. For each,
wall and CPU seconds (after an untimed warm-up on 1,000 rows, and after touching
--micro-warm-gb GB of memory once: a fresh virtual machine's first use of a page costs more
than the step) and the peak RSS above the RSS before (VmHWM reset through
/proc/self/clear_refs).

Usage:
  python benchmarks/scale.py --sizes 1000,4000,16000 [--workdir DIR] [--json out.json]
  python benchmarks/scale.py --sizes 300,600            # a quick check of the script
  python benchmarks/scale.py --sizes '' --micro-rows 1000000   # the micro-benchmark only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = "_COMMITTED.json"
JOB_OVERRIDES = {
    "initial": {"random_crops": 2},
    "relabel": {"rounds": 1, "views_per_box": 2},
    "train": {"backbone": "resnet18", "image_size": 64, "epochs": 2, "warmup_epochs": 1},
    "compute": {"clip_actors": 1, "classifier_actors": 1, "train_workers": 1},
}
STAGE_LINE = re.compile(r"\[ccd-ray\] (\S+): done in ([0-9.]+) s")
START_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*?: (\S+): started$")
OUTSIDE = "(outside stages)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,4000,16000",
                   help="comma-separated corpus sizes (images); '' runs no job")
    p.add_argument("--workdir", default=None,
                   help="corpora, configs and run outputs (default: a temp dir, removed after)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds a run may take")
    p.add_argument("--micro-rows", type=int, default=1_000_000,
                   help="images of the label-derivation micro-benchmark (0: skip it)")
    p.add_argument("--micro-classes", type=int, default=80)
    p.add_argument("--micro-views", type=int, default=2, help="views an image in its entry")
    p.add_argument("--micro-warm-gb", type=float, default=4.0,
                   help="GB of memory touched once before the micro-benchmark's timing: on a "
                   "freshly booted virtual machine a page's first use costs ~2.4 ms per MB, "
                   "which would otherwise land in the timed steps (0: do not)")
    p.add_argument("--micro-table-rows", type=int, default=100_000,
                   help="rows labels_table is timed on (it is scaled to --micro-rows)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every size's job, after JOB_OVERRIDES "
                        "(repeatable; as jobs/run_ccd.py --set)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(n < 10 for n in args.sizes):
        p.error("every size must be at least 10 images")
    if len(set(args.sizes)) != len(args.sizes):
        p.error("--sizes must not repeat a size")
    if args.micro_rows < 0 or args.micro_classes < 1 or args.micro_views < 1:
        p.error("--micro-rows must be >= 0, --micro-classes and --micro-views >= 1")
    if args.micro_rows and not 0 < args.micro_table_rows <= args.micro_rows:
        p.error("--micro-table-rows must be in 1..--micro-rows")
    return args


# ---- /proc sampling ----

def _status_kb(pid: int | str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0  # the process ended between listing and reading


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _is_ray_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return cmdline.startswith(b"ray::") or b"default_worker.py" in cmdline


class Sampler(threading.Thread):
    """Samples the driver's RSS and its descendants' PSS every interval seconds: a timeline
    of (time, driver RSS kB, Ray workers' PSS kB, Ray daemons' PSS kB)."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int, int]] = []
        self.hwm_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            rss = _status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            self.hwm_kb = max(self.hwm_kb, _status_kb(self.pid, "VmHWM") or 0)
            workers = daemons = 0
            for child in _descendants(self.pid):
                if _is_ray_worker(child):
                    workers += _pss_kb(child)
                else:
                    daemons += _pss_kb(child)
            self.samples.append((now, rss, workers, daemons))
            self.stop.wait(self.interval)


def peaks_by_stage(samples: list[tuple[float, int, int, int]],
                   spans: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Each stage's largest samples, a sample filed under the stage whose span (wall-clock
    start, end) holds it, else under OUTSIDE."""
    peaks: dict[str, dict[str, float]] = {}
    for when, rss, workers, daemons in samples:
        stage = next((name for name, start, end in spans if start <= when <= end), OUTSIDE)
        peak = peaks.setdefault(stage, {"driver_rss_mb": 0.0, "worker_pss_mb": 0.0,
                                        "ray_daemons_pss_mb": 0.0, "samples": 0})
        peak["driver_rss_mb"] = max(peak["driver_rss_mb"], rss / 1024)
        peak["worker_pss_mb"] = max(peak["worker_pss_mb"], workers / 1024)
        peak["ray_daemons_pss_mb"] = max(peak["ray_daemons_pss_mb"], daemons / 1024)
        peak["samples"] += 1
    return peaks


# ---- one run ----

def _deep_update(target: dict, source: dict) -> dict:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
    return target


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bytes_by_stage(output: Path, run_id: str) -> dict[str, int]:
    """Bytes of every file under output, in the stage folder it lies in (run-relative name);
    a score-cache entry under the raw stage whose marker names it."""
    run = output / run_id
    entry_stage = {}
    for marker in run.rglob(MARKER):
        entry = json.loads(marker.read_text()).get("cache_entry")
        if entry:
            entry_stage[entry] = marker.parent.relative_to(run).as_posix()
    totals: dict[str, int] = {}
    for path in output.rglob("*"):
        if not path.is_file():
            continue
        # outside every stage folder: filed under its top folder (run logs, Ray Train's own
        # storage with the checkpoints, the run's config)
        inside = path.relative_to(run) if path.is_relative_to(run) else path.relative_to(output)
        stage = f"(no stage) {inside.parts[0]}"
        if inside.parts[0] == "score-cache" and len(inside.parts) > 2:
            # an entry's files (its shards' stages and its own commit): the raw stage's bytes
            entry = inside.parts[1]
            stage = entry_stage.get(entry, f"score-cache/{entry}")
        else:
            for parent in path.parents:
                if parent == output:
                    break
                if (parent / MARKER).is_file():
                    if parent.is_relative_to(run):
                        stage = parent.relative_to(run).as_posix()
                    break
        totals[stage] = totals.get(stage, 0) + path.stat().st_size
    return totals


def stage_times(log_folder: Path) -> tuple[dict[str, float], dict[str, float]]:
    """({stage: seconds} from the `[ccd-ray] <stage>: done in S s` lines, {stage: wall-clock
    start} from the time-stamped `<stage>: started` lines) of the run's log file, which
    stage_log writes both into (the console copy of the done lines may be held back)."""
    seconds, starts = {}, {}
    for path in sorted(log_folder.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            done = STAGE_LINE.search(line)
            if done:
                seconds[done.group(1)] = float(done.group(2))
            started = START_LINE.match(line)
            if started:
                stamp = time.strptime(started.group(1), "%Y-%m-%d %H:%M:%S")  # local time
                starts[started.group(3)] = time.mktime(stamp) + int(started.group(2)) / 1000
    return seconds, starts


def job_config(teacher: str) -> dict[str, Any]:
    """The config every size runs (its corpus and output added by run_size): the embedded
    default's YAML, its classes, the given teacher spec, JOB_OVERRIDES."""
    import yaml

    from ccd_ray.config import DEFAULT_CONFIG
    from ccd_ray.demo import embedded

    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    _deep_update(base, {"classes": {"names": list(embedded.CLASS_NAMES)},
                        "teacher": {"model": teacher}})
    return _deep_update(base, JOB_OVERRIDES)


def run_size(n: int, workdir: Path, base_config: dict, interval: float, timeout: float,
             sets: list[str] = ()) -> dict[str, Any]:
    import pyarrow.fs as pafs
    import yaml

    from ccd_ray.demo import embedded
    from ccd_ray.io.packing import synthetic_records, write_shards

    corpus = workdir / f"corpus-{n}"
    if not corpus.is_dir():
        partial = workdir / f"corpus-{n}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_shards(synthetic_records(n, embedded.CORPUS_SEED, embedded.IMAGE_SIDE,
                                       embedded.MAX_OBJECTS, embedded.SCENE_SCALE),
                     pafs.LocalFileSystem(), str(partial), embedded.SHARD_SIZE)
        partial.rename(corpus)
    output, run_id = workdir / f"out-{n}", f"scale-{n}"
    shutil.rmtree(output, ignore_errors=True)  # a fresh run, not a resumed one
    config = _deep_update(json.loads(json.dumps(base_config)), {
        "data": {"corpus_uri": str(corpus), "output_uri": str(output)}})
    config_path = workdir / f"config-{n}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = workdir / f"run-{n}.log"
    command = [sys.executable, str(REPO / "jobs" / "run_ccd.py"), "--config", str(config_path),
               "--run-id", run_id, *(arg for item in sets for arg in ("--set", item))]
    started = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        sampler = Sampler(child.pid, interval)
        sampler.start()
        for line in child.stdout:
            log.write(line)
        try:
            rc = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            rc = child.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - started
    if rc != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"run of {n} images exited {rc}; log {log_path}:\n" + "\n".join(tail))
    written = bytes_by_stage(output, run_id)
    stages, starts = stage_times(output / run_id / "logs")
    spans = [(name, starts[name], starts[name] + seconds) for name, seconds in stages.items()
             if name in starts]
    return {"images": n, "seconds": wall, "rc": rc, "stage_order": list(stages),
            "stages_without_start_line": sorted(set(stages) - set(starts)),
            "stage_seconds": stages, "outside_stages_seconds": wall - sum(stages.values()),
            "driver_peak_rss_mb": sampler.hwm_kb / 1024,
            "peaks": peaks_by_stage(sampler.samples, spans), "spans": spans,
            "samples": sampler.samples,
            "bytes_written": written, "bytes_written_total": sum(written.values()),
            "corpus_bytes": _folder_bytes(corpus), "log": str(log_path)}


# ---- fit ----

def linear_fit(sizes: list[int], values: list[float]) -> dict[str, float] | None:
    """Least squares value = fixed + per_image * N (None for fewer than two sizes)."""
    import numpy as np

    if len(sizes) < 2:
        return None
    per_image, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    residual = np.asarray(values) - (fixed + per_image * np.asarray(sizes))
    return {"fixed": float(fixed), "per_image": float(per_image),
            "max_abs_residual": float(np.abs(residual).max()),
            "at_1e6": float(fixed + per_image * 1e6), "at_1e7": float(fixed + per_image * 1e7)}


def fits(runs: list[dict[str, Any]]) -> dict[str, Any]:
    sizes = [r["images"] for r in runs]
    stage_names = [s for s in runs[-1]["stage_order"] if all(s in r["stage_seconds"]
                                                             for r in runs)]
    return {
        "seconds": linear_fit(sizes, [r["seconds"] for r in runs]),
        "stage_seconds": {s: linear_fit(sizes, [r["stage_seconds"][s] for r in runs])
                          for s in stage_names},
        "outside_stages_seconds": linear_fit(sizes, [r["outside_stages_seconds"]
                                                     for r in runs]),
        "driver_peak_rss_mb": linear_fit(sizes, [r["driver_peak_rss_mb"] for r in runs]),
        "bytes_written": linear_fit(sizes, [r["bytes_written_total"] for r in runs]),
        "corpus_bytes": linear_fit(sizes, [r["corpus_bytes"] for r in runs]),
    }


# ---- micro-benchmark ----

class _PeakRss:
    """Wall and CPU seconds of a with-block, and this process's peak RSS above its RSS at the
    start (CPU seconds depend less on other load than wall seconds)."""

    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.before_kb = _status_kb("self", "VmRSS")
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started  # all threads
        self.peak_mb = (_status_kb("self", "VmHWM") - self.before_kb) / 1024
        return False

    def figures(self) -> dict[str, float]:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "peak_rss_mb": self.peak_mb}


def _write_entry(folder: Path, ids, classes: int, views: int, rng) -> None:
    """A score-cache entry as the teacher actors write it (stages.actors.views_table), 100,000
    rows a file, uniform random scores."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ccd_ray.stages.actors import views_table

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for part, start in enumerate(range(0, len(ids), 100_000)):
        n = min(100_000, len(ids) - start)
        sides = np.full(n, 96, np.int32)
        table = views_table(pa.array(ids[start:start + n]), np.full(n, views, np.int32),
                            sides, sides, np.zeros((n * views, 4), np.int32),
                            rng.random((n * views, classes), dtype=np.float32),
                            np.ones(n, np.int64), pa.nulls(n, pa.string()),
                            pa.nulls(n, pa.string()))
        pq.write_table(table, folder / f"part-{part:05d}.parquet")


def _derivation_steps(entry: Path, labels_dir: Path, classes: int, table_rows: int
                      ) -> dict[str, Any]:
    """Each driver-side step on the entry, timed, with its peak RSS above its start."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.fs as pafs
    import torch

    from ccd_ray.method import labels as label_ops
    from ccd_ray.method.rows import labels_table
    from ccd_ray.stages import labeling, score_cache

    fs, steps = pafs.LocalFileSystem(), {}
    with _PeakRss() as m:
        ids, raw, _ = score_cache.read_pooled(fs, str(entry), classes, "max")
    steps["read_pooled"] = m.figures()
    raw_t = torch.from_numpy(raw)
    with _PeakRss() as m:
        bias, _ = label_ops.initial_bias(raw_t, 0.5, 2.5, "count")
    steps["initial_bias"] = m.figures()
    with _PeakRss() as m:
        round0 = label_ops.round_labels(raw_t, None, bias, 1.0, 0.4, "logit_shift")
        round1 = label_ops.round_labels(raw_t, round0, bias, 1.0, 0.4, "logit_shift")
    steps["round_labels_x2"] = m.figures()
    labels = round1.numpy()
    del round0, raw_t, raw
    # a labels folder as commit_labels writes it, built without labels_table (timed apart)
    table = pa.table({"image_id": pa.array(ids), "scores": pa.ListArray.from_arrays(
        pa.array(np.arange(0, labels.size + 1, classes, dtype=np.int32)),
        pa.array(labels.ravel()))})
    shutil.rmtree(labels_dir, ignore_errors=True)
    labeling.write_parquet_rows(fs, str(labels_dir), table)
    del table
    with _PeakRss() as m:
        read_ids, read = labeling.read_scores(fs, str(labels_dir))
    steps["read_scores"] = m.figures()
    if not np.array_equal(read_ids, ids) or not np.array_equal(read, labels):
        raise RuntimeError("read_scores did not return the labels written")
    names = [f"class-{c}" for c in range(classes)]
    rows = min(table_rows, len(ids))
    with _PeakRss() as m:
        labels_table(ids[:rows], labels[:rows], names, 0.5)
    steps["labels_table"] = {"rows_timed": rows, "seconds_timed": m.seconds,
                             "peak_rss_mb_timed": m.peak_mb,
                             "seconds": m.seconds * len(ids) / rows,
                             "cpu_seconds": m.cpu_seconds * len(ids) / rows}
    derivation = ("read_pooled", "initial_bias", "round_labels_x2")
    steps["derivation_seconds"] = sum(steps[k]["seconds"] for k in derivation)
    steps["derivation_cpu_seconds"] = sum(steps[k]["cpu_seconds"] for k in derivation)
    return steps


def micro_benchmark(rows: int, classes: int, views: int, table_rows: int, workdir: Path,
                    warm_gb: float = 0.0) -> dict[str, Any]:
    import numpy as np

    if warm_gb > 0:  # one write per page, then freed: the guest's pages are backed from now on
        np.ones(int(warm_gb * 2**30) // 8).sum()
    rng = np.random.default_rng(0)
    ids = np.char.add("img-", np.char.zfill(np.arange(rows).astype(str), 9))
    entry, labels_dir = workdir / "micro-entry", workdir / "micro-labels"
    try:
        # untimed warm-up on 1,000 rows: the first calls import and initialise pyarrow's
        # dataset machinery and torch's kernels, a fixed cost no run pays per image
        _write_entry(entry, ids[:1000], classes, views, rng)
        _derivation_steps(entry, labels_dir, classes, min(table_rows, 1000))
        _write_entry(entry, ids, classes, views, rng)
        result = {"rows": rows, "classes": classes, "views": views,
                  "matrix_mb": rows * classes * 4 / 2**20, "entry_bytes": _folder_bytes(entry)}
        result.update(_derivation_steps(entry, labels_dir, classes, table_rows))
    finally:
        shutil.rmtree(entry, ignore_errors=True)
        shutil.rmtree(labels_dir, ignore_errors=True)
    return result


# ---- report ----

def _mb(value: float) -> str:
    return f"{value:,.0f}"


def report(result: dict[str, Any]) -> str:
    lines = [f"# scale benchmark ({result['host_cpus']} CPUs, load average before "
             f"{result['loadavg_before']:.1f}, after {result['loadavg_after']:.1f})", ""]
    runs = result["runs"]
    if runs:
        lines += ["| images | wall s | outside stages s | driver peak RSS MB | "
                  "max worker PSS MB | bytes written MB | corpus MB |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in runs:
            worker = max(p["worker_pss_mb"] for p in r["peaks"].values())
            lines.append(f"| {r['images']} | {r['seconds']:.1f} | "
                         f"{r['outside_stages_seconds']:.1f} | {_mb(r['driver_peak_rss_mb'])} | "
                         f"{_mb(worker)} | {r['bytes_written_total'] / 2**20:,.1f} | "
                         f"{r['corpus_bytes'] / 2**20:,.1f} |")
        lines += ["", "Per stage (seconds / driver RSS MB / worker PSS MB / MB written), "
                  "one column per size:", "",
                  "| stage | " + " | ".join(str(r["images"]) for r in runs) + " |",
                  "| --- | " + " | ".join("---:" for _ in runs) + " |"]
        for stage in runs[-1]["stage_order"] + [OUTSIDE]:
            cells = []
            for r in runs:
                peak = r["peaks"].get(stage)  # none: the stage was shorter than a sample
                seconds = (r["stage_seconds"].get(stage) if stage != OUTSIDE
                           else r["outside_stages_seconds"])
                memory = (f"{_mb(peak['driver_rss_mb'])} / {_mb(peak['worker_pss_mb'])}"
                          if peak else "- / -")
                cells.append(f"{'-' if seconds is None else f'{seconds:.1f}'} / {memory} / "
                             f"{r['bytes_written'].get(stage, 0) / 2**20:,.1f}")
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        stored = sorted({k for r in runs for k in r["bytes_written"]} - set(
            runs[-1]["stage_order"]))
        for key in stored:  # written outside the stages' folders
            lines.append(f"| {key} | " + " | ".join(
                f"- / - / - / {r['bytes_written'].get(key, 0) / 2**20:,.1f}" for r in runs) + " |")
        fit = result["fit"]
        if fit and fit["seconds"] and fit["seconds"]["per_image"] <= 0:
            lines += ["", "- fit: NOT MEANINGFUL, the larger corpus ran faster (the machine's load "
                      "changed between the runs); rerun on a quiet machine. Numbers as fitted:"]
        elif fit and len(runs) == 2:
            lines += ["", "- fit through two sizes: exact by construction (no residual to judge "
                      "linearity; run three or more sizes)"]
        if fit and fit["seconds"]:
            s = fit["seconds"]
            lines += ["", f"- fit, whole run: {s['fixed']:.1f} s fixed + "
                      f"{1000 * s['per_image']:.1f} ms an image (largest residual "
                      f"{s['max_abs_residual']:.1f} s); at 10^6 images {s['at_1e6'] / 3600:,.1f} h,"
                      f" at 10^7 {s['at_1e7'] / 3600:,.0f} h on this machine"]
            for stage, f in fit["stage_seconds"].items():
                lines.append(f"  - {stage}: {f['fixed']:.1f} s + {1000 * f['per_image']:.2f} "
                             f"ms/image")
            o = fit["outside_stages_seconds"]
            lines.append(f"  - {OUTSIDE}: {o['fixed']:.1f} s + {1000 * o['per_image']:.2f} "
                         f"ms/image")
            d, b, c = fit["driver_peak_rss_mb"], fit["bytes_written"], fit["corpus_bytes"]
            lines += [f"- driver peak RSS: {d['fixed']:,.0f} MB + {1000 * d['per_image']:.2f} "
                      f"MB per 1000 images -> {d['at_1e6']:,.0f} MB at 10^6, "
                      f"{d['at_1e7']:,.0f} MB at 10^7",
                      f"- bytes written: {b['per_image'] / 1024:.1f} KB an image "
                      f"({b['per_image'] / c['per_image']:.2f}x the corpus's "
                      f"{c['per_image'] / 1024:.1f} KB) -> {b['at_1e6'] / 2**30:,.0f} GB at "
                      f"10^6, {b['at_1e7'] / 2**30:,.0f} GB at 10^7"]
    micro = result.get("micro")
    if micro:
        lines += ["", f"Label derivation on the driver, {micro['rows']:,} x {micro['classes']} "
                  f"({micro['matrix_mb']:,.0f} MB float32; the entry holds {micro['views']} views "
                  f"an image, {micro['entry_bytes'] / 2**20:,.0f} MB of Parquet):", "",
                  "| step | wall s | CPU s | peak RSS above start MB |",
                  "| --- | ---: | ---: | ---: |"]
        for key in ("read_pooled", "initial_bias", "round_labels_x2", "read_scores"):
            lines.append(f"| {key} | {micro[key]['seconds']:.2f} | "
                         f"{micro[key]['cpu_seconds']:.2f} | {_mb(micro[key]['peak_rss_mb'])} |")
        t = micro["labels_table"]
        lines += [f"| labels_table ({t['rows_timed']:,} rows timed, scaled) | "
                  f"{t['seconds']:.1f} | {t['cpu_seconds']:.1f} | "
                  f"{_mb(t['peak_rss_mb_timed'])} (at the rows timed) |",
                  "", f"- derivation (read_pooled + initial_bias + round_labels x2): "
                  f"{micro['derivation_seconds']:.2f} s wall, "
                  f"{micro['derivation_cpu_seconds']:.2f} s CPU (target: under 2 s)"]
    lines.append(f"- benchmark total {result['total_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    from ccd_ray.demo import embedded
    from ccd_ray.demo.pretrain_teacher import pretrained_teacher

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ccd-scale-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"sizes": args.sizes, "job_overrides": JOB_OVERRIDES,
                              "job_sets": args.sets,
                              "host_cpus": os.cpu_count(), "loadavg_before": load_before,
                              "runs": [], "fit": None, "micro": None}
    try:
        if args.sizes:
            base = job_config(pretrained_teacher(embedded.default_cache_dir(),
                                                 embedded.TEACHER_SPEC))
            for n in sorted(args.sizes):
                print(f"[scale] running {n} images ...", flush=True)
                run = run_size(n, workdir, base, args.interval, args.timeout, args.sets)
                print(f"[scale] {n} images: {run['seconds']:.1f} s, driver peak RSS "
                      f"{run['driver_peak_rss_mb']:,.0f} MB", flush=True)
                result["runs"].append(run)
            result["fit"] = fits(result["runs"]) if len(result["runs"]) > 1 else None
        if args.micro_rows:
            print(f"[scale] micro-benchmark {args.micro_rows:,} x {args.micro_classes} ...",
                  flush=True)
            result["micro"] = micro_benchmark(args.micro_rows, args.micro_classes,
                                              args.micro_views, args.micro_table_rows, workdir,
                                              args.micro_warm_gb)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["loadavg_after"] = os.getloadavg()[0]
    result["total_seconds"] = time.perf_counter() - started
    print(report(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json_path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
