"""Pack images into the corpus format: Parquet shards of image_id, image bytes and (when the
source has them) ground-truth labels, written to a local folder or an s3:// prefix.

    python jobs/pack_shards.py --source folder --input ./images --output s3://bucket/corpus
    python jobs/pack_shards.py --source voc --input VOCdevkit/VOC2012 --output ./voc-shards
    python jobs/pack_shards.py --source coco --input instances_val2017.json \\
        --images val2017 --output s3://bucket/coco --s3-endpoint http://127.0.0.1:9000
    python jobs/pack_shards.py --source synthetic --count 1000 --output ./synth

S3 credentials come from the environment (AWS_ACCESS_KEY_ID, ...) or the instance role."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ccd_ray.config import DataConfig
from ccd_ray.io.packing import (
    coco_records,
    folder_records,
    synthetic_records,
    voc_records,
    write_shards,
)
from ccd_ray.io.storage import filesystem_for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=("folder", "voc", "coco", "synthetic"))
    parser.add_argument("--input", help="image folder, VOC root, or COCO instances JSON")
    parser.add_argument("--images", help="COCO: the folder of the JSON's images")
    parser.add_argument("--output", required=True, help="local folder or s3://bucket/prefix")
    parser.add_argument("--images-per-shard", type=int, default=1000)
    parser.add_argument("--count", type=int, default=200, help="synthetic: number of scenes")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: scene seed")
    parser.add_argument("--size", type=int, default=96, help="synthetic: image side")
    parser.add_argument("--s3-endpoint", help="endpoint of an S3-compatible store")
    parser.add_argument("--s3-region", default="us-east-1")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.source != "synthetic" and not args.input:
        print(f"--input is required for --source {args.source}", file=sys.stderr)
        return 2
    if args.source == "coco" and not args.images:
        print("--images (the COCO image folder) is required for --source coco", file=sys.stderr)
        return 2
    records = {
        "folder": lambda: folder_records(Path(args.input)),
        "voc": lambda: voc_records(Path(args.input)),
        "coco": lambda: coco_records(Path(args.input), Path(args.images or "")),
        "synthetic": lambda: synthetic_records(args.count, args.seed, args.size, 3),
    }[args.source]()
    fs, root = filesystem_for(args.output, DataConfig(s3_endpoint=args.s3_endpoint,
                                                      s3_region=args.s3_region))
    paths = write_shards(records, fs, root, args.images_per_shard)
    print(f"wrote {len(paths)} shard(s) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
