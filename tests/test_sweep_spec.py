"""Sweep specs: grids and ranges of alpha/gamma/beta, validated by the config's own ranges."""

from __future__ import annotations

import pytest

from ccd_ray.config import ConfigError
from ccd_ray.sweep.spec import apply_params, parse_flag, parse_sweep_spec, trial_key


def test_grid_and_range_are_parsed(make_config):
    base = make_config()
    spec = parse_sweep_spec({"params": {"alpha": [0.2, 0.4], "gamma": [0, 1, 2],
                                        "beta": {"low": 0.1, "high": 10, "log": True}},
                             "num_samples": 2, "sweep_id": "s1"}, base)
    assert spec.names == ["alpha", "gamma", "beta"]
    assert spec.params[0].grid == (0.2, 0.4) and spec.params[1].grid == (0.0, 1.0, 2.0)
    assert spec.params[2].log and (spec.params[2].low, spec.params[2].high) == (0.1, 10.0)
    assert spec.trial_count() == 2 * 3 * 2
    assert not spec.only_label_params()
    assert spec.validation.given is False and spec.cache is True


def test_default_sweep_id_follows_the_run_id(make_config):
    spec = parse_sweep_spec({"params": {"alpha": [0.5]}}, make_config("run_id=myrun"))
    assert spec.sweep_id == "myrun-sweep" and spec.only_label_params()


@pytest.mark.parametrize("params, message", [
    ({"delta": [1.0]}, "unknown parameter 'delta'"),
    ({"alpha": []}, "sweep.params.alpha: the grid is empty"),
    ({"alpha": [0.2, 1.5]}, "sweep.params.alpha[1]: labels.alpha: 1.5 is out of range"),
    ({"gamma": {"low": -1, "high": 2}}, "sweep.params.gamma.low: labels.gamma: -1.0 is out"),
    ({"beta": {"low": 2, "high": 1}}, "expected low < high"),
    ({"beta": {"low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
    ({"alpha": {"low": 0.1}}, "a range needs 'low' and 'high'"),
    ({"alpha": "0.4"}, "expected a list of values"),
    ({"alpha": [0.2, 0.2]}, "repeats a value"),
    ({"alpha": ["x"]}, "expected a number"),
    ({}, "name at least one of alpha, gamma, beta"),
])
def test_bad_specs_are_refused_with_the_key(make_config, params, message):
    with pytest.raises(ConfigError, match=None) as error:
        parse_sweep_spec({"params": params}, make_config())
    assert message in str(error.value), str(error.value)


def test_other_bad_keys(make_config):
    base = make_config()
    with pytest.raises(ConfigError, match="unknown key 'sweep.trials'"):
        parse_sweep_spec({"params": {"alpha": [0.1]}, "trials": 3}, base)
    with pytest.raises(ConfigError, match="sweep.num_samples"):
        parse_sweep_spec({"params": {"alpha": [0.1]}, "num_samples": 0}, base)
    with pytest.raises(ConfigError, match="grace_period"):
        parse_sweep_spec({"params": {"alpha": [0.1]}, "grace_period": 99}, base)
    with pytest.raises(ConfigError, match="sweep_id"):
        parse_sweep_spec({"params": {"alpha": [0.1]}, "sweep_id": "a/b"}, base)


def test_flags():
    assert parse_flag("alpha=0.2,0.4", "grid") == ("alpha", [0.2, 0.4])
    assert parse_flag("beta=0.1:10:log", "range") == ("beta", {"low": 0.1, "high": 10.0,
                                                               "log": True})
    assert parse_flag("gamma=0:2", "range") == ("gamma", {"low": 0.0, "high": 2.0, "log": False})
    with pytest.raises(ConfigError, match="not a number"):
        parse_flag("alpha=a,b", "grid")
    with pytest.raises(ConfigError, match="low:high"):
        parse_flag("alpha=1", "range")


def test_apply_params_and_trial_keys(make_config):
    base = make_config()
    cfg = apply_params(base, {"alpha": 0.3, "gamma": 2.0, "beta": 0.5}, run_id="t")
    assert (cfg.labels.alpha, cfg.labels.gamma, cfg.train.beta, cfg.run_id) == (0.3, 2.0, 0.5, "t")
    assert base.labels.alpha != 0.3  # the base is untouched
    key = trial_key({"alpha": 0.3, "gamma": 2.0})
    assert key == trial_key({"gamma": 2, "alpha": 0.3}) != trial_key({"alpha": 0.3, "gamma": 1})
    assert key.startswith("alpha=0.3_gamma=2_") and "/" not in key


def test_concurrency_fits_the_cluster(make_config):
    from ccd_ray.sweep.tune import fitted_concurrency

    base = make_config()
    spec = parse_sweep_spec({"params": {"alpha": [0.1, 0.2, 0.3], "gamma": [0.5, 1.0, 2.0]},
                             "cpus_per_trial": 2}, base)
    assert fitted_concurrency(spec, {"CPU": 16.0}) == 8
    assert fitted_concurrency(spec, {"CPU": 64.0}) == 9  # never more than the trials
    assert fitted_concurrency(spec, {"CPU": 1.0}) == 1
    gpu = parse_sweep_spec({"params": {"alpha": [0.1, 0.2, 0.3]}, "gpus_per_trial": 0.5,
                            "max_concurrent_trials": 2}, base)
    assert fitted_concurrency(gpu, {"CPU": 16.0, "GPU": 4.0}) == 2  # capped by the spec
    ranged = parse_sweep_spec({"params": {"beta": {"low": 0.1, "high": 10, "log": True}},
                               "num_samples": 5}, base)
    assert fitted_concurrency(ranged, {"CPU": 8.0, "GPU": 0.0}) == 5


def test_param_space_uses_grids_and_distributions(make_config):
    from ray import tune

    from ccd_ray.sweep.tune import param_space

    spec = parse_sweep_spec({"params": {"alpha": [0.1, 0.2],
                                        "beta": {"low": 0.1, "high": 10, "log": True},
                                        "gamma": {"low": 0.5, "high": 2}}}, make_config())
    space = param_space(spec)
    assert space["alpha"] == tune.grid_search([0.1, 0.2])
    assert (space["beta"].lower, space["beta"].upper) == (0.1, 10.0)
    assert type(space["beta"].get_sampler()).__name__ == "_LogUniform"
    assert type(space["gamma"].get_sampler()).__name__ == "_Uniform"
