"""Summary math of a sweep, pure Python/NumPy: the best trial and the table of what each
parameter makes a trial recompute (Spearman lives in metrics)."""

from __future__ import annotations

import math
from typing import Any

# What a change of each parameter invalidates, in the order the method computes things. "exact"
# means a cached trial computes the same numbers a full run with that value would.
DEPENDENCIES = [
    ("round-0 raw scores (global view + random crops, CLIP)", "none", "cached once; exact"),
    ("bias vector (from round-0 raw scores)", "none", "re-derived, no CLIP; exact"),
    ("round-0 labels = debias(raw, bias, gamma)", "gamma", "re-derived, no CLIP; exact"),
    ("warm-up classifier (trained on round-0 labels)", "gamma", "retrained per trial; exact"),
    ("CAM boxes of round R (classifier after segment R-1)",
     "gamma (R=1); alpha, gamma, beta (R>=2)",
     "taken from the base config's classifier: exact only for trials with the base's values"),
    ("round-R raw scores (box-guided views, CLIP)", "the boxes", "cached once for the base boxes"),
    ("round-R labels = fuse(prev, debias(raw_R), alpha)", "alpha, gamma",
     "re-derived, no CLIP; exact given the boxes"),
    ("classifier after warm-up (consistency weight)", "alpha, gamma, beta",
     "retrained per trial; exact given the labels"),
]


def best_trial(rows: list[dict[str, Any]], metric: str, mode: str = "max") -> dict[str, Any]:
    """The row with the best finite metric among completed trials (all trials if none
    completed); ties go to the first row, so the choice is stable."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode {mode!r}: expected 'max' or 'min'")
    scored = [r for r in rows if _finite(r.get(metric))]
    completed = [r for r in scored if r.get("status") == "completed"]
    pool = completed or scored
    if not pool:
        raise ValueError(f"no trial reported a finite {metric!r}")
    sign = 1 if mode == "max" else -1
    return max(pool, key=lambda r: sign * r[metric])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def dependencies_markdown() -> str:
    return markdown_table([{"quantity": q, "changes with": d, "in a cached sweep": h}
                           for q, d, h in DEPENDENCIES],
                          ["quantity", "changes with", "in a cached sweep"])
