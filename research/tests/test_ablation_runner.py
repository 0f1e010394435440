"""The ablation runner's settings, stage reuse and table (no Ray: the runs themselves are
the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from research import synth_ablation


@pytest.fixture(scope="module")
def ablation():
    return synth_ablation


def test_every_setting_is_a_valid_config_that_differs_from_full_ccd(ablation, tmp_path):
    configs = {name: ablation.setting_config(name, 0, tmp_path / "corpus", "local-dir:/t",
                                             tmp_path)
               for name in ablation.SETTINGS}
    full = configs["full_ccd"]
    assert full.relabel.rounds == 1 and full.labels.gamma > 0 and full.train.beta > 0
    assert full.initial.random_crops == 0
    for name, cfg in configs.items():
        assert cfg.run_id == f"{name}-seed0"
        if name != "full_ccd":
            assert cfg.to_dict() != {**full.to_dict(), "run_id": cfg.run_id}, name
    assert configs["global_only"].relabel.rounds == 0
    assert configs["random_views"].relabel.view_source == "random"
    assert configs["supervised"].train.targets == "ground_truth"


def _commit(folder: Path, payload: str) -> None:
    (folder / "attempt-1").mkdir(parents=True)
    (folder / "attempt-1" / "data").write_text(payload)
    (folder / "_COMMITTED.json").write_text(json.dumps({"attempt": "attempt-1"}))


def test_shared_stages_are_copied_only_when_their_inputs_match(ablation, tmp_path):
    donor = ablation.setting_config("global_only", 0, tmp_path / "c", "local-dir:/t", tmp_path)
    for stage in ablation.SHARED_STAGES:
        _commit(tmp_path / donor.run_id / stage, stage)
    same = ablation.setting_config("full_ccd", 0, tmp_path / "c", "local-dir:/t", tmp_path)
    assert sorted(ablation.reuse_shared_stages(same, donor, tmp_path)) == sorted(
        ablation.SHARED_STAGES)
    assert (tmp_path / same.run_id / "train-inputs" / "attempt-1" / "data").read_text() == \
        "train-inputs"
    assert ablation.reuse_shared_stages(same, donor, tmp_path) == []  # already committed
    other_seed = ablation.setting_config("full_ccd", 1, tmp_path / "c", "local-dir:/t",
                                         tmp_path)
    assert ablation.reuse_shared_stages(other_seed, donor, tmp_path) == []


def run(pseudo: float = 70.0, holdout: float = 60.0) -> dict:
    """What run_setting returns for one finished run: its metrics and wall time."""
    scores = {"mAP": pseudo, "CF1": 50.0, "OF1": 60.0}
    return {"metrics": {"teacher_before_debias": scores, "teacher_holdout": {"mAP": 40.0},
                        "rounds": [scores], "classifier_holdout": {"mAP": holdout}},
            "seconds": 100.0}


def test_table_reports_mean_and_std_over_seeds(ablation):
    results = {"global_only": {0: run(70, 60), 1: run(72, 64)},
               "supervised": {0: run(0, 90), 1: run(0, 92)}}
    table = ablation.markdown_table(ablation.rows_of(results), [0, 1])
    lines = table.splitlines()
    assert lines[0].startswith("| setting (2 seeds: mean +- std)")
    assert "| teacher zero-shot (global view) | 71.0 +- 1.0 | 50.0 +- 0.0 | 60.0 +- 0.0 | " \
           "40.0 +- 0.0 | - | - |" in table
    assert "| global-only labels -> classifier | 71.0 +- 1.0 | 50.0 +- 0.0 | 60.0 +- 0.0 | " \
           "62.0 +- 2.0 | - | 100 |" in table
    supervised = next(line for line in lines if line.startswith("| supervised"))
    assert supervised.split(" | ")[1:4] == ["-", "-", "-"]
    # 91 +- 1 over seeds, but the same world's baseline moves with it: +30 and +28 paired.
    assert supervised.split(" | ")[4:6] == ["91.0 +- 1.0", "+29.0 +- 1.0"]


def test_a_table_variant_changes_the_shared_schedule_under_each_settings_own(ablation, tmp_path):
    def variant(name):
        return ablation.setting_config(name, 1, tmp_path / "c", "local-dir:/t", tmp_path,
                                       base=["relabel.rounds=2"], tag="two-rounds")
    assert variant("full_ccd").relabel.rounds == 2
    assert variant("global_only").relabel.rounds == 0  # the setting's own override wins
    assert variant("full_ccd").run_id == "full_ccd-two-rounds-seed1"


def test_a_variant_can_be_paired_with_the_plain_tables_global_only(ablation):
    variant = {"global_only": {0: run(holdout=66), 1: run(holdout=67)},
               "full_ccd": {0: run(holdout=68), 1: run(holdout=70)}}
    plain_global = {0: run(holdout=60), 1: run(holdout=64)}
    rows = dict(ablation.rows_of(variant, plain_global))
    # the variant's own global-only is now a row with a gain: +6 and +3 on the same worlds
    assert rows["global-only labels -> classifier"]["paired gain"] == [6.0, 3.0]
    assert rows["+ consistency (full CCD)"]["paired gain"] == [8.0, 6.0]
    assert dict(ablation.rows_of(variant))["+ consistency (full CCD)"]["paired gain"] == [2.0, 3.0]


def test_rows_name_the_views_of_the_initial_labels(ablation, tmp_path):
    crops = ablation.setting_config("global_only", 0, tmp_path / "c", "local-dir:/t", tmp_path,
                                    base=["initial.random_crops=10"], tag="crops")
    plain = ablation.setting_config("global_only", 0, tmp_path / "c", "local-dir:/t", tmp_path)
    assert ablation.initial_views(plain) == "global view"
    assert ablation.initial_views(crops) == "global view + 10 random crops"
    labels = [label for label, _ in ablation.rows_of({"global_only": {0: run()}}, None,
                                                     ablation.initial_views(crops))]
    assert labels == ["teacher zero-shot (global view + 10 random crops)",
                      "initial labels (global view + 10 random crops) -> classifier"]


@pytest.mark.parametrize("argv, complaint", [
    (["--baseline-set", "train.image_size=192"], "--baseline-set configures"),
    (["--set", "train.image_size=192", "--tag", "s192", "--paired-baseline", "plain",
      "--baseline-tag", "other"], "not with the plain table"),
    (["--baseline-tag", "other"], "not with the plain table"),
])
def test_a_baseline_variant_needs_a_variant_to_pair(ablation, monkeypatch, capsys, argv,
                                                    complaint):
    monkeypatch.setattr("sys.argv", ["synth_ablation.py", *argv])
    with pytest.raises(SystemExit):
        ablation.main()
    assert complaint in capsys.readouterr().err
