"""Run or resume Classifier-guided CLIP Distillation on a corpus.

    python jobs/run_ccd.py                          # the embedded default, locally
    python jobs/run_ccd.py --config my.yaml --set labels.alpha=0.4 --run-id voc-a04
    ray job submit --working-dir . -- python jobs/run_ccd.py --config my.yaml

Rerunning with the same run id resumes: committed stages are skipped. Before Ray starts, the
corpus, the output, the teacher and the S3 endpoint are checked; a stop prints one line and
exits with the code docs/errors.md lists."""

from __future__ import annotations

import argparse
import sys

from ccd_ray.cli import add_config_arguments, job_config, prepare_job, run_job, started_job


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--run-id", help="names the run; the same id resumes it")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    overrides = args.set + ([f"run_id={args.run_id}"] if args.run_id else [])
    cfg = job_config(args.config, overrides)
    checks = prepare_job(args.config, overrides, cfg)
    with started_job(cfg, cfg.run_id, "run_ccd", checks, args, imports="ccd_ray.stages.pipeline"):
        from ccd_ray.stages.pipeline import run_ccd  # torch only now, with Ray (started_job)

        run_ccd(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
