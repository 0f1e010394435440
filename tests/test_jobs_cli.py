"""The thin entry points in jobs/: arguments, errors, and that they call the library."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from script_modules import load_script

from ccd_ray.io.decode import encode_png

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"


def load_job(name: str):
    return load_script(JOBS / f"{name}.py", name)


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


def _user_config(tmp_path) -> Path:
    """A new user's config: a folder of three images, outputs under tmp_path."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"img{i}.png").write_bytes(encode_png(np.full((4, 6, 3), i, np.uint8)))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"classes": {"names": ["cat", "dog"]},
                                    "data": {"corpus_uri": str(corpus),
                                             "output_uri": str(tmp_path / "out")}}))
    return path


def _unwritable_output(tmp_path) -> Path:
    """A folder nothing can be written into: read-only, or (as root, who writes anyway) one
    below a plain file."""
    if os.geteuid() == 0:
        (tmp_path / "plain-file").write_text("x")
        return tmp_path / "plain-file" / "runs"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked


@pytest.mark.parametrize("case, code, key", [("missing corpus", 3, "data.corpus_uri"),
                                             ("unwritable output", 4, "data.output_uri"),
                                             ("missing teacher", 5, "teacher.model")])
def test_a_failed_start_is_one_line_in_seconds_and_leaves_nothing(tmp_path, case, code, key):
    """As a new user meets them: the job stops before Ray starts, with one line naming the key
    and a distinct exit code, no traceback, and nothing written."""
    config = _user_config(tmp_path)
    overrides = {"missing corpus": f"data.corpus_uri={tmp_path / 'no-such-corpus'}",
                 "unwritable output": f"data.output_uri={_unwritable_output(tmp_path)}",
                 "missing teacher": f"teacher.model=local-dir:{tmp_path / 'no-teacher'}"}[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = time.time()
    result = subprocess.run([sys.executable, "jobs/run_ccd.py", "--config", str(config),
                             "--set", overrides], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    seconds = time.time() - started
    lines = result.stderr.splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and result.stdout == ""
    assert seconds < 5, f"{case}: {seconds:.1f} s"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    print(f"{case}: exit {result.returncode} in {seconds:.2f} s: {lines[0]}")


def test_debug_adds_the_traceback(tmp_path):
    config = _user_config(tmp_path)
    result = subprocess.run([sys.executable, "jobs/run_ccd.py", "--config", str(config), "--debug",
                             "--set", f"data.corpus_uri={tmp_path / 'gone'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: data.corpus_uri")


def test_the_sweep_runs_the_same_checks(tmp_path):
    config = _user_config(tmp_path)
    result = subprocess.run([sys.executable, "jobs/sweep.py", "--config", str(config),
                             "--grid", "alpha=0.2,0.4",
                             "--set", f"data.corpus_uri={tmp_path / 'gone'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: data.corpus_uri") and not (tmp_path / "out").exists()


def test_a_librarys_root_logging_call_gives_the_console_no_info_lines():
    """open_clip logs with the module-level logging.info(), which installs a console handler on
    a root logger that has none; under run_job it does not, so the run's INFO records stay in
    the run log (the same body outside run_job shows what would reach the console)."""
    body = ("import logging\n"
            "def body(args):\n"
            "    logging.info('a library line')\n"
            "    logging.getLogger().setLevel(logging.INFO)\n"
            "    logging.getLogger('ccd.test').info('an INFO record')\n"
            "    return 0\n")
    for wrapped, expect_info in ((True, False), (False, True)):
        call = ("import argparse\nfrom ccd_ray.cli import run_job\n"
                "raise SystemExit(run_job(argparse.Namespace(debug=False), body))\n"
                if wrapped else "raise SystemExit(body(None))\n")
        result = subprocess.run([sys.executable, "-c", body + call], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert ("INFO:ccd.test:an INFO record" in result.stderr) == expect_info, result.stderr


def _started(tmp_path, monkeypatch, module: str, source: str | None, wait_s: float = 10):
    """Enter started_job with `imports=module` on a stand-in for Ray's start that waits up to
    wait_s for the module to be imported meanwhile; returns whether it saw it before returning
    (an import after Ray's start, as before, would not be seen)."""
    import argparse
    import threading

    from ccd_ray import cli
    from ccd_ray.config import CCDConfig
    from ccd_ray.stages import runtime

    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    seen = threading.Event()

    def slow_start(address, progress):
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not seen.is_set():
            if module in sys.modules:
                seen.set()
            time.sleep(0.01)

    monkeypatch.setattr(runtime, "init_ray", slow_start)
    cfg = CCDConfig()
    cfg.data.output_uri = str(tmp_path / "out")
    args = argparse.Namespace(debug=False, address=None, progress=False)
    with cli.started_job(cfg, "run", "run_ccd", [], args, imports=module):
        pass
    return seen.is_set()


def test_the_jobs_module_imports_while_ray_starts(tmp_path, monkeypatch):
    assert _started(tmp_path, monkeypatch, "ccd_overlap_probe", "VALUE = 1\n")


def test_a_failed_import_during_rays_start_is_raised(tmp_path, monkeypatch):
    with pytest.raises(ModuleNotFoundError, match="ccd_missing_probe"):
        _started(tmp_path, monkeypatch, "ccd_missing_probe", None, wait_s=0.5)
