"""The label-quality benchmark's paired table (benchmarks/quality.py): per-seed gains and the
bound ratio from metrics.json dicts, mean +- std over seeds, targets and PASS/FAIL, on
hand-made metrics (no run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    yield load_script(SCRIPT, "quality_benchmark", register=True)
    del sys.modules["quality_benchmark"]


def scores(mAP: float, CF1: float, OF1: float = 50.0) -> dict:
    return {"mAP": mAP, "CF1": CF1, "OF1": OF1, "images": 10}


def ccd_metrics(teacher, final, teacher_holdout, classifier) -> dict:
    """A metrics.json of a run, as evaluate_run writes it (the keys the benchmark reads)."""
    return {"teacher_before_debias": scores(*teacher), "final_labels": scores(*final),
            "teacher_holdout": scores(*teacher_holdout),
            "classifier_holdout": scores(*classifier), "rounds": []}


def bound_metrics(classifier_map: float) -> dict:
    # the bound's own labels and teacher scores must not enter any figure
    return ccd_metrics((1, 1), (1, 1), (1, 1), (classifier_map, 99.0))


def test_seed_figures_are_the_paired_differences_and_the_ratio(quality):
    ccd = ccd_metrics(teacher=(70.0, 60.0), final=(75.5, 72.0), teacher_holdout=(78.0, 71.0),
                      classifier=(74.0, 63.0))
    figures = quality.seed_figures(ccd, bound_metrics(80.0))
    assert figures == pytest.approx({"labels_gain_mAP": 5.5, "labels_gain_CF1": 12.0,
                                     "classifier_gain_mAP": -4.0, "classifier_gain_CF1": -8.0,
                                     "labels_of_bound_pct": 100 * 75.5 / 80.0})


def test_summary_is_mean_and_population_std_over_seeds_with_pass_fail(quality):
    per_seed = {
        # seed 2 listed first: rows keep seed order
        2: {"labels_gain_mAP": 5.0, "labels_gain_CF1": 8.0, "classifier_gain_mAP": -1.0,
            "classifier_gain_CF1": 3.0, "labels_of_bound_pct": 95.0},
        0: {"labels_gain_mAP": 1.0, "labels_gain_CF1": 12.0, "classifier_gain_mAP": 2.0,
            "classifier_gain_CF1": -3.0, "labels_of_bound_pct": 85.0},
    }
    rows = {r["key"]: r for r in quality.summary_rows(per_seed)}
    gain = rows["labels_gain_mAP"]
    assert gain["values"] == [1.0, 5.0]
    assert gain["mean"] == pytest.approx(3.0)
    assert gain["std"] == pytest.approx(2.0)  # ddof=0; ddof=1 would be 2.83
    assert gain["target"] == 3.0 and gain["passed"] is True  # the mean exactly at the target
    assert rows["labels_gain_CF1"]["mean"] == pytest.approx(10.0)
    assert rows["labels_gain_CF1"]["passed"] is True
    assert rows["classifier_gain_mAP"]["mean"] == pytest.approx(0.5)
    assert rows["classifier_gain_mAP"]["passed"] is True
    assert rows["classifier_gain_CF1"]["target"] is None
    assert rows["classifier_gain_CF1"]["passed"] is None
    assert rows["labels_of_bound_pct"]["mean"] == pytest.approx(90.0)
    assert rows["labels_of_bound_pct"]["passed"] is True


def test_a_mean_below_its_target_fails(quality):
    figures = {"labels_gain_mAP": 2.9, "labels_gain_CF1": 9.9, "classifier_gain_mAP": -0.1,
               "classifier_gain_CF1": 0.0, "labels_of_bound_pct": 89.9}
    rows = quality.summary_rows({0: figures, 1: figures})
    assert [r["passed"] for r in rows] == [False, False, False, None, False]
    assert all(r["std"] == 0.0 for r in rows)


def test_markdown_shows_values_targets_and_results(quality):
    ccd = ccd_metrics((70.0, 60.0), (74.0, 71.0), (78.0, 71.0), (79.0, 75.0))
    results = {0: {"ccd": ccd, "bound": bound_metrics(80.0)}}
    rows = quality.summary_rows({0: quality.seed_figures(ccd, results[0]["bound"])})
    text = quality.markdown(rows, quality.absolute_rows(results), [0], "header line")
    lines = {line.split(" | ")[0]: line for line in text.splitlines()}
    assert text.startswith("header line\n")
    assert lines["| final labels - teacher zero-shot, mAP (training split)"].endswith(
        "| +4.0 +- 0.0 | +4.0 | >= +3 | PASS |")
    assert lines["| final labels - teacher zero-shot, CF1 (training split)"].endswith(
        "| +11.0 +- 0.0 | +11.0 | >= +10 | PASS |")
    assert lines["| classifier - teacher zero-shot, CF1 (held-out split)"].endswith("| - | - |")
    assert lines["| final labels mAP / bound's classifier mAP (%)"].endswith(
        "| 92.5 +- 0.0 | 92.5 | >= 90% | PASS |")
    assert lines["| bound's classifier (held-out split)"] == (
        "| bound's classifier (held-out split) | 80.0 +- 0.0 | 99.0 +- 0.0 | 50.0 +- 0.0 |")


def test_a_run_without_ground_truth_scores_is_named(quality):
    ccd = ccd_metrics((70.0, 60.0), (74.0, 71.0), (78.0, 71.0), (79.0, 75.0))
    del ccd["final_labels"]
    with pytest.raises(ValueError, match="run 'ccd seed 3' has no final_labels.mAP"):
        quality.seed_figures(ccd, bound_metrics(80.0), seed=3)


def test_set_of_a_key_the_benchmark_owns_is_refused(quality, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--tag", "t", "--set", "train.targets=ground_truth"])
    assert "the benchmark sets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.parse_args(["--set", "labels.alpha=0.2"])  # a variant needs its own --tag
    assert quality.parse_args(["--tag", "t", "--set", "labels.alpha=0.2"]).set == [
        "labels.alpha=0.2"]
