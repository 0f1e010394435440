"""The project's scripts (jobs/*.py, benchmarks/*.py: not packages) loaded as modules, so
tests can call their functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str, register: bool = False) -> ModuleType:
    """The script at path as a module named name; register: also put it in sys.modules
    (dataclasses defined in it look their module up there), for the caller to remove."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
