"""The checks before Ray starts (ccd_ray.preflight), how the jobs turn any stop into one line and
an exit code (ccd_ray.cli.job_error, run_job), and the run's log file (ccd_ray.cli.run_log)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pytest
from conftest import png_header, tree

from ccd_ray import cli, preflight
from ccd_ray.config import ConfigError
from ccd_ray.io.storage import filesystem_for
from ccd_ray.preflight import JobError


def _snapshot(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def corpus(tmp_path):
    """A folder of three images (tiny PNG headers: the checks never decode)."""
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "sub/c.png"):
        (folder / name).write_bytes(png_header(4, 4))
    return folder


@pytest.fixture
def config(make_config, corpus, tmp_path):
    def factory(*overrides: str):
        return make_config(f"data.corpus_uri={corpus}", f"data.output_uri={tmp_path / 'out'}",
                           *overrides)
    return factory


def _fails(code: int, key: str, check, *args) -> str:
    with pytest.raises(JobError) as failure:
        check(*args)
    line = failure.value.line
    assert failure.value.code == code, line
    assert line.startswith(key), line
    assert "\n" not in line
    return line


# --- URIs and the S3 endpoint ---

@pytest.mark.parametrize("uri", ["gs://bucket/corpus", "hdfs://name/corpus", "http://host/x"])
def test_unsupported_uri_schemes_are_refused(uri):
    line = _fails(preflight.EXIT_CONFIG, "data.corpus_uri", preflight.check_uri,
                  "data.corpus_uri", uri)
    assert "not supported" in line and "s3://" in line


def test_uri_query_and_user_parts_are_refused_without_echoing_them():
    line = _fails(preflight.EXIT_CONFIG, "data.output_uri", preflight.check_uri,
                  "data.output_uri", "s3://bucket/runs?secret_key=hunter2")
    assert "hunter2" not in line
    _fails(preflight.EXIT_CONFIG, "data.corpus_uri", preflight.check_uri, "data.corpus_uri", "")


@pytest.mark.parametrize("uri", ["/data/corpus", "relative/folder", "file:///data/x",
                                 "s3://bucket/prefix"])
def test_supported_uris_pass(uri):
    preflight.check_uri("data.corpus_uri", uri)


def test_an_endpoint_that_does_not_answer_fails_fast(config):
    with socketserver_port() as port:  # bound, not listening: connections are refused
        cfg = config(f"data.s3_endpoint=http://127.0.0.1:{port}", "data.output_uri=s3://b/runs")
        started = time.time()
        line = _fails(preflight.EXIT_ENDPOINT, "data.s3_endpoint", preflight.check_endpoint, cfg)
    assert time.time() - started < preflight.ENDPOINT_TIMEOUT_S + 1
    assert f"127.0.0.1:{port} does not answer" in line


def test_endpoint_shape_and_credentials_in_it_are_refused(config):
    cfg = config("data.s3_endpoint=http://key:hunter2@127.0.0.1:9000",
                 "data.output_uri=s3://b/runs")
    line = _fails(preflight.EXIT_CONFIG, "data.s3_endpoint", preflight.check_endpoint, cfg)
    assert "hunter2" not in line
    cfg = config("data.s3_endpoint=127.0.0.1:9000", "data.output_uri=s3://b/runs")
    _fails(preflight.EXIT_CONFIG, "data.s3_endpoint", preflight.check_endpoint, cfg)


def test_the_endpoint_is_only_checked_when_a_uri_is_on_s3(config, s3_server):
    assert preflight.check_endpoint(config("data.s3_endpoint=http://127.0.0.1:1")) is None
    cfg = config(f"data.s3_endpoint={s3_server['endpoint']}", "data.output_uri=s3://b/runs")
    assert "answers" in preflight.check_endpoint(cfg)


class socketserver_port:
    """A loopback port that refuses connections while the block runs."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


# --- the output ---

def test_a_writable_local_output_is_probed_without_leaving_anything(config, tmp_path):
    before = _snapshot(tmp_path)
    assert "writable" in preflight.check_output(config())  # out/ does not exist yet
    assert _snapshot(tmp_path) == before
    (tmp_path / "out" / "default").mkdir(parents=True)  # and once the run's folder exists
    before = _snapshot(tmp_path)
    preflight.check_output(config())
    assert _snapshot(tmp_path) == before


