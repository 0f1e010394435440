"""Ray Tune sweeps of alpha, gamma and beta: the thin Ray layer over sweep.prepare (shared
stages), sweep.trial (one trial) and sweep.summary (the summary).

Layout under `<data.output_uri>/<sweep_id>/` (stages committed like a run's):
  sweep.yaml         the base config and the sweep spec (a rerun must match them)
  base/              train-inputs, and round-R/raw markers naming the score-cache entries
  tune/              Ray Tune's experiment (restored when the same sweep is run again)
  trials/<key>/      result.json of every trial that ran to its last epoch
  summary/           summary.md, summary.json, trials.csv, objective_vs_params.png,
                     best-config.yaml
Teacher scores live in `<data.output_uri>/score-cache/`, shared by every run and sweep."""

from __future__ import annotations

import json
import os
import posixpath
import time
import warnings
from dataclasses import dataclass
from typing import Any

import ray
import torch
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from ccd_ray.config import CCDConfig, ConfigError, config_from_dict
from ccd_ray.io.storage import RunStore, exists, read_bytes, write_bytes, write_json
from ccd_ray.method.local import CachedScores, TeacherScores
from ccd_ray.sweep import summary as sweep_report
from ccd_ray.sweep.prepare import prepare, read_trial_result
from ccd_ray.sweep.spec import SweepSpec, apply_params, trial_key
from ccd_ray.sweep.trial import TrialData, run_trial

TUNE_NAME = "tune"
SUMMARY_STAGE = "summary"


def log(message: str) -> None:
    print(f"[ccd-ray sweep] {message}", flush=True)


@dataclass
class SweepOutcome:
    store: RunStore
    summary_folder: str
    best: dict[str, Any]
    summary: dict[str, Any]


def _check_sweep_config(cfg: CCDConfig, spec: SweepSpec, store: RunStore) -> None:
    """Write the sweep's config once; the same sweep id must keep the same method and spec,
    or its committed trials and Tune state would describe a different sweep."""
    path = store.path("sweep.yaml")
    current = json.loads(json.dumps({"base": cfg.to_dict(), "spec": spec.to_dict()}))
    if exists(store.fs, path):
        previous = yaml.safe_load(read_bytes(store.fs, path))
        sections = ("classes", "teacher", "initial", "labels", "relabel", "train", "seed")
        changed = sorted([k for k in sections if previous["base"].get(k) != current["base"][k]]
                         + (["sweep spec"] if previous["spec"] != current["spec"] else []))
        if changed:
            raise ConfigError(f"sweep {spec.sweep_id!r} already exists with different settings "
                              f"in {changed}; use a new sweep id or the original settings")
        return
    write_bytes(store.fs, path, yaml.safe_dump(current, sort_keys=False).encode())


def param_space(spec: SweepSpec) -> dict[str, Any]:
    space = {}
    for p in spec.params:
        if p.is_grid:
            space[p.name] = tune.grid_search(list(p.grid))
        else:
            space[p.name] = (tune.loguniform if p.log else tune.uniform)(p.low, p.high)
    return space


