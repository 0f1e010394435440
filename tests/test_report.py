"""The report: its table, the samples picture, and how it reads its samples."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from conftest import make_classifier

from ccd_ray.io.inputs_codec import encode_inputs
from ccd_ray.stages import report


class _Store:
    fs = pafs.LocalFileSystem()


def _write_inputs(folder, files: int, rows: int, holdout_every: int, size: int = 4,
                  garbage_after: int | None = None) -> None:
    for f in range(files):
        path = folder / f"part-{f:03d}.parquet"
        if garbage_after is not None and f >= garbage_after:
            path.write_bytes(b"not parquet" * 50)  # a reader that gets here fails
            continue
        pq.write_table(pa.table({
            "image_id": [f"img-{f:03d}-{i}" for i in range(rows)],
            "image": encode_inputs(np.zeros((rows, 3, size, size), np.uint8), "png", 95),
            "holdout": [i % holdout_every == 0 for i in range(rows)]}), path)


def test_sample_rows_stop_once_they_have_the_held_out_samples(tmp_path):
    # held-out rows every 3rd row: the 8 samples are in the first 2 files; every later file,
    # the very next one included, is not Parquet at all, so reading any of them would raise
    _write_inputs(tmp_path, files=8, rows=10, holdout_every=3, garbage_after=2)
    rows = report.sample_rows(_Store(), str(tmp_path))
    assert rows.column("image_id").to_pylist() == [
        "img-000-0", "img-000-3", "img-000-6", "img-000-9",
        "img-001-0", "img-001-3", "img-001-6", "img-001-9"]
    assert rows.column_names == ["image_id", "image"]


def test_sample_rows_fill_with_training_inputs_held_out_first(tmp_path):
    _write_inputs(tmp_path, files=2, rows=5, holdout_every=4)  # held out: rows 0 and 4
    ids = report.sample_rows(_Store(), str(tmp_path)).column("image_id").to_pylist()
    assert ids[:4] == ["img-000-0", "img-000-4", "img-001-0", "img-001-4"]
    assert ids[4:] == ["img-000-1", "img-000-2", "img-000-3", "img-001-1"]


def test_class_colours_stay_distinct_beyond_ten_classes():
    for count in (1, 10, 11, 20, 80):
        colours = report.class_colours(count)
        assert len(colours) == count
        assert len({tuple(np.round(c, 6)) for c in colours}) == count, count


def _sample_table(count: int, size: int = 64) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table({"image_id": [f"img-{i}" for i in range(count)],
                     "image": encode_inputs(rng.integers(0, 255, (count, 3, size, size),
                                                         dtype=np.uint8), "png", 95)})


def test_samples_figure_shows_truth_and_marks_boxes_below_threshold(make_config):
    names = [f"class{c}" for c in range(12)]
    cfg = make_config(f"classes.names={names}")
    _, checkpoint = make_classifier(names, seed=3)
    rows = _sample_table(3)
    truth = {"img-0": ["class1", "class11"], "img-1": []}  # img-2 has none recorded
    # thresholds above every probability: only each image's top class is boxed, dashed
    fig = report.samples_figure(cfg, rows, checkpoint, np.full(12, 1.0, np.float32), truth)
    axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in axes] == ["img-0\ntruth: class1, class11",
                                               "img-1\ntruth: none", "img-2"]
    for ax in axes:
        assert len(ax.patches) == 1
        assert ax.patches[0].get_linestyle() == "--"
        assert "< 1.00" in ax.texts[0].get_text()
    # thresholds at 0: every class is boxed, drawn solid, in twelve distinct colours
    fig = report.samples_figure(cfg, rows, checkpoint, np.zeros(12, np.float32), truth)
    ax = [ax for ax in fig.axes if ax.images][0]
    assert len(ax.patches) == 12
    assert {p.get_linestyle() for p in ax.patches} == {"-"}
    assert len({p.get_edgecolor() for p in ax.patches}) == 12
    assert not any("<" in t.get_text() for t in ax.texts)


def _metrics(rounds: int = 1) -> dict:
    row = {"images": 10, "mAP": 50.0, "CF1": 40.0, "OF1": 45.0}
    return {"ground_truth_images": 12, "teacher_before_debias": {**row, "mAP": 61.0},
            "teacher_holdout": {**row, "images": 2}, "final_labels": {**row, "mAP": 71.0},
            "rounds": [{"round": r, **row} for r in range(rounds + 1)],
            "classifier_holdout": {**row, "images": 2, "mAP": 33.0}}


def _table(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ")][2:]  # no header


def test_report_table_starts_with_the_teachers_zero_shot(make_config):
    cfg = make_config("labels.final_source=fusion", "labels.threshold_rule=fixed")
    text = report.report_markdown(cfg, _metrics())
    rows = _table(text)
    assert rows[0] == "| teacher zero-shot (same views) | training | 10 | 61.0 | 40.0 | 45.0 |"
    assert [" | ".join(r.split(" | ")[:2]) for r in rows[1:]] == [
        "| pseudo-labels, round 0 | training", "| pseudo-labels, round 1 | training",
        "| final labels (fusion) | training", "| teacher zero-shot (same views) | held-out",
        "| classifier | held-out"]
    assert rows[3] == "| final labels (fusion) | training | 10 | 71.0 | 40.0 | 45.0 |"
    assert "`labels.final_source=fusion`" in text
    assert "ground-truth labels" not in text
    assert "at threshold 0.5" in text
    text = report.report_markdown(make_config("labels.threshold_rule=otsu"), _metrics())
    assert "`labels.threshold_rule=otsu`" in text and "at threshold" not in text
    text = report.report_markdown(make_config("labels.threshold_rule=count"), _metrics())
    assert "`labels.threshold_rule=count`" in text and "teacher's zero-shot scores" in text


def test_report_says_when_the_classifier_trained_on_ground_truth(make_config):
    cfg = make_config("train.targets=ground_truth")
    text = report.report_markdown(cfg, _metrics())
    assert "trained on the corpus's ground-truth labels" in text
    rounds = [r for r in _table(text) if r.startswith("| pseudo-labels")]
    assert len(rounds) == 2 and all("(not trained on)" in r for r in rounds)


def test_report_without_truth_names_the_final_labels(make_config):
    text = report.report_markdown(make_config("labels.final_source=pseudo"),
                                  {"ground_truth_images": 0, "rounds": []})
    assert "`final/labels/`" in text and "`labels.final_source=pseudo`" in text
    assert "nothing to score" in text and not _table(text)


def test_names_with_dollars_are_drawn_as_written(make_config, tmp_path):
    """A class name or image id holding '$' is text, not mathtext: the whole report is
    written (matplotlib raised ParseSyntaxException on '$\\frac$' after every stage had run)."""
    names = ["cat", "$\\frac$", "a$b"]
    cfg = make_config(f"classes.names={names}", "labels.threshold_rule=fixed")
    _, checkpoint = make_classifier(names, seed=0)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    ids = ["m00$\\frac$.png", "dollar$$sign", "plain"]
    pq.write_table(pa.table({"image_id": ids,
                             "image": encode_inputs(np.zeros((3, 3, 64, 64), np.uint8), "png", 95),
                             "holdout": [True, False, True]}), inputs / "part-000.parquet")
    ap = {"per_class_AP": {n: 50.0 for n in names}}
    metrics = {**_metrics(), "thresholds": {"classifier": {n: 0.0 for n in names}}}
    for key in ("teacher_before_debias", "final_labels", "classifier_holdout"):
        metrics[key] = {**metrics[key], **ap}
    folder = tmp_path / "final"
    report.write_report(cfg, _Store(), str(folder), metrics, checkpoint, str(inputs),
                        {ids[0]: ["$\\frac$"], ids[1]: ["a$b"]})
    assert {p.name for p in folder.iterdir()} == {"map_per_round.png", "per_class_ap.png",
                                                  "samples.png", "report.md"}
