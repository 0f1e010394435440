"""A run's config.yaml: fixed once the run has committed work, replaceable before that."""

from __future__ import annotations

import pytest
import yaml

from ccd_ray.config import CCDConfig, ConfigError
from ccd_ray.io.storage import RunStore, read_bytes
from ccd_ray.stages.labeling import raw_stage
from ccd_ray.stages.pipeline import check_run_config


def _cfg(tmp_path, model: str) -> CCDConfig:
    cfg = CCDConfig()
    cfg.classes.names = ["cat", "dog"]
    cfg.teacher.model = model
    cfg.data.output_uri = str(tmp_path)
    return cfg


def _stored_model(store: RunStore) -> str:
    return yaml.safe_load(read_bytes(store.fs, store.path("config.yaml")))["teacher"]["model"]


def test_a_run_with_nothing_committed_takes_the_corrected_config(tmp_path):
    store = RunStore.open(str(tmp_path), "r", CCDConfig().data)
    check_run_config(_cfg(tmp_path, "local-dir:/wrong"), store)
    check_run_config(_cfg(tmp_path, "local-dir:/right"), store)
    assert _stored_model(store) == "local-dir:/right"


def test_a_run_with_committed_work_refuses_a_changed_method(tmp_path):
    store = RunStore.open(str(tmp_path), "r", CCDConfig().data)
    check_run_config(_cfg(tmp_path, "local-dir:/first"), store)
    store.commit(raw_stage(0), store.begin(raw_stage(0)))
    with pytest.raises(ConfigError, match="^run_id: .*different settings in \\['teacher'\\]"):
        check_run_config(_cfg(tmp_path, "local-dir:/second"), store)
    check_run_config(_cfg(tmp_path, "local-dir:/first"), store)  # the same config resumes
    assert _stored_model(store) == "local-dir:/first"


def test_a_rerun_on_another_corpus_is_refused(tmp_path):
    store = RunStore.open(str(tmp_path), "r", CCDConfig().data)
    check_run_config(_cfg(tmp_path, "local-dir:/t"), store)
    store.commit(raw_stage(0), store.begin(raw_stage(0)))
    moved = _cfg(tmp_path, "local-dir:/t")
    moved.data.corpus_uri = str(tmp_path / "another-corpus")
    with pytest.raises(ConfigError, match="different settings in \\['data.corpus_uri'\\]"):
        check_run_config(moved, store)
    check_run_config(_cfg(tmp_path, "local-dir:/t"), store)  # the original corpus resumes
