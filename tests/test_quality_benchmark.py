"""The label-quality benchmark (benchmarks/quality.py): its worlds, the paired per-seed figures
from metrics dicts, mean +- std over seeds and the table's misses, on hand-made metrics (no
run); and one tiny world run end to end through the round loop and the job's evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    yield load_script(SCRIPT, "quality_benchmark", register=True)
    del sys.modules["quality_benchmark"]


def scores(mAP: float, CF1: float, OF1: float = 50.0) -> dict:
    return {"mAP": mAP, "CF1": CF1, "OF1": OF1, "images": 10}


def ccd_metrics(teacher, final, teacher_holdout, classifier, round0=(60.0, 50.0)) -> dict:
    """A metrics dict of a run, as evaluate_run writes it (the keys the benchmark reads)."""
    return {"teacher_before_debias": scores(*teacher), "final_labels": scores(*final),
            "teacher_holdout": scores(*teacher_holdout),
            "classifier_holdout": scores(*classifier), "rounds": [scores(*round0)]}


def bound_metrics(classifier_map: float) -> dict:
    # the bound's own labels and teacher scores must not enter any figure
    return ccd_metrics((1, 1), (1, 1), (1, 1), (classifier_map, 99.0), (1, 1))


def test_seed_figures_are_paired_differences_and_ratios(quality):
    ccd = ccd_metrics(teacher=(70.0, 60.0), final=(75.5, 72.0), teacher_holdout=(78.0, 71.0),
                      classifier=(74.0, 63.0), round0=(69.0, 61.0))
    figures = quality.seed_figures(ccd, bound_metrics(85.0))
    assert figures["labels_gain_mAP"] == pytest.approx(5.5)
    assert figures["labels_gain_CF1"] == pytest.approx(12.0)
    assert figures["round0_minus_raw_mAP"] == pytest.approx(-1.0)
    assert figures["classifier_gain_mAP"] == pytest.approx(-4.0)
    assert figures["classifier_of_bound_pct"] == pytest.approx(100 * 74.0 / 85.0)
    assert figures["bound_gain_mAP"] == pytest.approx(7.0)


def test_summary_is_mean_and_population_std(quality):
    stats = quality.summary([{"a": 1.0}, {"a": 5.0}])["a"]
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["std"] == pytest.approx(2.0)  # ddof=0; ddof=1 would be 2.83
    assert stats["values"] == [1.0, 5.0]


def test_markdown_lists_tuning_then_test_worlds_and_marks_misses(quality):
    good = quality.seed_figures(ccd_metrics((70.0, 60.0), (74.0, 64.0), (78.0, 71.0),
                                            (79.0, 75.0), (70.0, 60.0)), bound_metrics(85.0))
    bad = quality.seed_figures(ccd_metrics((70.0, 60.0), (71.0, 61.0), (78.0, 71.0),
                                           (70.0, 75.0), (70.0, 60.0)), bound_metrics(80.0))
    results = {"x": {"role": "test", "per_seed": [bad], "summary": quality.summary([bad])},
               "y": {"role": "tuning", "per_seed": [good], "summary": quality.summary([good])}}
    text = quality.markdown(results, "header line")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "world" not in line]
    assert text.startswith("header line\n")
    assert rows[0].startswith("| y | tuning | 70.0 | 74.0 | +4.0 +- 0.0 | +4.0 +- 0.0 |")
    assert "(miss)" not in rows[0]
    assert rows[1].startswith("| x | test | 70.0 | 71.0 | +1.0 +- 0.0 (miss) | +1.0 +- 0.0 (miss)")
    assert "+2.0 +- 0.0 (miss)" in rows[1]  # the bound only 2 above the teacher: not a valid world


def test_world_class_frequencies(quality):
    uniform = quality.World("test", "u")
    assert uniform.class_probs(0) is None
    tail = quality.World("test", "t", zipf=1.0).class_probs(0)
    assert tail.sum() == pytest.approx(1.0)
    assert sorted(tail, reverse=True)[0] / sorted(tail)[0] == pytest.approx(10.0)
    assert {w.role for w in quality.WORLDS.values()} == {"tuning", "test"}


def test_set_of_a_key_the_benchmark_owns_is_refused(quality, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--tag", "t", "--set", "train.targets=ground_truth"])
    assert "the benchmark sets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.parse_args(["--set", "labels.alpha=0.2"])  # a variant needs its own --tag
    assert quality.parse_args(["--tag", "t", "--set", "labels.alpha=0.2"]).set == [
        "labels.alpha=0.2"]


def test_a_world_corpus_is_decoded_sorted_and_follows_its_recipe(quality):
    world = quality.World("test", "tiny", images=12, max_objects=2, zipf=2.0)
    ids, images, truth = quality.world_corpus(world, 3)
    assert ids == sorted(ids) and len(ids) == len(images) == 12 == len(truth)
    assert images[0].shape[0] == 3 and str(images[0].dtype) == "torch.uint8"
    assert all(1 <= len(truth[i]) <= 2 for i in ids)
    again = quality.world_corpus(world, 3)
    assert again[0] == ids and np.array_equal(again[1][5].numpy(), images[5].numpy())
