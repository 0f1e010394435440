"""The user documentation: generated tables match the code, links resolve, the README stays
short, and the pages read as documentation (no development-log wording)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from ccd_ray.config import config_reference
from ccd_ray.sweep.summary_math import dependencies_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = ["configuration.md", "outputs.md", "method.md", "sweeps.md", "cluster.md",
         "architecture.md", "benchmarks.md", "corpora.md", "errors.md", "predict.md"]
RESEARCH_README = ROOT / "research" / "README.md"
README_MAX_LINES = 220

# Generated blocks: marker name -> the code that generates its content.
GENERATED = {"config-reference": config_reference,
             "sweep-dependencies": dependencies_markdown}

# Development-log wording that does not belong in user documentation (phrases and whole
# words, case-insensitive), and paths that are not part of the repository.
BANNED = [r"\bthe issue\b", r"\bissue #", r"\bissue \d", r"\bacceptance\b", r"\bnot done yet\b",
          r"\bsessions?\b", r"\bhonestly\b", r"\btodo\b", r"\bshared/", r"(?<![\w/])/work/"]
# Scripts that moved to research/ and run as modules there.
OLD_COMMANDS = [r"python research/", r"benchmarks/(synth_ablation|ablation_diagnostics|"
                r"label_transfer|teacher_diagnostics|teacher_probe)\b"]

# Repository paths and Python names the pages mention, which must exist.
REPO_PATH = re.compile(r"(?<![\w./-])((?:ccd_ray|jobs|benchmarks|research|tests|scripts|docs|\.ci)"
                       r"/[\w./-]*)")
DOTTED = re.compile(r"(?<![\w.])(ccd_ray(?:\.\w+)+)")
MODULE_RUN = re.compile(r"python -m ((?:research|ccd_ray)(?:\.\w+)+)")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MARKER = re.compile(r"<!-- ([a-z0-9-]+):(start|end) -->")


def documents() -> list[Path]:
    return [README, RESEARCH_README, *sorted(DOCS.glob("*.md"))]


def without_code(text: str) -> str:
    """The text with fenced code blocks and inline code spans blanked out."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def generated_block(text: str, name: str) -> str | None:
    block = re.search(rf"<!-- {name}:start -->\n(.*)\n<!-- {name}:end -->", text, re.S)
    return block.group(1) if block else None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    result = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def broken_links(path: Path, text: str | None = None) -> list[str]:
    """Relative links of a markdown file that name no file (or no heading) in the repo."""
    text = path.read_text() if text is None else text
    broken = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(target)
    return broken


def banned_words(text: str) -> list[str]:
    return [m.group(0) for pattern in BANNED
            for m in re.finditer(pattern, text, re.I)]


def test_docs_pages_exist():
    missing = [p for p in PAGES if not (DOCS / p).is_file()]
    assert not missing, f"docs/ lacks {missing}"
    assert RESEARCH_README.is_file()
    assert not (ROOT / "ARCHITECTURE.md").exists() or not (DOCS / "architecture.md").exists(), (
        "two architecture pages: keep docs/architecture.md only")


@pytest.mark.parametrize("page, marker, generate", [
    ("configuration.md", "config-reference", config_reference),
    ("sweeps.md", "sweep-dependencies", dependencies_markdown)])
def test_generated_tables_are_current(page, marker, generate):
    block = generated_block((DOCS / page).read_text(), marker)
    assert block is not None, f"docs/{page} lacks the {marker} markers"
    assert block == generate(), (f"docs/{page}: the {marker} table is stale; regenerate it from "
                                 f"{generate.__module__}.{generate.__name__}()")


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_generated_blocks_carry_markers(path):
    names = {m.group(1) for m in MARKER.finditer(path.read_text())}
    assert names <= set(GENERATED), (
        f"{path.name}: markers {sorted(names - set(GENERATED))} dress hand-written text as "
        "generated; only blocks generated from code carry markers")


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move depth to docs/")
    assert "config-reference:start" not in README.read_text(), (
        "the config reference lives in docs/configuration.md, not the README")


def test_readme_test_command_is_what_ci_runs():
    assert "bash scripts/test.sh" in README.read_text()
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_log_wording(path):
    found = banned_words(path.read_text())
    assert not found, f"{path.relative_to(ROOT)} contains {found}"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_research_commands_are_current(path):
    text = path.read_text()
    found = [m.group(0) for pattern in OLD_COMMANDS for m in re.finditer(pattern, text)]
    assert not found, (f"{path.relative_to(ROOT)} names old script paths {found}; the research "
                       "scripts run as `python -m research.<name>`")


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert not broken_links(path), (
        f"{path.relative_to(ROOT)}: links to missing files or headings {broken_links(path)}")


def missing_paths(text: str) -> list[str]:
    return sorted({p.rstrip(".") for p in REPO_PATH.findall(text)
                   if not (ROOT / p.rstrip(".")).exists()})


def unresolved_names(text: str) -> list[str]:
    """ccd_ray.module[.attribute] names that do not import, and `python -m` targets that are
    not modules of the repository."""
    bad = set()
    for name in set(DOTTED.findall(text)):
        parts = name.split(".")
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            try:
                for attribute in parts[split:]:
                    obj = getattr(obj, attribute)
            except AttributeError:
                bad.add(name)
            break
        else:
            bad.add(name)
    for module in set(MODULE_RUN.findall(text)):
        if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
            bad.add(f"python -m {module}")
    return sorted(bad)


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_files_and_modules_exist(path):
    text = path.read_text()
    assert not missing_paths(text), (
        f"{path.relative_to(ROOT)} names paths that are not in the repo: {missing_paths(text)}")
    assert not unresolved_names(text), (
        f"{path.relative_to(ROOT)} names code that does not exist: {unresolved_names(text)}")


def test_the_checks_catch_what_they_look_for():
    page = DOCS / "sweeps.md"
    assert broken_links(page, "[x](nowhere.md) [y](outputs.md#no-such-heading) "
                              "[z](../../outside.md)") == [
        "nowhere.md", "outputs.md#no-such-heading", "../../outside.md"]
    assert broken_links(page, "[a](outputs.md#resume) [b](https://example.org) "
                              "`[c](nowhere.md)` [d](#limits)") == []
    found = banned_words("Not done yet. The issue asks; this session, honestly. TODO: issue 5")
    assert sorted(w.lower() for w in found) == [
        "honestly", "issue 5", "not done yet", "session", "the issue", "todo"]
    assert banned_words("an issue of scale; accepted values; the sessile view") == []
    assert missing_paths("see `jobs/run_ccd.py` and `jobs/gone.py`.") == ["jobs/gone.py"]
    assert unresolved_names("`ccd_ray.config.config_reference`, `ccd_ray.config.nothing`, "
                            "`ccd_ray.gone`, python -m research.gone") == [
        "ccd_ray.config.nothing", "ccd_ray.gone", "python -m research.gone"]
    assert slug("GPU check: `benchmarks/gpu_check.py`") == "gpu-check-benchmarksgpu_checkpy"
