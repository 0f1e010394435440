"""What a hyperparameter sweep explores: which of alpha, gamma and beta, over which grid or
range, with how many samples, judged by which objective. Parsed from a YAML mapping or from
command-line flags and validated against the CCD config's own ranges (no Ray here)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ccd_ray.config import CCDConfig, ConfigError, config_from_dict

# The swept parameters and the config key each one sets.
SWEEPABLE = {"alpha": "labels.alpha", "gamma": "labels.gamma", "beta": "train.beta"}
_SPEC_KEYS = {"sweep_id", "params", "num_samples", "max_concurrent_trials", "cpus_per_trial",
              "gpus_per_trial", "grace_period", "reduction_factor", "cache", "validation"}
_VALIDATION_KEYS = {"labels_uri", "from_corpus"}


@dataclass(frozen=True)
class ParamSpec:
    """A grid (every value is tried) or a range (values are sampled, log-uniform if log)."""
    name: str
    grid: tuple[float, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def is_grid(self) -> bool:
        return bool(self.grid)

    def describe(self) -> str:
        if self.is_grid:
            return f"{self.name} in {list(self.grid)}"
        return f"{self.name} ~ {'log-' if self.log else ''}uniform[{self.low}, {self.high}]"


@dataclass(frozen=True)
class ValidationSpec:
    """Where the labeled validation subset comes from: a JSON file `{image_id: [class names]}`
    (local or s3://), or the corpus's own ground truth of `from_corpus` held-out images (to
    simulate the few hundred images a user labels)."""
    labels_uri: str | None = None
    from_corpus: int = 0

    @property
    def given(self) -> bool:
        return bool(self.labels_uri) or self.from_corpus > 0


@dataclass(frozen=True)
class SweepSpec:
    sweep_id: str
    params: tuple[ParamSpec, ...]
    num_samples: int = 1               # samples drawn per range (a repeated grid point is the
                                       # same seeded trial, so its committed result is reused)
    max_concurrent_trials: int | None = None  # None: as many as the cluster's CPUs allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    grace_period: int = 1              # ASHA: epochs every trial gets before it can be stopped
    reduction_factor: float = 2.0      # ASHA: keep the best 1/reduction_factor at each rung
    cache: bool = True                 # False: every trial runs CLIP itself (the naive sweep)
    validation: ValidationSpec = field(default_factory=ValidationSpec)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def only_label_params(self) -> bool:
        """True when no swept value reaches training except through the labels (alpha, gamma)."""
        return set(self.names) <= {"alpha", "gamma"}

    def trial_count(self) -> int:
        grid = math.prod(len(p.grid) for p in self.params if p.is_grid)
        return grid * self.num_samples

    def to_dict(self) -> dict[str, Any]:
        params = {p.name: (list(p.grid) if p.is_grid else
                           {"low": p.low, "high": p.high, "log": p.log}) for p in self.params}
        return {"sweep_id": self.sweep_id, "params": params, "num_samples": self.num_samples,
                "max_concurrent_trials": self.max_concurrent_trials,
                "cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial,
                "grace_period": self.grace_period, "reduction_factor": self.reduction_factor,
                "cache": self.cache,
                "validation": {"labels_uri": self.validation.labels_uri,
                               "from_corpus": self.validation.from_corpus}}


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _check_value(base: CCDConfig, name: str, value: float, where: str) -> None:
    """The CCD config's own validation decides what a parameter may be."""
    data = base.to_dict()
    section, key = SWEEPABLE[name].split(".")
    data[section][key] = value
    try:
        config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_param(name: str, value: Any, base: CCDConfig) -> ParamSpec:
    where = f"sweep.params.{name}"
    if name not in SWEEPABLE:
        raise ConfigError(f"sweep.params: unknown parameter {name!r}; sweepable: "
                          + ", ".join(SWEEPABLE))
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"{where}: the grid is empty; give at least one value")
        grid = tuple(_number(f"{where}[{i}]", v) for i, v in enumerate(value))
        if len(set(grid)) != len(grid):
            raise ConfigError(f"{where}: the grid repeats a value: {list(grid)}")
        for i, v in enumerate(grid):
            _check_value(base, name, v, f"{where}[{i}]")
        return ParamSpec(name, grid=grid)
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"low", "high", "log"})
        if unknown or not {"low", "high"} <= set(value):
            raise ConfigError(f"{where}: a range needs 'low' and 'high' (and optionally 'log'), "
                              f"got keys {sorted(value)}")
        low, high = _number(f"{where}.low", value["low"]), _number(f"{where}.high", value["high"])
        log = value.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
        if not low < high:
            raise ConfigError(f"{where}: expected low < high, got [{low}, {high}]")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
        _check_value(base, name, low, f"{where}.low")
        _check_value(base, name, high, f"{where}.high")
        return ParamSpec(name, low=low, high=high, log=log)
    raise ConfigError(f"{where}: expected a list of values (grid) or {{low, high[, log]}} "
                      f"(range), got {value!r}")


