"""Object storage: resolve URIs to pyarrow filesystems, and commit stage outputs atomically.

A stage writes into a fresh attempt folder `<run>/<stage>/attempt-<id>/` and is committed by
writing one small marker `<run>/<stage>/_COMMITTED.json` naming that attempt, last. Readers
only ever follow the marker, so a stage killed half-way leaves nothing a reader can see,
and rerunning it starts a new attempt (S3 has no atomic rename; a single PUT is atomic)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ccd_ray.config import DataConfig

MARKER = "_COMMITTED.json"
log = logging.getLogger(__name__)


def filesystem_for(uri: str, data_cfg: DataConfig) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path, file:// or s3:// URI.

    S3 credentials are never taken from the config: pyarrow reads them from the environment
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN) or the instance role."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        kwargs: dict[str, Any] = {"region": data_cfg.s3_region}
        if data_cfg.s3_endpoint:
            endpoint = urlparse(data_cfg.s3_endpoint)
            if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
                raise ValueError(f"data.s3_endpoint {data_cfg.s3_endpoint!r}: expected "
                                 "http(s)://host[:port]")
            kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
        return pafs.S3FileSystem(**kwargs), (parsed.netloc + parsed.path).rstrip("/")
    if parsed.scheme in ("", "file"):
        local = pafs.LocalFileSystem()
        path = parsed.path if parsed.scheme == "file" else uri
        return local, posixpath.abspath(path).rstrip("/") or "/"
    raise ValueError(f"unsupported URI scheme {parsed.scheme!r} in {uri!r}: use a local path, "
                     "file:// or s3://")


def list_files(fs: pafs.FileSystem, path: str, suffixes: tuple[str, ...] | None = None
               ) -> list[str]:
    """Every file below path (sorted), optionally only those ending in suffixes."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} does not exist")
    if info.type == pafs.FileType.File:
        files = [path]
    else:
        selector = pafs.FileSelector(path, recursive=True)
        files = [i.path for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
    names = sorted(f for f in files if not posixpath.basename(f).startswith(("_", ".")))
    if suffixes:
        names = [f for f in names if f.lower().endswith(suffixes)]
    return names


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write path whole or not at all. On a local disk the bytes go to a temporary name beside
    it, are flushed to the disk and renamed into place (a rename within a folder is atomic), so
    a kill or a full disk mid-write leaves the old file or none, never a truncated one. An S3
    PUT is already whole."""
    parent = posixpath.dirname(path)
    if parent:
        fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as stream:
            stream.write(data)
        return
    partial = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    return json.loads(read_bytes(fs, path))


def write_json(fs: pafs.FileSystem, path: str, value: Any) -> None:
    write_bytes(fs, path, json.dumps(value, indent=2, sort_keys=True).encode())


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


@dataclass
class RunStore:
    """The storage of one run: `<output_uri>/<run_id>/`, with atomically committed stages."""
    fs: pafs.FileSystem
    root: str

    @classmethod
    def open(cls, output_uri: str, run_id: str, data_cfg: DataConfig) -> "RunStore":
        fs, base = filesystem_for(output_uri, data_cfg)
        root = posixpath.join(base, run_id)
        fs.create_dir(root, recursive=True)
        return cls(fs, root)

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def begin(self, stage: str) -> str:
        """A fresh, empty attempt folder for stage."""
        attempt = self.path(stage, f"attempt-{uuid.uuid4().hex[:12]}")
        self.fs.create_dir(attempt, recursive=True)
        return attempt

    def commit(self, stage: str, attempt: str, info: dict[str, Any] | None = None) -> None:
        """Make attempt the stage's output, then drop the stage's other attempts."""
        write_json(self.fs, self.path(stage, MARKER),
                   {"attempt": posixpath.basename(attempt), **(info or {})})
        for entry in self.fs.get_file_info(pafs.FileSelector(self.path(stage))):
            name = posixpath.basename(entry.path)
            if name.startswith("attempt-") and entry.path != attempt:
                self.fs.delete_dir(entry.path)

    def committed(self, stage: str) -> str | None:
        """The committed attempt folder of stage, or None if the stage never finished."""
        marker = self.marker(stage)
        return None if marker is None else self.path(stage, marker["attempt"])

    def marker(self, stage: str) -> dict[str, Any] | None:
        """The stage's commit marker, or None where it has none. A marker that cannot be read
        as one (empty or cut short by a store that lost a write; markers this code writes
        are whole, see write_bytes) counts as not committed, with a warning: the stage is
        redone, never trusted and never a crash."""
        path = self.path(stage, MARKER)
        if not exists(self.fs, path):
            return None
        try:
            marker = read_json(self.fs, path)
        except (ValueError, UnicodeDecodeError) as exc:
            marker, problem = None, f"{type(exc).__name__}: {exc}"
        else:
            problem = "" if (isinstance(marker, dict)
                             and isinstance(marker.get("attempt"), str)) else "no attempt named"
        if problem:
            log.warning("%s: the commit marker is unreadable (%s); the stage counts as not "
                        "committed and is redone", path, problem)
            return None
        return marker
