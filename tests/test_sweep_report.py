"""Sweep summary files (no Ray) and jobs/sweep.py's refusals of bad specs."""

from __future__ import annotations

import csv
import io

import pytest
import yaml
from test_jobs_cli import load_job

from ccd_ray.config import load_config
from ccd_ray.sweep.spec import parse_sweep_spec
from ccd_ray.sweep.summary import (
    PROXY_WARNING,
    best_config_yaml,
    plot_objective,
    summarise,
    summary_markdown,
    trial_columns,
    trials_csv,
)


def _rows():
    return [
        {"trial": "a", "alpha": 0.2, "gamma": 0.5, "objective": 60.0, "val_mAP": 60.0,
         "proxy_mAP": 40.0, "status": "completed", "teacher_forward_passes": 0},
        {"trial": "b", "alpha": 0.6, "gamma": 0.5, "objective": 70.0, "val_mAP": 70.0,
         "proxy_mAP": 50.0, "status": "completed", "teacher_forward_passes": 0},
        {"trial": "c", "alpha": 0.2, "gamma": 2.0, "objective": 80.0, "val_mAP": 80.0,
         "proxy_mAP": 45.0, "status": "stopped", "teacher_forward_passes": 0},
    ]


def test_summary_best_and_rank_correlation(make_config):
    spec = parse_sweep_spec({"params": {"alpha": [0.2, 0.6], "gamma": [0.5, 2.0]},
                             "validation": {"from_corpus": 5}}, make_config())
    best, summary = summarise(spec, "val_mAP", _rows(), {"images": 3})
    assert best["trial"] == "b"  # c scores higher but was stopped by ASHA
    assert summary["objective_is_proxy"] is False and summary["warning"] is None
    assert summary["proxy_vs_labeled_spearman"] == pytest.approx(0.5)
    text = summary_markdown(spec, "val_mAP", _rows(), best, summary)
    assert "Best: `b`" in text and "Spearman" in text and "Warning" not in text
    table = list(csv.DictReader(io.StringIO(trials_csv(_rows(), trial_columns(spec)).decode())))
    assert [r["trial"] for r in table] == ["a", "b", "c"] and table[0]["alpha"] == "0.2"
    png = plot_objective(_rows(), spec, "val_mAP", best)
    assert png.startswith(b"\x89PNG")


def test_proxy_objective_is_flagged(make_config):
    spec = parse_sweep_spec({"params": {"alpha": [0.2, 0.6]}}, make_config())
    rows = [{**r, "objective": r["proxy_mAP"], "val_mAP": None} for r in _rows()]
    best, summary = summarise(spec, "proxy_mAP", rows, {})
    assert summary["objective_is_proxy"] and summary["warning"] == PROXY_WARNING
    assert summary["proxy_vs_labeled_spearman"] is None
    assert "**Warning:**" in summary_markdown(spec, "proxy_mAP", rows, best, summary)


def test_best_config_is_a_runnable_config(make_config, tmp_path):
    base = make_config("data.s3_endpoint=http://127.0.0.1:9000", "labels.alpha=0.4")
    spec = parse_sweep_spec({"sweep_id": "s", "params": {"alpha": [0.2, 0.6]}}, base)
    text = best_config_yaml(base, spec, {"trial": "b", "alpha": 0.6, "objective": 70.0})
    path = tmp_path / "best.yaml"
    path.write_bytes(text)
    cfg = load_config(path)
    assert cfg.labels.alpha == 0.6 and cfg.run_id == "s-best"
    assert cfg.train == base.train and cfg.data.s3_endpoint == base.data.s3_endpoint
    assert yaml.safe_load(text)["labels"]["alpha"] == 0.6


@pytest.mark.parametrize("args, message", [
    (["--grid", "delta=1,2"], "unknown parameter 'delta'"),
    (["--grid", "alpha="], "the grid is empty"),
    (["--grid", "alpha=0.5,1.5"], "labels.alpha: 1.5 is out of range"),
    (["--range", "gamma=2:1"], "expected low < high"),
    ([], "name at least one of alpha, gamma, beta"),
])
def test_sweep_cli_refuses_bad_specs(tmp_path, capsys, args, message):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"classes": {"names": ["a", "b"]},
                                      "data": {"corpus_uri": str(tmp_path)}}))
    assert load_job("sweep").main(["--config", str(config), *args]) == 2
    assert message in capsys.readouterr().err
