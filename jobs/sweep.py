"""Sweep CCD's alpha, gamma and beta with Ray Tune, reusing cached CLIP scores.

    python jobs/sweep.py --grid alpha=0.2,0.4,0.6 --grid gamma=0.5,1,2      # embedded default
    python jobs/sweep.py --config voc.yaml --sweep sweep.yaml --validation-labels s3://b/val.json
    ray job submit --working-dir . -- python jobs/sweep.py --config voc.yaml --sweep sweep.yaml

The sweep YAML holds `params` (a list = grid, {low, high[, log]} = range) and the optional
keys of ccd_ray/sweep/spec.py; --grid/--range/--sweep-id flags override it. Rerunning the same
sweep id resumes it. Outputs: <output_uri>/<sweep_id>/summary/ (summary.md, trials.csv,
objective_vs_params.png, best-config.yaml). The checks before Ray starts and the exit codes are
those of jobs/run_ccd.py (docs/errors.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ccd_ray.cli import add_config_arguments, job_config, prepare_job, run_job, started_job
from ccd_ray.config import ConfigError
from ccd_ray.sweep.spec import parse_flag, parse_sweep_spec


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--sweep", help="sweep spec YAML (params, num_samples, ...)")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="grid of a parameter, e.g. --grid alpha=0.2,0.4 (repeatable)")
    parser.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH[:log]",
                        help="sampled range of a parameter, e.g. --range beta=0.1:10:log")
    parser.add_argument("--num-samples", type=int, help="samples per range")
    parser.add_argument("--sweep-id", help="names the sweep; the same id resumes it")
    parser.add_argument("--validation-labels", metavar="URI",
                        help="JSON {image_id: [class names]} of a labeled validation subset")
    parser.add_argument("--validation-from-corpus", type=int, metavar="N",
                        help="use the corpus's ground truth of N held-out images as the labeled "
                        "subset (benchmarks on labeled corpora)")
    parser.add_argument("--no-cache", action="store_true",
                        help="every trial runs CLIP itself (the naive sweep; for comparison)")
    return parser.parse_args(argv)


def spec_data(args: argparse.Namespace) -> dict:
    data: dict = {}
    if args.sweep:
        try:
            data = yaml.safe_load(Path(args.sweep).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"sweep file not found: {args.sweep}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"sweep file {args.sweep} must hold a mapping")
    params = dict(data.get("params") or {})
    for kind in ("grid", "range"):
        for item in getattr(args, kind):
            name, value = parse_flag(item, kind)
            params[name] = value
    data["params"] = params
    if args.num_samples is not None:
        data["num_samples"] = args.num_samples
    if args.sweep_id:
        data["sweep_id"] = args.sweep_id
    validation = dict(data.get("validation") or {})
    if args.validation_labels:
        validation["labels_uri"] = args.validation_labels
    if args.validation_from_corpus is not None:
        validation["from_corpus"] = args.validation_from_corpus
    data["validation"] = validation
    if args.no_cache:
        data["cache"] = False
    return data


def run(args: argparse.Namespace) -> int:
    cfg = job_config(args.config, args.set)
    spec = parse_sweep_spec(spec_data(args), cfg)
    checks = prepare_job(args.config, args.set, cfg)
    with started_job(cfg, spec.sweep_id, "sweep", checks, args, imports="ccd_ray.sweep.tune"):
        from ccd_ray.sweep.tune import run_sweep  # torch only now, with Ray (started_job)

        outcome = run_sweep(cfg, spec)
    print(f"summary: {outcome.summary_folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
