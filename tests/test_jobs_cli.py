"""The thin entry points in jobs/: arguments, errors, and that they call the library."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ccd_ray.io.decode import encode_png

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def load_job(name: str):
    spec = importlib.util.spec_from_file_location(name, JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pack_shards_from_a_folder(tmp_path):
    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    for i in range(5):
        (images / f"img{i}.png").write_bytes(encode_png(np.full((4, 6, 3), i, np.uint8)))
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "shards"
    assert load_job("pack_shards").main(["--source", "folder", "--input", str(tmp_path / "images"),
                                         "--output", str(out), "--images-per-shard", "2"]) == 0
    shards = sorted(out.glob("*.parquet"))
    assert [s.name for s in shards] == ["shard-00000.parquet", "shard-00001.parquet",
                                        "shard-00002.parquet"]
    ids = [i for s in shards for i in pq.read_table(s).column("image_id").to_pylist()]
    assert ids == [f"sub/img{i}.png" for i in range(5)]


def test_pack_shards_needs_an_input(tmp_path, capsys):
    assert load_job("pack_shards").main(["--source", "voc", "--output", str(tmp_path)]) == 2
    assert "--input is required" in capsys.readouterr().err


def test_run_ccd_reports_config_errors(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("labels:\n  alpha: 2.0\n")
    assert load_job("run_ccd").main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "labels.alpha" in err and "[0.0, 1.0]" in err


def test_building_the_embedded_config_does_no_work(tmp_path, monkeypatch):
    """The config names where the embedded corpus and teacher go; making them is the job's
    first step (prepare_job), not the config's."""
    from ccd_ray.cli import job_config, uses_embedded

    monkeypatch.setenv("CCD_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cfg = job_config(None, ["labels.alpha=0.3"])
    assert uses_embedded(None, []) and not uses_embedded(None, ["data.corpus_uri=/x"])
    assert cfg.teacher.model.startswith("local-dir:" + str(tmp_path / "cache"))
    assert cfg.data.corpus_uri.startswith(str(tmp_path / "outputs" / "_embedded"))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "outputs").exists()
