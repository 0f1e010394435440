"""Label quality on SynthScenes: the final labels and the classifier of the embedded default's
job against the teacher's zero-shot labels and a supervised bound, paired per seed.

    python benchmarks/quality.py                                # 3 seeds, the embedded default
    python benchmarks/quality.py --seeds 0 --images 48 --set train.epochs=2 \
        --set train.warmup_epochs=1 --tag smoke --out outputs/quality-smoke   # a short check
    python benchmarks/quality.py --set labels.final_source=pseudo --tag pseudo   # a variant

For each seed s, a synthetic corpus is made from seed s (the embedded default's scenes, --images
of them) and two runs of `pipeline.run_ccd` (the code path of jobs/run_ccd.py) go on one local
Ray instance, with the embedded default's config, its pretrained synthetic teacher and student
backbone, `seed=s` and the --set values:
  ccd    the job as configured, run id `quality-<tag>-ccd-s<seed>`;
  bound  the same with `train.targets=ground_truth` (the classifier trained on the corpus's own
         labels on the same schedule), run id `quality-<tag>-bound-s<seed>`.
Rerunning the command resumes: the same run ids, so the product's resume skips every committed
stage (a finished run is read back).

From each run's final metrics.json, per seed: the final labels' gain over the teacher's
zero-shot labels on the same images (training split; mAP and CF1), the classifier's gain over
the teacher used as the classifier on the held-out split (mAP and CF1), and the final labels'
mAP as a percentage of the bound's held-out classifier mAP. Seeds differ in their whole world
(corpus, held-out split), which moves both sides of a gain together; the per-seed difference
removes that shared part. Each row is then mean +- std over seeds (ddof=0), checked against
its target on the mean. Prints a markdown table with the command and the date, and writes it
(<out>/quality-<tag>.md) and the per-seed figures (--json, default <out>/quality-<tag>.json)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ccd_ray.cli import EMBEDDED_WORKDIR, log, run_job, run_log
from ccd_ray.config import DEFAULT_CONFIG, load_config
from ccd_ray.demo.embedded import (
    CORPUS_IMAGES,
    STUDENT_BACKBONE_SPEC,
    TEACHER_SPEC,
    default_cache_dir,
    embedded_defaults,
    make_corpus,
)
from ccd_ray.demo.pretrain_backbone import pretrained_backbone
from ccd_ray.demo.pretrain_teacher import pretrained_teacher
from ccd_ray.io.storage import read_json
from ccd_ray.preflight import check_inputs, check_storage
from ccd_ray.stages.evaluate import FINAL_STAGE
from ccd_ray.stages.pipeline import run_ccd
from ccd_ray.stages.runtime import init_ray

# the keys of metrics.json (ccd_ray.stages.evaluate.evaluate_run) this benchmark reads
TEACHER_TRAIN, FINAL_LABELS = "teacher_before_debias", "final_labels"
TEACHER_HOLDOUT, CLASSIFIER_HOLDOUT = "teacher_holdout", "classifier_holdout"
RUNS = {"ccd": [], "bound": ["train.targets=ground_truth"]}
# config keys the benchmark sets itself in every run
OWN_KEYS = ("seed", "run_id", "data.corpus_uri", "data.output_uri", "train.targets")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    target: float | None  # the mean over seeds must reach it; None: reported only


ROWS = [
    Row("labels_gain_mAP", "final labels - teacher zero-shot, mAP (training split)", 3.0),
    Row("labels_gain_CF1", "final labels - teacher zero-shot, CF1 (training split)", 10.0),
    Row("classifier_gain_mAP", "classifier - teacher zero-shot, mAP (held-out split)", 0.0),
    Row("classifier_gain_CF1", "classifier - teacher zero-shot, CF1 (held-out split)", None),
    Row("labels_of_bound_pct", "final labels mAP / bound's classifier mAP (%)", 90.0),
]
# absolute scores behind the gains: (label, run, metrics.json key)
ABSOLUTE = [("teacher zero-shot labels (training split)", "ccd", TEACHER_TRAIN),
            ("final labels (training split)", "ccd", FINAL_LABELS),
            ("teacher zero-shot (held-out split)", "ccd", TEACHER_HOLDOUT),
            ("classifier (held-out split)", "ccd", CLASSIFIER_HOLDOUT),
            ("bound's classifier (held-out split)", "bound", CLASSIFIER_HOLDOUT)]


def run_id(tag: str, run: str, seed: int) -> str:
    return f"quality-{tag}-{run}-s{seed}"


def score(metrics: dict, key: str, metric: str, name: str) -> float:
    """metrics[key][metric], or a one-line error naming the run (a run without ground truth
    has none of the scored keys)."""
    scored = metrics.get(key)
    if not isinstance(scored, dict) or metric not in scored:
        raise ValueError(f"metrics.json of run {name!r} has no {key}.{metric} (was its corpus "
                       "without ground truth?)")
    return float(scored[metric])


def seed_figures(ccd: dict, bound: dict, seed: int = 0) -> dict[str, float]:
    """One seed's paired figures (ROWS' keys) from its two runs' metrics.json."""
    def get(metrics, key, metric, run):
        return score(metrics, key, metric, f"{run} seed {seed}")

    figures = {}
    for metric in ("mAP", "CF1"):
        figures[f"labels_gain_{metric}"] = (get(ccd, FINAL_LABELS, metric, "ccd")
                                            - get(ccd, TEACHER_TRAIN, metric, "ccd"))
        figures[f"classifier_gain_{metric}"] = (get(ccd, CLASSIFIER_HOLDOUT, metric, "ccd")
                                                - get(ccd, TEACHER_HOLDOUT, metric, "ccd"))
    bound_map = get(bound, CLASSIFIER_HOLDOUT, "mAP", "bound")
    if bound_map <= 0:
        raise ValueError(f"seed {seed}: the bound's classifier mAP is {bound_map}; no ratio")
    figures["labels_of_bound_pct"] = 100.0 * get(ccd, FINAL_LABELS, "mAP", "ccd") / bound_map
    return figures


