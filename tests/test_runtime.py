"""The local Ray instance's settings for its workers: Ray Data's worker logging config is
Ray's own default with the console at WARNING, and init_ray hands it to every worker."""

from __future__ import annotations

import copy

import ray
import yaml
from ray.data._internal import logging as ray_data_logging

from ccd_ray.stages import runtime


def test_worker_data_logging_is_rays_default_with_a_quiet_console():
    ours = yaml.safe_load(runtime.WORKER_DATA_LOGGING.read_text())
    expected = copy.deepcopy(ray_data_logging.DEFAULT_CONFIG)
    expected["handlers"]["console"]["level"] = "WARNING"
    assert ours == expected


def test_a_local_instance_gives_its_workers_the_logging_config(monkeypatch):
    started = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.init_ray()
    env = started["runtime_env"]["env_vars"]
    assert env["RAY_DATA_LOGGING_CONFIG"] == str(runtime.WORKER_DATA_LOGGING)
    assert runtime.WORKER_DATA_LOGGING.is_file()


def test_a_cluster_keeps_its_own_settings(monkeypatch):
    started = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    runtime.init_ray("ray://head:10001")
    assert started == {"address": "ray://head:10001"}
