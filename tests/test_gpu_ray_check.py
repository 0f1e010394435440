"""benchmarks/gpu_ray_check.py: its helpers (stage timings read from a run store, Train step
rates from checkpoint names, the FLOP share, GPU sample windows, installing Ray from --wheels),
and its --device cpu smoke run end to end in a subprocess (it starts a Ray of its own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from script_modules import load_script

from ccd_ray.config import DataConfig
from ccd_ray.io.storage import RunStore, write_json

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_ray_check.py"


@pytest.fixture(scope="module")
def check():
    return load_script(SCRIPT, "gpu_ray_check")


def test_flop_share_and_gpu_windows(check):
    # 1000 views/s of 8.8 GFLOP each = 8.8 TFLOP/s = 1.1 % of 800 TFLOP/s
    assert check.flop_share(1000.0, 8.8e9, 800.0) == pytest.approx(1.1)
    assert check.flop_share(None, 8.8e9, 800.0) is None
    samples = [(0.0, 10.0, 1024.0), (1.0, 50.0, 4096.0), (2.0, 0.0, 2048.0), (9.0, 99.0, 9e4)]
    stats = check.window_stats(samples, 0.5, 2.5)
    assert stats == {"samples": 2, "util_mean_pct": 25.0, "util_max_pct": 50.0,
                     "busy_share": 0.5, "memory_used_max_gib": 4.0}
    assert check.window_stats(samples, 3.0, 4.0) is None


def test_gpu_sampler_thread_and_the_gpu_columns_of_the_report(check, monkeypatch):
    sampler = check.GpuSampler(0.01)

    def fake_setup():
        sampler._read, sampler.source = (lambda: (40.0, 2048.0)), "fake"

    monkeypatch.setattr(sampler, "_setup", fake_setup)
    started = check.time.time()
    sampler.start()
    check.time.sleep(0.2)
    sampler.stop()
    window = sampler.window(started, check.time.time())
    assert window["samples"] >= 3 and window["util_mean_pct"] == 40.0
    assert window["memory_used_max_gib"] == 2.0
    # a GPU run's result, as the phases leave it: every GPU cell is filled in
    gpu = {"gpu": window}
    rates = {"images": 64, "images_per_s": 100.0, "views_per_s": 500.0, "pct_of_peak": 0.5}
    result = {
        "errors": {}, "wall_s": 1.0,
        "settings": {"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11", "cuda": "13",
                     "ray": "2.60.0", "python": "3.12", "cpus": 16, "gpu_sampler": "fake",
                     "sample_interval_s": 0.01},
        "embedded": {"corpus": "default", "overrides": ["compute.use_gpu=true"], "wall_s": 9.0,
                     "final_committed": True, "prepare_s": 1.0, "logged_stage_s": {}, **gpu,
                     "stages": [{"stage": "round-0/raw", "seconds": 2.0, "info": {}, **gpu}],
                     "train_settings": {"backbone": "resnet18", "image_size": 96,
                                        "batch_size": 16, "workers": 1, "use_gpu": True},
                     "train": [{"stage": "train/segment-0", "batches_per_epoch": 10,
                                "epoch_s": 2.0, "steps_per_s": 5.0, "images_per_s": 80.0,
                                **gpu}]},
        "train_plain": {"backbone": "resnet18", "image_size": 96, "batch": 16, "steps": 30,
                        "steps_per_s": 20.0, "images_per_s": 320.0,
                        "peak_gpu_memory_gib": 1.5, **gpu},
        "throughput": {"settings": {"model": "ViT-B-32", "image_size": 224,
                                    "views_per_image": 5, "teacher_batch_size": 320,
                                    "clip_actors": 4, "gpus_per_actor": 0.25,
                                    "cpus_per_actor": 2.0},
                       "pipeline_tiny": {**rates, "stage_seconds": 3.0, **gpu},
                       "pipeline_full": {**rates, "stage_seconds": 30.0, **gpu},
                       "pipeline_steady": {**rates, "seconds": 27.0, "fixed_cost_s": 1.0},
                       "plain": {**rates, "seconds": 5.0, "torch_threads": 16,
                                 "torch_max_memory_allocated_gib": 3.0, **gpu},
                       "ratio_steady_over_plain": 1.0, "ratio_full_over_plain": 0.9,
                       "flops_per_view": 8.7e9, "flops_source": "counted", "peak_tflops": 790.0}}
    table = check.report(result)
    assert table.count("40% / 40%, 2.0 GiB") == 7, table
    assert "8.700 GFLOP" in table and "790 TFLOP/s" in table and "FAILED" not in table


def test_stage_seconds_and_train_rates_come_from_what_the_run_committed(check, tmp_path):
    store = RunStore.open(str(tmp_path / "runs"), "r1", DataConfig())
    raw = store.begin("round-0/raw")
    store.commit("round-0/raw", raw, {"images": 8, "labeled": 8, "errors": 0, "seconds": 3.5})
    labels = store.begin("round-0/labels")
    write_json(store.fs, f"{labels}/summary.json", {"labels_seconds": 0.25})
    store.commit("round-0/labels", labels, {"round": 0})
    # Ray Train's folders: one report per epoch, named by its time; 12 s per epoch
    train_dir = tmp_path / "runs" / "r1" / "ray-train" / "segment-0"
    names = ["checkpoint_2026-01-02_03-04-05.000000", "checkpoint_2026-01-02_03-04-17.000000",
             "checkpoint_2026-01-02_03-04-29.500000"]
    for name in names:
        (train_dir / name).mkdir(parents=True)
    (train_dir / "not-a-checkpoint").mkdir()
    segment = store.begin("train/segment-0")
    store.commit("train/segment-0", segment, {"checkpoint": str(train_dir / names[-1]),
                                              "epochs": [0, 3],
                                              "metrics": {"batches": 6, "loss": 0.5}})
    stages = check.committed_stages(store)
    by_name = {s["stage"]: s for s in stages}
    assert set(by_name) == {"round-0/raw", "round-0/labels", "train/segment-0"}
    assert by_name["round-0/raw"]["seconds"] == 3.5
    assert by_name["round-0/labels"]["seconds"] == 0.25
    assert by_name["train/segment-0"]["seconds"] is None
    (rates,) = check.train_rates(store, stages, batch_size=16)
    assert rates["checkpoints"] == 3
    assert rates["epoch_intervals_s"] == pytest.approx([12.0, 12.5])
    assert rates["epoch_s"] == pytest.approx(12.25)
    assert rates["steps_per_s"] == pytest.approx(6 / 12.25)
    assert rates["images_per_s"] == pytest.approx(16 * 6 / 12.25)


def test_logged_stage_lines_are_parsed(check):
    lines = ["[ccd-ray] round-0/raw: started", "[ccd-ray] round-0/raw: done in 12.5 s",
             "[ccd-ray] train/segment-0: done in 40.1 s; epochs 0..1 on round-0 labels",
             "[ccd-ray] final: skipped (already committed)"]
    assert check.logged_stage_seconds(lines) == {"round-0/raw": 12.5, "train/segment-0": 40.1}


def test_missing_ray_is_installed_from_the_wheel_folder(check, tmp_path, monkeypatch):
    calls = []

    def import_module(name):
        if name == "ray" and not calls:
            raise ImportError("No module named 'ray'")
        return None

    monkeypatch.setattr(check.importlib, "import_module", import_module)
    monkeypatch.setattr(check.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with pytest.raises(SystemExit, match="pass --wheels DIR"):  # no wheels: says what to pass
        check.ensure_ray(tmp_path / "none", str(tmp_path / "site"))
    with pytest.raises(SystemExit, match="pass --wheels DIR"):
        check.ensure_ray(None)
    wheels = tmp_path / ".whl"
    wheels.mkdir()
    (wheels / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl").write_bytes(b"")
    how = check.ensure_ray(wheels, str(tmp_path / "site"))
    (command,) = calls
    assert command[1:] == ["-m", "pip", "install", "-q", "--no-index", "--no-deps",
                           "--no-compile", "--no-cache-dir", "--upgrade", "--target",
                           str(tmp_path / "site"),
                           str(wheels / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl")]
    assert "installed 1 wheels" in how
    assert sys.path[0] == str(tmp_path / "site")
    # the Ray workers find the wheels and the repository through PYTHONPATH
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [
        str(tmp_path / "site"), str(ROOT), str(ROOT / "benchmarks"), "/elsewhere"]


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "smoke.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out),
                             "--workdir", str(tmp_path / "work")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    tail = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    r = json.loads(out.read_text())
    assert r["errors"] == {}, tail

    # (1) the embedded run completed: every stage committed, the final one last
    e = r["embedded"]
    assert e["exit_code"] == 0 and e["final_committed"]
    stages = {s["stage"]: s for s in e["stages"]}
    assert {"round-0/raw", "round-0/labels", "round-1/raw", "round-1/labels", "train-inputs",
            "train/segment-0", "train/segment-1", "final"} <= set(stages)
    assert stages["round-0/raw"]["seconds"] > 0 and stages["round-1/raw"]["seconds"] > 0
    assert stages["round-0/raw"]["info"]["labeled"] == 16
    assert e["logged_stage_s"]["final"] > 0
    assert 0 < e["wall_s"] < 900
    assert [t["stage"] for t in e["train"]] == ["train/segment-0", "train/segment-1"]
    for t in e["train"]:
        assert t["checkpoints"] >= 2 and t["batches_per_epoch"] >= 1
        assert 0 < t["epoch_s"] < 300 and t["steps_per_s"] > 0 and t["images_per_s"] > 0
    assert e["train_settings"]["use_gpu"] is False
    # (2) the plain train loop
    assert r["train_plain"]["steps_per_s"] > 0
    # (3) the throughput: the stage's committed seconds, views = images x (1 + crops)
    th = r["throughput"]
    views_per_image = th["settings"]["views_per_image"]
    assert views_per_image == 3 and th["settings"]["model"] == "ccd-tiny-vit"
    assert th["flops_per_view"] > 1e6
    for key, images in (("pipeline_tiny", 8), ("pipeline_full", 24), ("plain", 24)):
        d = th[key]
        assert d["images"] == images and d["views"] == images * views_per_image
        assert d["images_per_s"] > 0
        assert d["views_per_s"] == pytest.approx(d["images_per_s"] * views_per_image)
        assert d["pct_of_peak"] > 0
    full = th["pipeline_full"]
    assert full["stage_seconds"] <= full["wall_s"] + 0.01  # the marker rounds to 0.01 s
    assert th["ratio_full_over_plain"] > 0
    assert r["settings"]["gpus"] == 0 and r["settings"]["ray_init"]["num_gpus"] == 0

    table = result.stdout[result.stdout.index("# GPU Ray check (cpu)"):]
    for row in ("| (1) embedded default end to end", "| (1) Ray Train step rate",
                "| (2) plain `train_step` loop", "| (3) pipeline, full corpus",
                "| **(3) plain in-process loop**", "| (3) pipeline / plain"):
        assert row in table, table
    assert "FAILED" not in table
