"""Checks a job runs before Ray starts, so that a wrong path, a store that does not answer or
a teacher that is not there stops the job in seconds with one line naming the config key,
instead of minutes later inside an actor.

Imports neither Ray nor torch (open_clip only to look up a hub model name): the checks of a
failing start must finish before those imports would. The exit codes of every stop a user can
act on are here too; docs/errors.md lists them with what to do."""

from __future__ import annotations

import json
import posixpath
import socket
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ccd_ray.config import CCDConfig, TeacherConfig
from ccd_ray.io.corpus import corpus_layout
from ccd_ray.io.storage import filesystem_for

# Exit codes (docs/errors.md). 2 is argparse's own code for bad arguments, kept for config errors.
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_CORPUS = 3
EXIT_OUTPUT = 4
EXIT_TEACHER = 5
EXIT_ENDPOINT = 6
EXIT_TOO_MANY_ERRORS = 7
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT)

ENDPOINT_TIMEOUT_S = 3.0
SUPPORTED_SCHEMES = ("", "file", "s3")
# open_clip's own prefixes: a folder of config + weights, and a Hugging Face hub repository
LOCAL_DIR_PREFIX, HF_HUB_PREFIX = "local-dir:", "hf-hub:"
# the weights open_clip looks for in a local-dir folder (open_clip.factory._find_checkpoint_in_dir)
LOCAL_DIR_WEIGHTS = ("*.safetensors", "*.bin", "*.pth")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


class JobError(Exception):
    """A stop the user can act on: `line` is the one line printed (it names the config key
    and what to do), `code` the process's exit code."""

    def __init__(self, code: int, line: str):
        super().__init__(line)
        self.code, self.line = code, " ".join(line.split())  # one line, whatever it quotes


def check_uri(key: str, uri: str) -> None:
    """A local path, file:// or s3:// URI without query or user parts (those would be ignored,
    and could hold secrets that must not reach the logs)."""
    if not uri:
        raise JobError(EXIT_CONFIG, f"{key} is empty: set it to a local folder or an s3:// URI")
    parsed = urlparse(uri)
    if parsed.scheme not in SUPPORTED_SCHEMES:
        raise JobError(EXIT_CONFIG, f"{key}: the URI scheme '{parsed.scheme}://' is not "
                       "supported; use a local path or s3:// (for an S3-compatible store, set "
                       "data.s3_endpoint)")
    if parsed.query or parsed.fragment or "@" in parsed.netloc:
        raise JobError(EXIT_CONFIG, f"{key}: query strings and user@ parts are not read; give "
                       "the bare URI, the endpoint in data.s3_endpoint and credentials in the "
                       "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")


def _uses_s3(cfg: CCDConfig) -> bool:
    return any(urlparse(u).scheme == "s3" for u in (cfg.data.corpus_uri, cfg.data.output_uri))


