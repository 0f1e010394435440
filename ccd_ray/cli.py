"""What the job CLIs (jobs/run_ccd.py, jobs/sweep.py, jobs/predict.py) share: their config
arguments, how a config is built from them, the checks before Ray starts, the run's log file,
and how every stop becomes one line on stderr and an exit code (docs/errors.md).

Imports neither Ray nor torch: a start that fails its checks ends before those imports."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import posixpath
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import pyarrow.fs as pafs

from ccd_ray.config import DEFAULT_CONFIG, CCDConfig, ConfigError, load_config
from ccd_ray.io.storage import filesystem_for, write_bytes
from ccd_ray.preflight import (
    EXIT_CONFIG,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_TEACHER,
    EXIT_TOO_MANY_ERRORS,
    JobError,
    check_inputs,
    check_storage,
)

EMBEDDED_WORKDIR = Path("outputs") / "_embedded"  # the embedded default's corpus, made once
# the actor classes that build the teacher (ccd_ray.stages.actors): a death of one of them
# while it starts is the teacher failing to load, unless it was the phase-2 actor's classifier
# (the run's own checkpoint: an internal error)
TEACHER_ACTORS = ("InitialViewScorer", "GuidedViewScorer")
CLASSIFIER_LOAD_ERROR = "ClassifierLoadError"
logger = logging.getLogger("ccd_ray")


def log(message: str) -> None:
    """One line of the job's console output."""
    print(f"[ccd-ray] {message}", flush=True)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set, --address, --progress and --debug, the same in every job."""
    parser.add_argument("--config", help="YAML config (default: the embedded default's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set labels.gamma=0.5 (repeatable)")
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else local)")
    parser.add_argument("--progress", action="store_true",
                        help="show Ray Data's progress bars (off by default)")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of a stop besides its one line")


def uses_embedded(config_path: str | None, overrides: list[str]) -> bool:
    """With neither a config file nor a corpus given, a job runs on the embedded default."""
    return config_path is None and not any(o.startswith("data.corpus_uri=") for o in overrides)


def job_config(config_path: str | None, overrides: list[str]) -> CCDConfig:
    """The YAML given, else the default config; on the embedded default's world when
    uses_embedded. Does no work: prepare_job makes what the config points at."""
    base = None
    if uses_embedded(config_path, overrides):
        from ccd_ray.demo.embedded import embedded_defaults

        base = embedded_defaults(EMBEDDED_WORKDIR)
    return load_config(config_path or DEFAULT_CONFIG, overrides, base=base)


def prepare_job(config_path: str | None, overrides: list[str], cfg: CCDConfig) -> list[str]:
    """Before Ray starts: check where the job reads and writes, make the embedded default's
    corpus and teacher where they are missing, then check the corpus and the teacher. Raises
    JobError; returns one line per check passed. Writes nothing but a deleted probe (and the
    embedded default's cached corpus and teacher)."""
    lines = check_storage(cfg)
    if uses_embedded(config_path, overrides):
        from ccd_ray.demo.embedded import prepare_embedded

        prepare_embedded(EMBEDDED_WORKDIR)
    return lines + check_inputs(cfg)


def job_error(exc: BaseException) -> JobError:
    """The one line and exit code of any exception that stops a job."""
    if isinstance(exc, JobError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return JobError(EXIT_INTERRUPTED, "interrupted; run the same command again to resume "
                        "(committed stages are kept)")
    if isinstance(exc, ConfigError):
        return JobError(EXIT_CONFIG, str(exc))
    # the Ray-side classes are looked up only where their modules were loaded: a config error
    # must not import Ray to be reported
    score_cache = sys.modules.get("ccd_ray.stages.score_cache")
    if score_cache is not None and isinstance(exc, score_cache.TooManyErrors):
        return JobError(EXIT_TOO_MANY_ERRORS, f"data.max_error_fraction: {exc} Fix or remove the "
                        "bad files, or raise data.max_error_fraction to accept them")
    teacher_failure = _teacher_actor_failure(exc)
    if teacher_failure:
        return JobError(EXIT_TEACHER, f"teacher.model: the teacher failed to load in a Ray actor "
                        f"({teacher_failure}); check teacher.model and teacher.pretrained")
    return JobError(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {_last_line(exc)}; "
                    "rerun with --debug for the traceback")


def _teacher_actor_failure(exc: BaseException) -> str | None:
    """The error line of a teacher actor that died while starting, found in the text of the
    exception chain (Ray reports an actor's death with the creation error's traceback as text)."""
    ray_exceptions = sys.modules.get("ray.exceptions")
    if ray_exceptions is None:
        return None
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    for error in seen:
        if not isinstance(error, ray_exceptions.RayError):
            continue
        text = str(error)
        if "__init__" in text and any(name in text for name in TEACHER_ACTORS) \
                and CLASSIFIER_LOAD_ERROR not in text:
            return _last_line(error)
    return None


def _last_line(exc: BaseException) -> str:
    """The exception's last non-empty line (Ray puts the original error there), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class _Tee:
    """A stream that writes everything into the run's log file, and to the console if given."""

    def __init__(self, console: TextIO | None, log: TextIO, lock: threading.Lock):
        self.console, self.log, self.lock = console, log, lock

    def write(self, text: str) -> int:
        if self.console is not None:
            self.console.write(text)
        with self.lock:
            self.log.write(text)
        return len(text)

    def flush(self) -> None:
        if self.console is not None:
            self.console.flush()
        with self.lock:
            self.log.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the console's
        return getattr(self.console, name)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRACEBACK = "Traceback (most recent call last)"
_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
_TRACEBACK_PARTS = ("Traceback", "During handling of the above exception",
                    "The above exception was the direct cause")
_FRAME = re.compile(r"\s+(File \"|\^+$)")  # a frame of a traceback, or its ^^^ marker line
# what Ray puts before each line it forwards from a worker: "(raylet) ", "(Name pid=12) ",
# "(MapWorker(MapBatches(X)) pid=12, ip=10.0.0.1) "
_FORWARDED = re.compile(r"\((?:raylet|pid=\w+|.*? pid=\d+(?:, ip=[^)]*)?)\) ?")


class _CollapsedTracebacks:
    """The console side of the run log: a traceback is shown as one line with its last
    exception line and where the whole one is. Ray forwards the traceback of every retried
    task and dead actor from its workers (one failed teacher load printed 170 lines); the run
    log keeps them whole, and the job's own stop is one line anyway (run_job)."""

    def __init__(self, console: TextIO, log_uri: str):
        self.console, self.log_uri = console, log_uri
        self.partial, self.head, self.last_error = "", "", ""
        self.hidden = 0  # lines of the traceback being collapsed, 0 when none
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            *lines, self.partial = (self.partial + text).split("\n")
            for line in lines:
                self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        forwarded = _FORWARDED.match(plain)
        content = plain[forwarded.end():] if forwarded else plain
        if self.hidden:
            stripped = content.strip()
            if not stripped or content[0].isspace() or stripped.startswith(_TRACEBACK_PARTS) \
                    or _EXCEPTION_LINE.match(stripped):
                self.hidden += 1
                if _EXCEPTION_LINE.match(stripped):
                    self.last_error = stripped
                return
            self._summary()
        if _TRACEBACK in content:
            self.head = plain[:plain.index(_TRACEBACK)].rstrip()
            self.hidden, self.last_error = 1, ""
            return
        if _FRAME.match(content):  # a traceback forwarded without its first line (an actor's)
            self.head = forwarded.group(0).rstrip() if forwarded else ""
            self.hidden, self.last_error = 1, ""
            return
        self.console.write(line + "\n")

    def _summary(self) -> None:
        error = f": {self.last_error[:300]}" if self.last_error else ""
        self.console.write(f"{self.head + ' ' if self.head else ''}[a traceback of "
                           f"{self.hidden} lines, in {self.log_uri}]{error}\n")
        self.hidden = 0

    def close(self) -> None:
        """Show what is still pending (an unfinished line, a traceback being collapsed)."""
        with self.lock:
            if self.hidden:
                self._summary()
            if self.partial:
                self.console.write(self.partial)
                self.partial = ""
            self.console.flush()

    def flush(self) -> None:
        self.console.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the console's
        return getattr(self.console, name)


@contextmanager
def run_log(cfg: CCDConfig, folder: str, job: str, collapse_tracebacks: bool = True
            ) -> Iterator[str]:
    """Copy the console (and the driver's Python log records, INFO and up) into
    `<output_uri>/<folder>/logs/<job>-<UTC time>.log`: written in place locally, uploaded when
    the job ends on S3. A stop's traceback goes there too. Credentials never reach it: the
    jobs print none. Yields the log's URI."""
    fs, base = filesystem_for(cfg.data.output_uri, cfg.data)
    target = posixpath.join(base, folder, "logs",
                            f"{job}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.log")
    local = isinstance(fs, pafs.LocalFileSystem)
    if local:
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        path = target
    else:
        handle, path = tempfile.mkstemp(suffix=".log")
        os.close(handle)
    log_file = open(path, "a", encoding="utf-8", buffering=1)
    lock = threading.Lock()
    handler = logging.StreamHandler(_Tee(None, log_file, lock))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = sys.stdout, sys.stderr, root.level
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    uri = target if local else f"s3://{target}"
    consoles = [_CollapsedTracebacks(stream, uri) if collapse_tracebacks else stream
                for stream in saved[:2]]
    sys.stdout, sys.stderr = (_Tee(console, log_file, lock) for console in consoles)
    try:
        yield uri
    except (Exception, KeyboardInterrupt) as exc:
        logger.error("stopped: %s", job_error(exc).line, exc_info=exc)
        raise
    finally:
        sys.stdout, sys.stderr, level = saved
        for console in consoles:
            if isinstance(console, _CollapsedTracebacks):
                console.close()
        root.removeHandler(handler)
        root.setLevel(level)
        log_file.close()
        if not local:
            write_bytes(fs, target, Path(path).read_bytes())
            os.unlink(path)


@contextmanager
def started_job(cfg: CCDConfig, folder: str, job: str, checks: list[str],
                args: argparse.Namespace, imports: str | None = None) -> Iterator[None]:
    """A job's work after its checks passed: inside its run log (opened with the checks' lines
    and the log's path), on Ray joined or started per --address and --progress.

    imports: the module the job's work lives in, imported while Ray starts. Both take seconds
    (torch and torchvision about 5 s on 2 cores; a local Ray's daemons about 7 s), and the
    driver only waits on Ray's start, so a thread overlaps them; its error is raised here."""
    with run_log(cfg, folder, job, collapse_tracebacks=not args.debug) as log_uri:
        for line in checks:
            log(f"checked: {line}")
        log(f"full log: {log_uri}")
        # Ray only now: a start that fails its checks ends before this import
        from ccd_ray.stages.runtime import init_ray

        failed: list[BaseException] = []

        def load() -> None:
            try:
                importlib.import_module(imports)
            except BaseException as exc:  # raised in the job's thread below
                failed.append(exc)

        loader = threading.Thread(target=load, name="job-imports", daemon=True) if imports else None
        if loader:
            loader.start()
        init_ray(args.address, progress=args.progress)
        if loader:
            loader.join()
            if failed:
                raise failed[0]
        yield


def run_job(args: argparse.Namespace, body: Callable[[argparse.Namespace], int]) -> int:
    """Run a job's body on its arguments; any exception becomes one line on stderr and its exit
    code (with the traceback before it under --debug)."""
    # A library's module-level logging.info() (open_clip's model loading, in the embedded
    # default's pretraining before the run log opens) would otherwise give the root logger a
    # console handler, and every INFO record of the run would then reach the console too.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    try:
        return body(args)
    except (Exception, KeyboardInterrupt) as exc:
        error = job_error(exc)
        if args.debug:
            traceback.print_exc()
        print(f"error: {error.line}", file=sys.stderr, flush=True)
        return error.code