def test_an_output_below_a_file_is_not_writable(config, tmp_path):
    (tmp_path / "plain-file").write_text("x")
    cfg = config(f"data.output_uri={tmp_path / 'plain-file' / 'runs'}")
    line = _fails(preflight.EXIT_OUTPUT, "data.output_uri", preflight.check_output, cfg)
    assert "is a file" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_is_not_writable(config, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = _fails(preflight.EXIT_OUTPUT, "data.output_uri", preflight.check_output,
                      config(f"data.output_uri={locked}"))
    finally:
        locked.chmod(0o700)
    assert "cannot write" in line


def test_s3_output_probe_leaves_nothing_and_a_missing_bucket_fails(config, s3_server):
    endpoint, bucket = s3_server["endpoint"], s3_server["bucket"]
    cfg = config(f"data.s3_endpoint={endpoint}", f"data.output_uri=s3://{bucket}/preflight-runs")
    fs, _ = filesystem_for(cfg.data.output_uri, cfg.data)
    before = tree(fs, bucket)
    assert preflight.check_output(cfg) == f"output s3://{bucket}/preflight-runs/default writable"
    assert tree(fs, bucket) == before
    cfg = config(f"data.s3_endpoint={endpoint}", "data.output_uri=s3://no-such-bucket/runs")
    line = _fails(preflight.EXIT_OUTPUT, "data.output_uri", preflight.check_output, cfg)
    assert "cannot write" in line


# --- the corpus ---

def test_the_corpus_check_says_what_it_found(config):
    assert preflight.check_corpus(config()).endswith(
        ": images (detected): 3 files, 0 without an image suffix; 0 metadata files not read")


def test_a_missing_or_empty_corpus_fails(config, tmp_path):
    line = _fails(preflight.EXIT_CORPUS, "data.corpus_uri", preflight.check_corpus,
                  config(f"data.corpus_uri={tmp_path / 'nope'}"))
    assert "does not exist" in line
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    line = _fails(preflight.EXIT_CORPUS, "data.corpus_uri", preflight.check_corpus,
                  config(f"data.corpus_uri={tmp_path / 'empty'}"))
    assert "holds no" in line


def test_an_unreadable_s3_corpus_fails(config, s3_server):
    cfg = config(f"data.s3_endpoint={s3_server['endpoint']}",
                 "data.corpus_uri=s3://no-such-bucket/corpus")
    _fails(preflight.EXIT_CORPUS, "data.corpus_uri", preflight.check_corpus, cfg)


# --- the teacher ---

def _local_dir(folder, config_text='{"model_cfg": {"embed_dim": 8}}', weights="w.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    if config_text is not None:
        (folder / "open_clip_config.json").write_text(config_text)
    if weights:
        (folder / weights).write_bytes(b"not loaded by the check")
    return f"local-dir:{folder}"


@pytest.mark.parametrize("config_text, weights, message", [
    (None, "w.safetensors", "no 'model_cfg'"),
    ("{not json", "w.safetensors", "no 'model_cfg'"),
    ('{"preprocess_cfg": {}}', "w.safetensors", "no 'model_cfg'"),
    ('{"model_cfg": {"embed_dim": 8}}', None, "no weights file"),
    ('{"model_cfg": {"embed_dim": 8}}', "w.pt", "no weights file"),  # open_clip reads no .pt
])
def test_incomplete_local_dir_teachers_fail(config, tmp_path, config_text, weights, message):
    model = _local_dir(tmp_path / "teacher", config_text, weights)
    line = _fails(preflight.EXIT_TEACHER, "teacher.model", preflight.check_teacher,
                  config(f"teacher.model={model}").teacher)
    assert message in line


def test_local_dir_teachers(config, tmp_path):
    line = _fails(preflight.EXIT_TEACHER, "teacher.model", preflight.check_teacher,
                  config(f"teacher.model=local-dir:{tmp_path / 'missing'}").teacher)
    assert "does not exist" in line
    model = _local_dir(tmp_path / "teacher")
    assert preflight.check_teacher(config(f"teacher.model={model}").teacher) == f"teacher {model}"


def test_a_missing_pretrained_file_fails(config, tmp_path):
    line = _fails(preflight.EXIT_TEACHER, "teacher.pretrained", preflight.check_teacher,
                  config(f"teacher.pretrained={tmp_path / 'gone.pt'}").teacher)
    assert "does not exist" in line


def test_open_clip_names_and_tags(config, tmp_path):
    """Checked against open_clip's registry, offline: nothing is downloaded."""
    assert "random weights" in preflight.check_teacher(config().teacher)  # ccd-tiny-vit, none
    line = _fails(preflight.EXIT_TEACHER, "teacher.model", preflight.check_teacher,
                  config("teacher.model=ViT-B-33").teacher)
    assert "not a model open_clip knows" in line
    line = _fails(preflight.EXIT_TEACHER, "teacher.pretrained", preflight.check_teacher,
                  config("teacher.model=ViT-B-32", "teacher.pretrained=opnai").teacher)
    assert "openai" in line  # the tags it knows are listed
    assert "'openai'" in preflight.check_teacher(
        config("teacher.model=ViT-B-32", "teacher.pretrained=openai").teacher)
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"x")
    assert str(weights) in preflight.check_teacher(
        config(f"teacher.pretrained={weights}").teacher)


# --- what the job entry points do with the checks and with later stops ---

def test_a_failing_storage_check_runs_no_embedded_preparation(tmp_path, monkeypatch):
    """With the embedded default, the checks of the output come first: a wrong output must not
    wait for the corpus to be made and the teacher to be pretrained."""
    import ccd_ray.demo.embedded as embedded

    monkeypatch.setattr(embedded, "prepare_embedded",
                        lambda workdir: pytest.fail("the embedded default was prepared"))
    monkeypatch.setenv("CCD_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain-file").write_text("x")
    overrides = [f"data.output_uri={tmp_path / 'plain-file'}"]
    cfg = cli.job_config(None, overrides)
    with pytest.raises(JobError) as failure:
        cli.prepare_job(None, overrides, cfg)
    assert failure.value.code == preflight.EXIT_OUTPUT
    assert _snapshot(tmp_path) == ["plain-file"]


def test_the_checks_import_neither_ray_nor_torch():
    """A failing start ends in about a second because nothing heavy is imported before it."""
    code = ("import sys, ccd_ray.cli, ccd_ray.preflight; "
            "print(sorted(m for m in ('ray', 'torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# A teacher actor's death as Ray reports it (abridged from a run with a corrupt weights file).
ACTOR_DEATH = """The actor died because of an error raised in its creation task, \
ray::MapWorker(MapBatches(InitialViewScorer)).__init__() (pid=31601, ip=192.0.2.2)
  File "ccd_ray/stages/actors.py", line 84, in __init__
    self.teacher = Teacher.from_config(self.cfg.teacher, self.cfg.classes,
safetensors._safetensors_rust.SafetensorError: Error while deserializing header: header too large
"""


def test_job_errors_map_every_stop_to_its_code():
    import ray.exceptions

    from ccd_ray.stages.score_cache import TooManyErrors

    class _Death(ray.exceptions.RayError):
        def __str__(self) -> str:
            return ACTOR_DEATH

    def code_and_line(exc: BaseException):
        error = cli.job_error(exc)
        return error.code, error.line

    assert code_and_line(ConfigError("labels.alpha: bad")) == (2, "labels.alpha: bad")
    assert code_and_line(KeyboardInterrupt())[0] == preflight.EXIT_INTERRUPTED
    code, line = code_and_line(TooManyErrors("round-0/raw: 9 of 10 images failed."))
    assert code == preflight.EXIT_TOO_MANY_ERRORS and line.startswith("data.max_error_fraction")
    try:  # Ray Data raises its own exception with the actor's death as the context
        try:
            raise _Death()
        except _Death:
            raise RuntimeError("execution failed") from None
    except RuntimeError as wrapped:
        wrapped.__context__ = _Death()
        code, line = code_and_line(wrapped)
    assert code == preflight.EXIT_TEACHER
    assert line.startswith("teacher.model: the teacher failed to load")
    assert "SafetensorError: Error while deserializing header" in line
    # a phase-2 actor whose classifier (the run's own checkpoint) did not load: internal
    classifier_death = ACTOR_DEATH.replace("InitialViewScorer", "GuidedViewScorer").replace(
        "safetensors._safetensors_rust.SafetensorError: Error while deserializing header: "
        "header too large", "ccd_ray.stages.actors.ClassifierLoadError: round 1's classifier "
        "checkpoint did not load: UnpicklingError: bad")
    assert "ClassifierLoadError" in classifier_death

    class _ClassifierDeath(ray.exceptions.RayError):
        def __str__(self) -> str:
            return classifier_death

    code, line = code_and_line(_ClassifierDeath())
    assert code == preflight.EXIT_INTERNAL and "classifier checkpoint did not load" in line
    code, line = code_and_line(ValueError("something\nunexpected"))
    assert code == preflight.EXIT_INTERNAL and "--debug" in line and "\n" not in line


def test_exit_codes_are_distinct_and_documented():
    from pathlib import Path

    codes = {n: v for n, v in vars(preflight).items() if n.startswith("EXIT_")}
    assert len(set(codes.values())) == len(codes)
    page = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    for value in codes.values():
        assert f"| {value} |" in page, value


def test_run_job_prints_one_line_and_the_traceback_only_with_debug(capsys):
    def body(args: argparse.Namespace) -> int:
        raise JobError(preflight.EXIT_CORPUS, "data.corpus_uri: gone")

    assert cli.run_job(argparse.Namespace(debug=False), body) == preflight.EXIT_CORPUS
    err = capsys.readouterr().err
    assert err == "error: data.corpus_uri: gone\n"
    assert cli.run_job(argparse.Namespace(debug=True), body) == preflight.EXIT_CORPUS
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: data.corpus_uri: gone\n")


# --- the run's log ---

def test_the_run_log_holds_the_console_and_the_traceback(config, tmp_path, capsys):
    cfg = config()
    with pytest.raises(RuntimeError):
        with cli.run_log(cfg, cfg.run_id, "job") as uri:
            print("a console line")
            logging.getLogger("ccd_ray.test").info("a log record, file only")
            raise RuntimeError("boom")
    assert sys.stdout is not None and not isinstance(sys.stdout, cli._Tee)
    text = open(uri).read()
    assert "a console line" in text and "a log record, file only" in text
    assert "Traceback" in text and "RuntimeError: boom" in text
    out = capsys.readouterr()
    assert out.out == "a console line\n" and "Traceback" not in out.err
    assert uri.startswith(str(tmp_path / "out" / "default" / "logs" / "job-"))


def test_the_run_log_is_uploaded_to_s3(config, s3_server):
    bucket = s3_server["bucket"]
    cfg = config(f"data.s3_endpoint={s3_server['endpoint']}",
                 f"data.output_uri=s3://{bucket}/log-runs")
    with cli.run_log(cfg, "r1", "job") as uri:
        print("to the bucket")
    fs, path = filesystem_for(uri, cfg.data)
    with fs.open_input_stream(path) as stream:
        assert b"to the bucket" in stream.read()
    assert isinstance(fs, pafs.S3FileSystem)


def test_forwarded_tracebacks_are_one_console_line(tmp_path):
    """Ray's forwarded traceback of a dead actor: one console line, its last error kept."""
    class Console:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    console = Console()
    stream = cli._CollapsedTracebacks(console, "LOG")
    stream.write("\x1b[33m(raylet)\x1b[0m Task X.get_location failed. Error: Traceback (most "
                 "recent call last):\n\n  File \"a.py\", line 1, in f\n    g()\n\n")
    stream.write("safetensors.SafetensorError: header too large\n\nDuring handling of the "
                 "above exception, another exception occurred:\n\nTraceback (most recent call "
                 "last):\n  File \"b.py\", line 2\nray.exceptions.ActorDiedError: died\n")
    stream.write("\x1b[36m(MapWorker(MapBatches(S)) pid=7)\x1b[0m Exception raised in creation "
                 "task: The actor died\n")
    for frame in ("           ^^^^^^^^", '  File "actors.py", line 84, in __init__',
                  "    self.teacher = Teacher.from_config(", "safetensors.SafetensorError: bad"):
        stream.write(f"\x1b[36m(MapWorker(MapBatches(S)) pid=7)\x1b[0m {frame}\n")
    stream.write("[ccd-ray] next line\n")
    stream.write("partial")
    stream.close()
    lines = console.text.split("\n")
    assert lines[0].startswith("(raylet) Task X.get_location failed. Error: [a traceback of ")
    assert lines[0].endswith("in LOG]: ray.exceptions.ActorDiedError: died")
    assert lines[1].endswith(" Exception raised in creation task: The actor died")
    assert lines[2] == "(MapWorker(MapBatches(S)) pid=7) [a traceback of 4 lines, in LOG]: " \
        "safetensors.SafetensorError: bad"
    assert lines[3:] == ["[ccd-ray] next line", "partial"]


def test_docs_page_lists_every_line_a_check_prints():
    """Each check's key appears in docs/errors.md, so a user finds what to do."""
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "errors.md").read_text()
    for key in ("data.corpus_uri", "data.output_uri", "data.s3_endpoint", "teacher.model",
                "teacher.pretrained", "classes.names", "data.max_error_fraction"):
        assert key in page, key