def summary_rows(per_seed: dict[int, dict[str, float]]) -> list[dict]:
    """Each row of ROWS over the seeds: values (in seed order), mean, std (ddof=0), target and
    passed (the mean reaches the target; None where the row has none)."""
    seeds = sorted(per_seed)
    rows = []
    for row in ROWS:
        values = [per_seed[s][row.key] for s in seeds]
        mean = float(np.mean(values))
        rows.append({"key": row.key, "label": row.label, "values": values, "mean": mean,
                     "std": float(np.std(values)), "target": row.target,
                     "passed": None if row.target is None else bool(mean >= row.target)})
    return rows


def absolute_rows(results: dict[int, dict[str, dict]]) -> list[dict]:
    """The scores the gains come from, mean +- std over seeds: results[seed][run] = metrics."""
    rows = []
    for label, run, key in ABSOLUTE:
        cells = {}
        for metric in ("mAP", "CF1", "OF1"):
            values = [score(results[s][run], key, metric, f"{run} seed {s}")
                      for s in sorted(results)]
            cells[metric] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
        rows.append({"label": label, **cells})
    return rows


def markdown(rows: list[dict], absolute: list[dict], seeds: list[int], header: str) -> str:
    """The gains table (target and PASS/FAIL per row) and the absolute scores behind it."""
    def fmt(row: dict, signed: bool) -> tuple[str, str]:
        sign = "+" if signed else ""
        return (f"{row['mean']:{sign}.1f} +- {row['std']:.1f}",
                ", ".join(f"{v:{sign}.1f}" for v in row["values"]))

    seed_list, plural = ", ".join(str(s) for s in seeds), "s" * (len(seeds) != 1)
    lines = [header, "",
             f"| measure ({len(seeds)} seed{plural}: mean +- std) | value | per seed ({seed_list}) "
             "| target | result |", "|---|---:|---:|---:|---|"]
    for row in rows:
        ratio = row["key"] == "labels_of_bound_pct"
        value, values = fmt(row, signed=not ratio)
        if row["target"] is None:
            target, result = "-", "-"
        else:
            target = f">= {row['target']:.0f}%" if ratio else f">= {row['target']:+.0f}"
            result = "PASS" if row["passed"] else "FAIL"
        lines.append(f"| {row['label']} | {value} | {values} | {target} | {result} |")
    lines += ["", "| scores (mean +- std) | mAP | CF1 | OF1 |", "|---|---:|---:|---:|"]
    for row in absolute:
        cells = " | ".join(f"{row[m]['mean']:.1f} +- {row[m]['std']:.1f}"
                           for m in ("mAP", "CF1", "OF1"))
        lines.append(f"| {row['label']} | {cells} |")
    return "\n".join(lines)


