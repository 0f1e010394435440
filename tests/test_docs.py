"""The README's config reference is the one the code generates."""

from __future__ import annotations

import re
from pathlib import Path

from ccd_ray.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    block = re.search(r"<!-- config-reference:start -->\n(.*)\n<!-- config-reference:end -->",
                      README.read_text(), re.S)
    assert block, "README lacks the config-reference markers"
    assert block.group(1) == config_reference(), (
        "README config table is stale: regenerate it with `python -m ccd_ray.config`")
