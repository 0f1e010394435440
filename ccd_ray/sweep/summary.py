"""A sweep's summary files: the trial table (CSV and Markdown), a plot of the objective against
each swept parameter, summary.json, and the best trial as a ready-to-run config. No Ray."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import yaml
from matplotlib.figure import Figure  # no pyplot: no GUI backend on cluster nodes

from ccd_ray.config import CCDConfig
from ccd_ray.method.metrics import spearman
from ccd_ray.sweep.spec import SweepSpec, apply_params
from ccd_ray.sweep.summary_math import best_trial, dependencies_markdown, markdown_table

PROXY_WARNING = ("objective is proxy_mAP, a PROXY: the classifier's mAP against the teacher's "
                 "own box-guided verdicts on held-out images, not against true labels. It "
                 "rewards agreeing with the teacher; label a few hundred images "
                 "(sweep.validation.labels_uri) for a real objective.")
TABLE_METRICS = ["objective", "val_mAP", "proxy_mAP", "epoch", "teacher_forward_passes",
                 "teacher_seconds", "seconds", "status"]


def trial_columns(spec: SweepSpec) -> list[str]:
    return ["trial"] + spec.names + TABLE_METRICS


def trials_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def plot_objective(rows: list[dict[str, Any]], spec: SweepSpec, objective: str,
                   best: dict[str, Any]) -> bytes:
    """One panel per swept parameter (objective against its value; the best trial starred),
    plus proxy against labeled mAP when both were measured."""
    both = [r for r in rows if _finite(r.get("val_mAP")) and _finite(r.get("proxy_mAP"))]
    panels = spec.names + (["proxy vs labeled"] if both else [])
    fig = Figure(figsize=(4 * len(panels), 3.4))
    for k, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        if name == "proxy vs labeled":
            ax.scatter([r["proxy_mAP"] for r in both], [r["val_mAP"] for r in both])
            ax.set_xlabel("proxy_mAP")
            ax.set_ylabel("val_mAP")
            ax.set_title("proxy vs labeled objective")
            continue
        for status, marker in (("completed", "o"), ("stopped", "x"), ("error", "s")):
            pts = [r for r in rows if r.get("status") == status and _finite(r.get(objective))]
            if pts:
                ax.scatter([r[name] for r in pts], [r[objective] for r in pts], marker=marker,
                           label=status)
        ax.scatter([best[name]], [best[objective]], marker="*", s=220, color="gold",
                   edgecolors="black", label="best", zorder=5)
        if spec.params[k].log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(objective)
        ax.set_title(f"{objective} vs {name}")
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def best_config_yaml(base: CCDConfig, spec: SweepSpec, best: dict[str, Any]) -> bytes:
    """The base config with the best trial's values, as a file `jobs/run_ccd.py --config`
    takes. The config carries no credentials (they are never part of it)."""
    params = {name: round(float(best[name]), 6) for name in spec.names}
    cfg = apply_params(base, params, run_id=f"{spec.sweep_id}-best")
    header = (f"# best trial of sweep {spec.sweep_id!r}: {best['trial']}\n"
              f"# {', '.join(f'{k}={v}' for k, v in params.items())}; objective "
              f"{best['objective']:.3f}\n")
    return (header + yaml.safe_dump(cfg.to_dict(), sort_keys=False)).encode()


def summary_markdown(spec: SweepSpec, objective: str, rows: list[dict[str, Any]],
                     best: dict[str, Any], facts: dict[str, Any]) -> str:
    lines = [f"# Sweep {spec.sweep_id}", "",
             f"Parameters: {'; '.join(p.describe() for p in spec.params)}. "
             f"Objective: `{objective}` (higher is better). Trials: {len(rows)}, cache: "
             f"{'on' if spec.cache else 'off'}.", ""]
    if objective == "proxy_mAP":
        lines += [f"**Warning:** {PROXY_WARNING}", ""]
    lines += [f"Best: `{best['trial']}` with objective {best['objective']:.3f} "
              "(config in `best-config.yaml`).", ""]
    if facts.get("proxy_vs_labeled_spearman") is not None:
        lines += [f"Spearman rank correlation of proxy_mAP with val_mAP over the trials: "
                  f"{facts['proxy_vs_labeled_spearman']:.3f}.", ""]
    lines += ["## Trials", "", markdown_table(rows, trial_columns(spec)), "",
              "## What each parameter makes a trial recompute", "", dependencies_markdown(), ""]
    return "\n".join(lines)


def summarise(spec: SweepSpec, objective: str, rows: list[dict[str, Any]],
              facts: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best row, summary.json content)."""
    best = best_trial(rows, objective, "max")
    both = [r for r in rows if _finite(r.get("val_mAP")) and _finite(r.get("proxy_mAP"))]
    rho = spearman([r["proxy_mAP"] for r in both], [r["val_mAP"] for r in both]) if both else None
    facts = {**facts, "proxy_vs_labeled_spearman": None if rho is None or not math.isfinite(rho)
             else rho}
    summary = {"sweep_id": spec.sweep_id, "objective": objective, "mode": "max",
               "objective_is_proxy": objective == "proxy_mAP",
               "warning": PROXY_WARNING if objective == "proxy_mAP" else None,
               "spec": spec.to_dict(), "best": best, "trials": rows, **facts}
    return best, summary