def fitted_concurrency(spec: SweepSpec, resources: dict[str, float]) -> int:
    """Trials that fit the cluster at once (CPUs, and GPUs when trials take them), capped by
    the spec and by the number of trials."""
    fit = max(1, int(resources.get("CPU", 1) // spec.cpus_per_trial))
    if spec.gpus_per_trial > 0:
        fit = min(fit, max(1, int(resources.get("GPU", 0) // spec.gpus_per_trial)))
    if spec.max_concurrent_trials:
        fit = min(fit, spec.max_concurrent_trials)
    return max(1, min(fit, spec.trial_count()))


def _trainable(config: dict[str, Any], data: TrialData, context: dict[str, Any]) -> None:
    """One Tune trial: reuse its committed result, or train it and commit the result."""
    torch.set_num_threads(max(1, int(context["cpus_per_trial"])))
    base = config_from_dict(context["cfg"])
    params = {name: float(config[name]) for name in context["names"]}
    cfg = apply_params(base, params)
    key = trial_key(params)
    store = RunStore.open(base.data.output_uri, context["sweep_id"], base.data)
    stage = posixpath.join("trials", key)
    done = read_trial_result(store, stage)
    if done is not None:  # a rerun of the sweep: this trial finished before
        tune.report({**done["final"], "trial_key": key, "reused": True})
        return
    if context["cache"]:
        source = CachedScores(data.raw)
    else:
        from ccd_ray.method.teacher import Teacher

        source = TeacherScores(data.images, data.ids,
                               lambda: Teacher.from_config(cfg.teacher, cfg.classes))
    history: list[dict[str, Any]] = []

    def report(metrics: dict[str, Any]) -> None:
        history.append(metrics)
        if metrics["epoch"] == cfg.train.epochs - 1:
            # committed before the last report: ASHA stops a trial at its last epoch (max_t)
            # inside that report, so nothing after it would run
            attempt = store.begin(stage)
            write_json(store.fs, posixpath.join(attempt, "result.json"),
                       {"params": params, "final": metrics, "history": history})
            store.commit(stage, attempt, {"objective": metrics["objective"]})
        tune.report({**metrics, "trial_key": key, "reused": False})

    run_trial(cfg, data, source, report, context["objective"])


def _tuner(cfg: CCDConfig, spec: SweepSpec, store: RunStore, data: TrialData, objective: str
           ) -> tune.Tuner:
    context = {"cfg": cfg.to_dict(), "names": spec.names, "sweep_id": spec.sweep_id,
               "cache": spec.cache, "objective": objective,
               "cpus_per_trial": spec.cpus_per_trial}
    resources = {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trainable, data=data, context=context),
                                    resources)
    path = store.path(TUNE_NAME)
    if tune.Tuner.can_restore(path, storage_filesystem=store.fs):
        log(f"resuming the Tune experiment at {path}")
        return tune.Tuner.restore(path, trainable, resume_errored=True,
                                  storage_filesystem=store.fs)
    concurrency = fitted_concurrency(spec, ray.cluster_resources())
    log(f"{spec.trial_count()} trial(s), {concurrency} at a time, each {spec.cpus_per_trial} "
        f"CPU / {spec.gpus_per_trial} GPU; ASHA grace {spec.grace_period} epoch(s), "
        f"reduction {spec.reduction_factor}")
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs,
                              grace_period=spec.grace_period,
                              reduction_factor=spec.reduction_factor)
    return tune.Tuner(
        trainable, param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric="objective", mode="max", scheduler=scheduler,
                                    num_samples=spec.num_samples,
                                    max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=store.root,
                                  storage_filesystem=store.fs, verbose=0))


def _rows(results: tune.ResultGrid, spec: SweepSpec, store: RunStore) -> list[dict[str, Any]]:
    """One row per trial: its values, last reported metrics and how it ended. A trial whose
    result is committed ran to its last epoch; one without, stopped by ASHA or failed."""
    rows = []
    for result in results:
        params = {name: float(result.config[name]) for name in spec.names}
        key = trial_key(params)
        committed = read_trial_result(store, posixpath.join("trials", key))
        metrics = committed["final"] if committed else (result.metrics or {})
        status = "completed" if committed else ("error" if result.error else "stopped")
        row = {"trial": key, **params, "status": status}
        row.update({k: metrics.get(k) for k in sweep_report.TABLE_METRICS if k != "status"})
        if result.error:
            row["error"] = f"{type(result.error).__name__}: {result.error}"[:500]
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _write_summary(cfg: CCDConfig, spec: SweepSpec, store: RunStore, objective: str,
                   rows: list[dict[str, Any]], facts: dict[str, Any]
                   ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    best, summary = sweep_report.summarise(spec, objective, rows, facts)
    attempt = store.begin(SUMMARY_STAGE)
    files = {
        "summary.md": sweep_report.summary_markdown(spec, objective, rows, best, summary)
        .encode(),
        "summary.json": json.dumps(summary, indent=2, sort_keys=True, default=float).encode(),
        "trials.csv": sweep_report.trials_csv(rows, sweep_report.trial_columns(spec)),
        "objective_vs_params.png": sweep_report.plot_objective(rows, spec, objective, best),
        "best-config.yaml": sweep_report.best_config_yaml(cfg, spec, best),
    }
    for name, content in files.items():
        write_bytes(store.fs, posixpath.join(attempt, name), content)
    store.commit(SUMMARY_STAGE, attempt, {"best": best["trial"], "objective": objective})
    return attempt, best, summary


def run_sweep(cfg: CCDConfig, spec: SweepSpec) -> SweepOutcome:
    """Run (or resume) the sweep; Ray must be initialised."""
    started = time.time()
    store = RunStore.open(cfg.data.output_uri, spec.sweep_id, cfg.data)
    log(f"sweep {spec.sweep_id!r}: {'; '.join(p.describe() for p in spec.params)} -> {store.root}")
    _check_sweep_config(cfg, spec, store)
    objective = "val_mAP" if spec.validation.given else "proxy_mAP"
    if objective == "proxy_mAP":
        warnings.warn(sweep_report.PROXY_WARNING, stacklevel=2)
        log("WARNING: " + sweep_report.PROXY_WARNING)
    data, facts = prepare(cfg, spec, store, log)
    facts["base_seconds"] = round(time.time() - started, 2)  # inputs + base scores, if any
    # Tune's own progress tables would repeat every trial's metrics on every report; the
    # summary has them. Legacy output at verbose=0 prints nothing (read when fit() starts).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tune_started = time.time()
    results = _tuner(cfg, spec, store, data, objective).fit()
    facts["tune_seconds"] = round(time.time() - tune_started, 2)
    rows = _rows(results, spec, store)
    facts = {**facts, "seconds": round(time.time() - started, 2),
             "trial_teacher_forward_passes": sum(r.get("teacher_forward_passes") or 0
                                                 for r in rows)}
    folder, best, summary = _write_summary(cfg, spec, store, objective, rows, facts)
    log(f"best {best['trial']}: {objective} {best['objective']:.3f}; summary in {folder}")
    return SweepOutcome(store, folder, best, summary)
