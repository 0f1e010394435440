"""Label a corpus with a trained classifier: every image gets the classifier's probabilities
and the classes at or above their thresholds (the run's per-class ones when the classifier comes
from a run's final folder, else labels.threshold), in the same labels/, errors.parquet and
summary.json a run's rounds write. This is how a corpus too big to relabel with the teacher
gets labels: distil on a sample, then predict the rest.

    python jobs/predict.py --classifier outputs/default/final --corpus ./photos \\
        --output outputs --run-id photos-1
    python jobs/predict.py --classifier s3://bucket/runs/voc/final/attempt-<id>/classifier.pt \\
        --corpus s3://bucket/big-corpus --output s3://bucket/labels --run-id big-1 \\
        --set compute.classifier_actors=8 --set compute.gpus_per_actor=0.5

--classifier takes a classifier.pt file or a run's committed stage folder (`<run>/final`).
The corpus is any format the job reads (Parquet shards, WebDataset tars, an image folder;
local or s3://). Images are decoded and resized as the classifier's training inputs were
(data.max_image_side, data.max_image_pixels, then the classifier's input size). The class
names come from the classifier; the compute.* keys size the actor pool (compute.classifier_actors
actors, GPUs with compute.gpus_per_actor). Outputs: <output>/<run-id>/predict/ (see
docs/predict.md). Rerunning with the same run id resumes: committed shards are skipped.

Before Ray starts, the output, the S3 endpoint, the classifier and the corpus are checked;
a stop prints one line and exits with the code docs/errors.md lists (--debug: with its
traceback). The console is copied to <output>/<run-id>/logs/."""

from __future__ import annotations

import argparse
import sys

from ccd_ray.cli import add_config_arguments, log, run_job, started_job
from ccd_ray.preflight import check_corpus, check_storage
from ccd_ray.stages.predict import (
    classifier_config,
    predict_corpus,
    probe_config,
    read_classifier,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, metavar="PATH_OR_URI",
                        help="classifier.pt, or a run's final/ stage folder (local or s3://)")
    parser.add_argument("--corpus", required=True, metavar="URI",
                        help="the corpus to label (sets data.corpus_uri)")
    parser.add_argument("--output", metavar="URI",
                        help="where the run is written (sets data.output_uri; default: outputs)")
    parser.add_argument("--run-id", default="predict",
                        help="names the run under --output; the same id resumes it "
                        "(default: predict)")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    overrides = [*args.set, f"data.corpus_uri={args.corpus}", f"run_id={args.run_id}",
                 *([f"data.output_uri={args.output}"] if args.output else [])]
    probe = probe_config(args.config, overrides)
    checks = check_storage(probe)  # the endpoint first: the classifier may be read from it
    classifier = read_classifier(args.classifier, probe.data)
    cfg = classifier_config(args.config, overrides, classifier, args.classifier)
    checks.append(check_corpus(cfg))
    with started_job(cfg, cfg.run_id, "predict", checks, args):
        result = predict_corpus(cfg, args.classifier, classifier)
        log(f"outputs: {result.folder} (labels/, errors.parquet, summary.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