def run_config(seed: int, run: str, corpus: Path, out: Path, tag: str, sets: list[str]):
    """The embedded default's config (as jobs/run_ccd.py builds it) on the seed's corpus,
    with the --set values and the run's own override."""
    return load_config(DEFAULT_CONFIG, [*sets, *RUNS[run], f"seed={seed}",
                                        f"run_id={run_id(tag, run, seed)}",
                                        f"data.output_uri={out}", f"data.corpus_uri={corpus}"],
                       base=embedded_defaults(EMBEDDED_WORKDIR))


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, dict]:
    """Make the seed's corpus where missing, run (or resume) both runs; their metrics.json."""
    corpus = out / f"corpus-{args.images}-seed{seed}"
    if not corpus.is_dir():
        make_corpus(corpus, images=args.images, seed=seed)
    results = {}
    for run in RUNS:
        cfg = run_config(seed, run, corpus, out, args.tag, args.set)
        checks = check_storage(cfg) + check_inputs(cfg)  # jobs/run_ccd.py's checks
        with run_log(cfg, cfg.run_id, "quality", collapse_tracebacks=not args.debug):
            for line in checks:
                log(f"checked: {line}")
            started = time.time()
            store = run_ccd(cfg)  # resumes: committed stages are skipped
            log(f"{cfg.run_id}: {time.time() - started:.0f} s")
        results[run] = read_json(store.fs, f"{store.committed(FINAL_STAGE)}/metrics.json")
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=CORPUS_IMAGES,
                        help="scenes in each seed's corpus (default: the embedded default's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in both runs, e.g. "
                        "labels.final_source=pseudo (repeatable; needs --tag)")
    parser.add_argument("--tag", default="default", help="names the runs: quality-<tag>-...")
    parser.add_argument("--out", default="outputs/quality", help="corpora and runs go here")
    parser.add_argument("--json", help="the figures' JSON (default <out>/quality-<tag>.json)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a stop besides its one line")
    args = parser.parse_args(argv)
    if args.set and args.tag == "default":
        parser.error("--set changes the runs: give them a --tag so they do not read as the "
                     "default's")
    owned = [s for s in args.set if s.split("=", 1)[0].strip() in OWN_KEYS]
    if owned:
        parser.error(f"--set {owned[0]}: the benchmark sets {', '.join(OWN_KEYS)} itself")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds: a seed is given twice")
    return args


def benchmark(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # what embedded_defaults points at, trained on first use (prepare_embedded's other part,
    # the default corpus, is not used here)
    pretrained_teacher(default_cache_dir(), TEACHER_SPEC)
    pretrained_backbone(default_cache_dir(), STUDENT_BACKBONE_SPEC)
    init_ray()
    started = time.time()
    results = {seed: run_seed(seed, args, out) for seed in args.seeds}
    per_seed = {seed: seed_figures(r["ccd"], r["bound"], seed) for seed, r in results.items()}
    rows, absolute = summary_rows(per_seed), absolute_rows(results)
    command = shlex.join(["python", *sys.argv])
    header = (f"Label quality on SynthScenes, {args.images} scenes a seed; `{command}`, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{time.time() - started:.0f} s on {os.cpu_count()} CPUs.")
    table = markdown(rows, absolute, sorted(per_seed), header)
    (out / f"quality-{args.tag}.md").write_text(table + "\n")
    json_path = Path(args.json) if args.json else out / f"quality-{args.tag}.json"
    json_path.write_text(json.dumps({
        "command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": args.images, "seeds": sorted(per_seed), "sets": args.set, "tag": args.tag,
        "rows": rows, "absolute": absolute,
        "per_seed": {str(s): {"figures": per_seed[s],
                              "run_ids": {run: run_id(args.tag, run, s) for run in RUNS},
                              "scores": {run: {key: results[s][run][key] for key in
                                               (TEACHER_TRAIN, FINAL_LABELS, TEACHER_HOLDOUT,
                                                CLASSIFIER_HOLDOUT)} for run in RUNS}}
                     for s in sorted(per_seed)}}, indent=2) + "\n")
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(parse_args(argv), benchmark)


if __name__ == "__main__":
    sys.exit(main())