def _int(where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where}: expected an integer >= {low}, got {value!r}")
    return value


def parse_sweep_spec(data: dict[str, Any], base: CCDConfig) -> SweepSpec:
    """A validated SweepSpec from a mapping (the sweep YAML, with flags merged in)."""
    if not isinstance(data, dict):
        raise ConfigError(f"sweep: expected a mapping, got {data!r}")
    unknown = sorted(set(data) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"unknown key 'sweep.{unknown[0]}'; allowed keys: "
                          + ", ".join(sorted(_SPEC_KEYS)))
    params = data.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError("sweep.params: name at least one of " + ", ".join(SWEEPABLE)
                          + " with a grid (list) or a range ({low, high})")
    parsed = tuple(parse_param(name, value, base) for name, value in params.items())
    sweep_id = data.get("sweep_id") or f"{base.run_id}-sweep"
    if not isinstance(sweep_id, str) or any(c in sweep_id for c in "/\\ ") \
            or sweep_id.startswith("."):
        raise ConfigError(f"sweep.sweep_id: {sweep_id!r} must be a name without '/', '\\', "
                          "spaces or a leading '.'")
    concurrent = data.get("max_concurrent_trials")
    if concurrent in (None, "auto"):
        concurrent = None
    else:
        concurrent = _int("sweep.max_concurrent_trials", concurrent, 1)
    cpus = _number("sweep.cpus_per_trial", data.get("cpus_per_trial", 1.0))
    gpus = _number("sweep.gpus_per_trial", data.get("gpus_per_trial", 0.0))
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"sweep: cpus_per_trial must be > 0 and gpus_per_trial >= 0, got "
                          f"{cpus} and {gpus}")
    reduction = _number("sweep.reduction_factor", data.get("reduction_factor", 2.0))
    if reduction <= 1:
        raise ConfigError(f"sweep.reduction_factor: expected a number > 1, got {reduction}")
    cache = data.get("cache", True)
    if not isinstance(cache, bool):
        raise ConfigError(f"sweep.cache: expected true or false, got {cache!r}")
    validation = data.get("validation") or {}
    if not isinstance(validation, dict) or set(validation) - _VALIDATION_KEYS:
        raise ConfigError("sweep.validation: expected a mapping with keys "
                          + ", ".join(sorted(_VALIDATION_KEYS)))
    spec = SweepSpec(
        sweep_id=sweep_id, params=parsed,
        num_samples=_int("sweep.num_samples", data.get("num_samples", 1), 1),
        max_concurrent_trials=concurrent, cpus_per_trial=cpus, gpus_per_trial=gpus,
        grace_period=_int("sweep.grace_period", data.get("grace_period", 1), 1),
        reduction_factor=reduction, cache=cache,
        validation=ValidationSpec(
            labels_uri=validation.get("labels_uri") or None,
            from_corpus=_int("sweep.validation.from_corpus", validation.get("from_corpus", 0), 0)))
    if spec.grace_period > base.train.epochs:
        raise ConfigError(f"sweep.grace_period ({spec.grace_period}) exceeds train.epochs "
                          f"({base.train.epochs}): no trial could ever be stopped early")
    return spec


def parse_flag(item: str, kind: str) -> tuple[str, Any]:
    """`--grid alpha=0.2,0.4` -> ('alpha', [0.2, 0.4]); `--range beta=0.1:10:log` ->
    ('beta', {'low': 0.1, 'high': 10.0, 'log': True})."""
    if "=" not in item:
        raise ConfigError(f"--{kind} {item!r}: expected name=values, e.g. alpha=0.2,0.4")
    name, text = (part.strip() for part in item.split("=", 1))

    def number(token: str) -> float:
        try:
            return float(token)
        except ValueError:
            raise ConfigError(f"--{kind} {item!r}: {token!r} is not a number") from None

    if kind == "grid":
        tokens = [t for t in text.split(",") if t.strip()]
        return name, [number(t) for t in tokens]
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ConfigError(f"--range {item!r}: expected name=low:high or name=low:high:log")
    return name, {"low": number(parts[0]), "high": number(parts[1]), "log": len(parts) == 3}


def apply_params(base: CCDConfig, params: dict[str, float], run_id: str | None = None
                 ) -> CCDConfig:
    """The base config with a trial's parameter values (and optionally a new run id)."""
    data = base.to_dict()
    for name, value in params.items():
        section, key = SWEEPABLE[name].split(".")
        data[section][key] = float(value)
    if run_id is not None:
        data["run_id"] = run_id
    return config_from_dict(data)


def trial_key(params: dict[str, float]) -> str:
    """A stable name for a trial's parameter values: the same values give the same folder on a
    rerun, so a committed trial is found and not redone."""
    canonical = json.dumps({k: round(float(v), 10) for k, v in sorted(params.items())}
                           , sort_keys=True)
    readable = "_".join(f"{k}={float(v):.4g}" for k, v in sorted(params.items()))
    return f"{readable}_{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"