def check_endpoint(cfg: CCDConfig) -> str | None:
    """When a URI is on S3: the store's host answers a TCP connection within ENDPOINT_TIMEOUT_S
    (pyarrow's client would retry for much longer). Returns what was checked."""
    if not _uses_s3(cfg):
        return None
    endpoint = cfg.data.s3_endpoint
    key = "data.s3_endpoint" if endpoint else "data.s3_region"
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.username:
            raise JobError(EXIT_CONFIG, "data.s3_endpoint: expected http(s)://host[:port] "
                           "without user or password (credentials go in the environment)")
        host = parsed.hostname
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
        except ValueError:
            raise JobError(EXIT_CONFIG, "data.s3_endpoint: the port is not a number") from None
    else:
        host, port = f"s3.{cfg.data.s3_region}.amazonaws.com", 443
    try:
        with socket.create_connection((host, port), timeout=ENDPOINT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise JobError(EXIT_ENDPOINT, f"{key}: the S3 endpoint {host}:{port} does not answer "
                       f"({_reason(exc)}); check that the store is running and reachable, or "
                       "fix data.s3_endpoint") from None
    return f"S3 endpoint {host}:{port} answers"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_output(cfg: CCDConfig) -> str:
    """Write and delete a probe object where the run will write: in the run's folder when it
    exists, else in the nearest folder above it that does (locally nothing is created)."""
    key = "data.output_uri"
    try:
        fs, base = filesystem_for(cfg.data.output_uri, cfg.data)
    except ValueError as exc:
        raise JobError(EXIT_CONFIG, f"{key}: {exc}") from None
    run_folder = posixpath.join(base, cfg.run_id)
    where = run_folder
    if isinstance(fs, pafs.LocalFileSystem):
        where = _nearest_existing(fs, run_folder, key)
    probe = posixpath.join(where, f"_preflight-{uuid.uuid4().hex[:12]}")
    try:
        with fs.open_output_stream(probe) as stream:
            stream.write(b"ccd-ray preflight probe\n")
    except OSError as exc:
        raise JobError(EXIT_OUTPUT, f"{key}: cannot write into {where} ({_reason(exc)}); choose "
                       "a writable folder or bucket, or fix its permissions") from None
    try:
        fs.delete_file(probe)
    except OSError as exc:
        raise JobError(EXIT_OUTPUT, f"{key}: could write but not delete {probe} "
                       f"({_reason(exc)}); runs replace their attempts, so deleting is needed: "
                       "grant delete permission (and remove the probe)") from None
    shown = run_folder if isinstance(fs, pafs.LocalFileSystem) else \
        f"{cfg.data.output_uri.rstrip('/')}/{cfg.run_id}"
    return f"output {shown} writable"


def _nearest_existing(fs: pafs.FileSystem, path: str, key: str) -> str:
    while True:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            return path
        if info.type == pafs.FileType.File:
            raise JobError(EXIT_OUTPUT, f"{key}: {path} is a file, so no run folder can be made "
                           "below it; choose another output folder")
        parent = posixpath.dirname(path)
        if parent == path:
            return path
        path = parent


def check_corpus(cfg: CCDConfig) -> str:
    """The corpus exists and holds something to read; says which format (and how it was
    chosen), how many files will be read and how many not."""
    key, uri = "data.corpus_uri", cfg.data.corpus_uri
    try:
        _, layout = corpus_layout(cfg)  # as the job will find it
    except FileNotFoundError as exc:
        raise JobError(EXIT_CORPUS, f"{key}: {_reason(exc)}; point it at a folder (or s3:// "
                       "prefix) of images, Parquet shards or WebDataset tars") from None
    except OSError as exc:
        raise JobError(EXIT_CORPUS, f"{key}: cannot list {uri} ({_reason(exc)}); check the "
                       "path, the bucket and the credentials in the environment") from None
    except ValueError as exc:  # e.g. a layout the reader refuses; ConfigError names its key
        line = str(exc) if str(exc).startswith("data.") else f"{key}: {_reason(exc)}"
        raise JobError(EXIT_CORPUS, line) from None
    return f"corpus {uri}: {layout.found}"


def teacher_files_problem(cfg: TeacherConfig) -> str | None:
    """What is missing on disk for teacher.model / teacher.pretrained, or None. Without torch or
    open_clip, so that a missing teacher fails fast."""
    if cfg.model.startswith(LOCAL_DIR_PREFIX):
        folder = Path(cfg.model[len(LOCAL_DIR_PREFIX):])
        if not folder.is_dir():
            return (f"teacher.model: the folder {folder} does not exist; point local-dir: at a "
                    "folder holding open_clip_config.json and the weights")
        config_file = folder / "open_clip_config.json"
        try:
            model_cfg = json.loads(config_file.read_text()).get("model_cfg")
        except (OSError, ValueError, AttributeError):
            model_cfg = None
        if not model_cfg:
            return (f"teacher.model: {config_file} is missing or holds no 'model_cfg'; save the "
                    "teacher with open_clip's config (ccd_ray.method.teacher.save_local_dir)")
        if not any(any(folder.glob(pattern)) for pattern in LOCAL_DIR_WEIGHTS):
            return (f"teacher.model: {folder} holds no weights file "
                    f"({', '.join(LOCAL_DIR_WEIGHTS)}); copy the weights next to the config")
        return None
    pretrained = cfg.pretrained
    if pretrained and ("/" in pretrained or pretrained.endswith(CHECKPOINT_SUFFIXES)) \
            and not Path(pretrained).is_file():
        return (f"teacher.pretrained: the checkpoint file {pretrained} does not exist; fix the "
                "path or give an open_clip pretrained tag")
    return None


def check_teacher(cfg: TeacherConfig) -> str:
    """The teacher can be built: its files exist, or its open_clip name and pretrained tag are
    known to open_clip. Loads no weights (a tag's weights are fetched when the actors load)."""
    problem = teacher_files_problem(cfg)
    if problem:
        raise JobError(EXIT_TEACHER, problem)
    if cfg.model.startswith(LOCAL_DIR_PREFIX):
        return f"teacher {cfg.model}"
    if cfg.model.startswith(HF_HUB_PREFIX):
        return f"teacher {cfg.model} (fetched from the Hugging Face hub when the actors load)"
    from ccd_ray.method.teacher import open_clip_with_configs

    open_clip = open_clip_with_configs()
    name = cfg.model.replace("/", "-")  # as open_clip.create_model looks names up
    if name not in open_clip.list_models():
        raise JobError(EXIT_TEACHER, f"teacher.model: {cfg.model!r} is not a model open_clip "
                       "knows; use a name from open_clip.list_models() or local-dir:/path")
    pretrained = cfg.pretrained
    if pretrained is None:
        return f"teacher {cfg.model} with random weights (teacher.pretrained is none)"
    if Path(pretrained).is_file():
        return f"teacher {cfg.model} with weights {pretrained}"
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        known = ", ".join(tags) if tags else "none"
        raise JobError(EXIT_TEACHER, f"teacher.pretrained: {pretrained!r} is neither a file nor "
                       f"a pretrained tag of {cfg.model} (tags: {known})")
    return f"teacher {cfg.model} with open_clip weights {pretrained!r}"


def check_storage(cfg: CCDConfig) -> list[str]:
    """The checks on where the job reads and writes, before anything is prepared."""
    check_uri("data.corpus_uri", cfg.data.corpus_uri)
    check_uri("data.output_uri", cfg.data.output_uri)
    endpoint = check_endpoint(cfg)
    return ([endpoint] if endpoint else []) + [check_output(cfg)]


def check_inputs(cfg: CCDConfig) -> list[str]:
    """The checks on what the job reads: the corpus, then the teacher."""
    return [check_corpus(cfg), check_teacher(cfg.teacher)]
