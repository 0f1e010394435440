"""A small Ray Tune sweep (2 alpha x 2 gamma) on the shared test Ray instance, against the S3
endpoint on loopback: summary files, the best config, zero CLIP passes in the trials, the
score cache, and a rerun of the same sweep id that redoes nothing."""

from __future__ import annotations

import posixpath
from types import SimpleNamespace

import pytest
import yaml
from conftest import tree

from ccd_ray.config import load_config
from ccd_ray.io.packing import synthetic_records, write_shards
from ccd_ray.io.storage import RunStore, filesystem_for, read_bytes, read_json
from ccd_ray.stages.score_cache import CACHE_FOLDER
from ccd_ray.sweep.spec import parse_sweep_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CORPUS = "sweep/corpus"
N_IMAGES = 16
SPEC = {"sweep_id": "sweep-test", "params": {"alpha": [0.2, 0.6], "gamma": [0.5, 1.5]},
        "validation": {"from_corpus": 6}, "cpus_per_trial": 1}
SUMMARY_FILES = {"summary.md", "summary.json", "trials.csv", "objective_vs_params.png",
                 "best-config.yaml"}


@pytest.fixture(scope="module")
def sweep_cfg(s3_config):
    cfg = s3_config(CORPUS, "run_id=sweep-base", "train.image_size=32", "train.epochs=2",
                    "train.warmup_epochs=1", "train.batch_size=4", "train.holdout_fraction=0.5")
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    write_shards(synthetic_records(N_IMAGES, seed=9, size=64, max_objects=2), fs, root, 8)
    return cfg


def _cache_entries(cfg) -> dict[str, int]:
    """The score-cache entries of cfg's corpus (the cache is shared with the runs of the other
    test modules, on other corpora): entry name -> size of its marker."""
    store = RunStore.open(cfg.data.output_uri, CACHE_FOLDER, cfg.data)
    markers = {posixpath.dirname(p): size for p, size in tree(store.fs, store.root).items()
               if p.endswith("_COMMITTED.json") and "/shards/" not in p}
    return {entry: size for entry, size in markers.items()
            if store.marker(entry)["key"]["corpus"] == cfg.data.corpus_uri}


@pytest.fixture(scope="module")
def first_run(ray_session, sweep_cfg):
    from ccd_ray.sweep.tune import run_sweep

    spec = parse_sweep_spec(SPEC, sweep_cfg)
    outcome = run_sweep(sweep_cfg, spec)
    return SimpleNamespace(spec=spec, outcome=outcome, cache=_cache_entries(sweep_cfg),
                           trials=tree(outcome.store.fs, outcome.store.root, "trials"))


def test_summary_files_and_best_config(first_run, sweep_cfg):
    store, folder = first_run.outcome.store, first_run.outcome.summary_folder
    assert store.committed("summary") == folder
    assert set(tree(store.fs, folder)) == SUMMARY_FILES
    summary = read_json(store.fs, posixpath.join(folder, "summary.json"))
    assert summary["objective"] == "val_mAP" and summary["objective_is_proxy"] is False
    assert summary["validation_images"] == 6
    assert len(summary["trials"]) == 4
    assert {(t["alpha"], t["gamma"]) for t in summary["trials"]} == {
        (a, g) for a in (0.2, 0.6) for g in (0.5, 1.5)}
    assert any(t["status"] == "completed" for t in summary["trials"]), summary["trials"]
    best = summary["best"]
    assert best["objective"] == max(t["objective"] for t in summary["trials"]
                                    if t["status"] == "completed")
    # proxy vs labeled rank correlation is reported (a number, or None if undefined)
    assert "proxy_vs_labeled_spearman" in summary

    text = read_bytes(store.fs, posixpath.join(folder, "best-config.yaml")).decode()
    assert "testing" not in text and "secret" not in text.lower()  # no credentials
    cfg = load_config(overrides=[], base=yaml.safe_load(text))
    assert (cfg.labels.alpha, cfg.labels.gamma) == (best["alpha"], best["gamma"])
    assert cfg.run_id == "sweep-test-best"
    assert cfg.train.beta == sweep_cfg.train.beta
    assert cfg.data.corpus_uri == sweep_cfg.data.corpus_uri
    csv_lines = read_bytes(store.fs, posixpath.join(folder, "trials.csv")).decode().splitlines()
    assert csv_lines[0].startswith("trial,alpha,gamma,objective") and len(csv_lines) == 5
    md = read_bytes(store.fs, posixpath.join(folder, "summary.md")).decode()
    assert "What each parameter makes a trial recompute" in md
    png = read_bytes(store.fs, posixpath.join(folder, "objective_vs_params.png"))
    assert png.startswith(b"\x89PNG")


def test_alpha_gamma_trials_run_no_clip(first_run):
    summary = first_run.outcome.summary
    # the base stages ran the teacher (a fresh cache) ...
    assert summary["base_teacher_passes_this_run"] > 0
    assert {r: v["teacher_passes_when_computed"] > 0
            for r, v in summary["base_rounds"].items()} == {"0": True, "1": True}
    # ... and no trial did: every trial's counter is 0, and the cache holds exactly the base's
    # two entries (round-0 views, round-1 box-guided views)
    assert [t["teacher_forward_passes"] for t in summary["trials"]] == [0] * 4
    assert summary["trial_teacher_forward_passes"] == 0
    assert len(first_run.cache) == 2
    assert sorted(k.split("-")[0] for k in first_run.cache) == ["guided", "initial"]


