"""The layering: the method, the storage/corpus layer, the config, the synthetic world and a
sweep's trial math import no Ray; Ray lives in ccd_ray/stages and the Tune layer."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import ccd_ray

RAY_FREE = ["ccd_ray.config", "ccd_ray.cli", "ccd_ray.preflight", "ccd_ray.io", "ccd_ray.method",
            "ccd_ray.demo", "ccd_ray.stages.actors", "ccd_ray.sweep.spec", "ccd_ray.sweep.summary",
            "ccd_ray.sweep.summary_math", "ccd_ray.sweep.trial"]


def _modules(prefixes: list[str]) -> list[str]:
    every = [m.name for m in pkgutil.walk_packages(ccd_ray.__path__, "ccd_ray.")]
    return [m for m in every if any(m == p or m.startswith(p + ".") for p in prefixes)]


def _import_blocking(blocked: str, modules: list[str]) -> subprocess.CompletedProcess:
    """Import modules in a fresh process where any import of the package blocked raises."""
    code = (f"import sys\nsys.modules[{blocked!r}] = None\n"
            + "".join(f"import {m}\n" for m in modules) + "print('ok')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def test_ray_free_modules_import_with_ray_blocked():
    """In a fresh process where `import ray` fails, every Ray-free module imports."""
    modules = _modules(RAY_FREE)
    assert "ccd_ray.method.rounds" in modules and "ccd_ray.io.corpus" in modules
    result = _import_blocking("ray", modules)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize("blocked, module", [("ray", "ccd_ray.stages.labeling"),
                                             ("torch", "ccd_ray.stages.train")])
def test_the_check_fails_for_a_module_that_imports_the_blocked_package(blocked, module):
    """The blocking works: a module that imports the package does not import under it (the
    tests that use it can fail)."""
    result = _import_blocking(blocked, [module])
    assert result.returncode != 0 and blocked in result.stderr


# The modules of the functions Ray Data's tasks run (read tasks, the training rows' decode,
# the part writers): each new worker process imports them, and torch with torchvision costs
# it seconds (ccd_ray.stages.train imports in ~6 s on 2 cores, these in under 1 s).
TORCH_FREE_TASK_MODULES = ["ccd_ray.stages.datasets", "ccd_ray.stages.shards",
                           "ccd_ray.stages.train_inputs", "ccd_ray.method.rows",
                           "ccd_ray.method.shards", "ccd_ray.method.thresholds"]


def test_task_modules_import_without_torch():
    result = _import_blocking("torch", TORCH_FREE_TASK_MODULES)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_the_task_functions_live_in_those_modules():
    """What each task pickles by reference is the module the worker imports."""
    from ccd_ray.method.rows import training_rows
    from ccd_ray.stages import datasets, shards, train_inputs

    for fn in (training_rows, datasets._read_task, shards._read_shards, shards._write_parts,
               shards.write_views, shards.write_labels, train_inputs.inputs_batch):
        assert fn.__module__ in TORCH_FREE_TASK_MODULES, fn
