"""Run or resume Classifier-guided CLIP Distillation on a corpus.

    python jobs/run_ccd.py                          # the embedded default, locally
    python jobs/run_ccd.py --config my.yaml --set labels.alpha=0.4 --run-id voc-a04
    ray job submit --working-dir . -- python jobs/run_ccd.py --config my.yaml

Rerunning with the same run id resumes: committed stages are skipped."""

from __future__ import annotations

import argparse
import sys

from ccd_ray.cli import add_config_arguments, job_config, prepare_job
from ccd_ray.config import ConfigError
from ccd_ray.stages.pipeline import run_ccd
from ccd_ray.stages.runtime import init_ray


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--run-id", help="names the run; the same id resumes it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = args.set + ([f"run_id={args.run_id}"] if args.run_id else [])
    try:
        cfg = job_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    prepare_job(args.config, overrides)
    init_ray(args.address)
    run_ccd(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