def test_rerun_of_the_same_sweep_redoes_nothing(first_run, sweep_cfg):
    from ccd_ray.sweep.tune import run_sweep

    outcome = run_sweep(sweep_cfg, first_run.spec)
    assert outcome.summary["base_teacher_passes_this_run"] == 0
    assert _cache_entries(sweep_cfg) == first_run.cache
    # committed trial results are untouched (same attempts, same files)
    assert tree(outcome.store.fs, outcome.store.root, "trials") == first_run.trials
    assert outcome.best["trial"] == first_run.outcome.best["trial"]
    assert outcome.best["objective"] == first_run.outcome.best["objective"]


def test_a_changed_spec_under_the_same_sweep_id_is_refused(first_run, sweep_cfg):
    from ccd_ray.config import ConfigError
    from ccd_ray.sweep.tune import run_sweep

    spec = parse_sweep_spec({**SPEC, "params": {"alpha": [0.3]}}, sweep_cfg)
    with pytest.raises(ConfigError, match="already exists with different settings"):
        run_sweep(sweep_cfg, spec)


def test_lost_tune_state_reuses_committed_trials(first_run, sweep_cfg):
    """Tune's experiment gone and one trial's result lost (as after a crash mid-sweep): the
    rerun starts a new experiment, trains the lost trial again and reports the others'
    committed results unchanged."""
    from ccd_ray.sweep.tune import run_sweep

    store = first_run.outcome.store
    committed = sorted({p.split("/")[1] for p in first_run.trials})
    assert committed, "no trial of the first run was committed"
    lost = committed[0]
    store.fs.delete_dir(store.path("tune"))
    store.fs.delete_dir(store.path("trials", lost))
    outcome = run_sweep(sweep_cfg, first_run.spec)
    after = tree(store.fs, store.root, "trials")

    kept = set(committed) - {lost}

    def kept_trials(files):
        # ASHA's stops depend on the order trials report in, so a trial the first run
        # stopped uncommitted may run to its end in the rerun: compare only the trials the
        # first run committed and kept.
        return {p: size for p, size in files.items() if p.split("/")[1] in kept}

    assert kept_trials(after) == kept_trials(first_run.trials)  # not redone
    rows = {t["trial"]: t for t in outcome.summary["trials"]}
    assert len(rows) == 4 and rows[lost]["status"] in ("completed", "stopped")
    if rows[lost]["status"] == "completed":  # seeded: the retrained trial gives the same result
        assert any(p.startswith(f"trials/{lost}/") for p in after)
        before = {t["trial"]: t for t in first_run.outcome.summary["trials"]}
        assert rows[lost]["objective"] == pytest.approx(before[lost]["objective"])
    assert outcome.summary["base_teacher_passes_this_run"] == 0


def test_best_config_rerun_as_the_job_reproduces_the_trial(ray_session, sweep_cfg):
    """A sweep of alpha alone (its cached trials are exact: the round-1 boxes depend on gamma
    only), then the best trial's best-config.yaml run as the job (Ray Data stages, Ray Train):
    the job's classifier scores the sweep's validation images exactly as the trial's did."""
    from ccd_ray.io.corpus import corpus_truth
    from ccd_ray.method.classifier import load_classifier
    from ccd_ray.method.local import predict_pixels
    from ccd_ray.method.metrics import mean_average_precision, truth_matrix
    from ccd_ray.stages.pipeline import run_ccd
    from ccd_ray.sweep.prepare import read_inputs
    from ccd_ray.sweep.tune import run_sweep

    spec = parse_sweep_spec({**SPEC, "sweep_id": "sweep-repro", "params": {"alpha": [0.2, 0.7]},
                             "grace_period": 2}, sweep_cfg)
    outcome = run_sweep(sweep_cfg, spec)
    best = outcome.best
    text = read_bytes(outcome.store.fs, posixpath.join(outcome.summary_folder,
                                                       "best-config.yaml")).decode()
    cfg = load_config(overrides=[], base=yaml.safe_load(text))
    assert cfg.labels.alpha == best["alpha"] and cfg.labels.gamma == sweep_cfg.labels.gamma
    store = run_ccd(cfg)

    import io

    inputs = read_inputs(store, store.committed("train-inputs"), cfg.train.image_size)
    truth = corpus_truth(cfg)
    held = [i for i, h in zip(inputs.ids, inputs.holdout) if h and i in truth][:6]
    val_ids = sorted(held)
    row = {image_id: r for r, image_id in enumerate(inputs.ids)}
    model, _, _ = load_classifier(io.BytesIO(read_bytes(store.fs, posixpath.join(
        store.committed("final"), "classifier.pt"))))
    probs = predict_pixels(model, inputs.pixels[[row[i] for i in val_ids]])
    job_map = 100 * mean_average_precision(probs, truth_matrix(truth, val_ids,
                                                                cfg.classes.names))
    assert best["status"] == "completed"
    assert job_map == pytest.approx(best["val_mAP"], abs=1e-6)
    # the job's raw stages are the sweep base's score-cache entries: its warm-up classifier is
    # the base's to the bit, so its round-1 views are the base's and neither round ran CLIP
    base_rounds = outcome.summary["base_rounds"]
    for round_index in (0, 1):
        marker = store.marker(f"round-{round_index}/raw")
        assert marker["cache_entry"] == base_rounds[str(round_index)]["cache_entry"]
        assert marker["teacher_passes_run"] == 0
