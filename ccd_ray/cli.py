"""What the job CLIs (jobs/run_ccd.py, jobs/sweep.py) share: their config arguments and how
a config is built from them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ccd_ray.config import CCDConfig, load_config
from ccd_ray.demo.embedded import DEFAULT_CONFIG, embedded_defaults, prepare_embedded

EMBEDDED_WORKDIR = Path("outputs") / "_embedded"  # the embedded default's corpus, made once


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set and --address, the same in every job."""
    parser.add_argument("--config", help="YAML config (default: the embedded default's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set labels.gamma=0.5 (repeatable)")
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else local)")


def uses_embedded(config_path: str | None, overrides: list[str]) -> bool:
    """With neither a config file nor a corpus given, a job runs on the embedded default."""
    return config_path is None and not any(o.startswith("data.corpus_uri=") for o in overrides)


def job_config(config_path: str | None, overrides: list[str]) -> CCDConfig:
    """The YAML given, else the default config; on the embedded default's world when
    uses_embedded. Does no work: prepare_job makes what the config points at."""
    base = embedded_defaults(EMBEDDED_WORKDIR) if uses_embedded(config_path, overrides) else None
    return load_config(config_path or DEFAULT_CONFIG, overrides, base=base)


def prepare_job(config_path: str | None, overrides: list[str]) -> None:
    """Before Ray starts: the embedded default's corpus and teacher, where they are missing."""
    if uses_embedded(config_path, overrides):
        prepare_embedded(EMBEDDED_WORKDIR)
