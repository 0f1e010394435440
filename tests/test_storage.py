"""URIs to filesystems, file helpers, and the atomic stage commits of RunStore (local disk)."""

from __future__ import annotations

import posixpath

import pyarrow.fs as pafs
import pytest

from ccd_ray.config import DataConfig
from ccd_ray.io.storage import (
    MARKER,
    RunStore,
    exists,
    filesystem_for,
    list_files,
    read_bytes,
    read_json,
    write_bytes,
    write_json,
)


def test_filesystem_for_local_paths_and_file_uris(tmp_path):
    fs, path = filesystem_for(str(tmp_path / "a" / "b/"), DataConfig())
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a" / "b")
    fs, path = filesystem_for(f"file://{tmp_path}/c", DataConfig())
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/c"
    _, path = filesystem_for("relative/dir", DataConfig())
    assert path == posixpath.abspath("relative/dir")


def test_filesystem_for_s3_uses_the_configured_endpoint():
    fs, path = filesystem_for("s3://bucket/some/prefix/",
                              DataConfig(s3_endpoint="http://127.0.0.1:9", s3_region="eu-west-1"))
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/prefix"
    assert fs.region == "eu-west-1"
    assert filesystem_for("s3://bucket", DataConfig())[1] == "bucket"


@pytest.mark.parametrize("endpoint", ["127.0.0.1:9000", "ftp://host:1", "http://"])
def test_filesystem_for_rejects_a_bad_endpoint(endpoint):
    with pytest.raises(ValueError, match="s3_endpoint"):
        filesystem_for("s3://bucket/x", DataConfig(s3_endpoint=endpoint))


def test_filesystem_for_rejects_other_schemes():
    with pytest.raises(ValueError, match="unsupported URI scheme 'gs'"):
        filesystem_for("gs://bucket/x", DataConfig())


def test_file_helpers_round_trip(tmp_path):
    fs = pafs.LocalFileSystem()
    path = str(tmp_path / "deep" / "er" / "blob.bin")
    write_bytes(fs, path, b"\x00\x01payload")
    assert exists(fs, path) and read_bytes(fs, path) == b"\x00\x01payload"
    write_json(fs, str(tmp_path / "v.json"), {"b": [1, 2], "a": None})
    assert read_json(fs, str(tmp_path / "v.json")) == {"a": None, "b": [1, 2]}
    assert not exists(fs, str(tmp_path / "missing"))


def test_list_files_is_sorted_recursive_and_skips_hidden(tmp_path):
    fs = pafs.LocalFileSystem()
    for name in ["b/2.PNG", "a.jpg", "b/1.txt", "_COMMITTED.json", ".hidden.jpg", "c/_tmp.png"]:
        write_bytes(fs, str(tmp_path / name), b"x")
    root = str(tmp_path)
    assert list_files(fs, root) == [f"{root}/a.jpg", f"{root}/b/1.txt", f"{root}/b/2.PNG"]
    assert list_files(fs, root, (".png", ".jpg")) == [f"{root}/a.jpg", f"{root}/b/2.PNG"]
    assert list_files(fs, f"{root}/a.jpg") == [f"{root}/a.jpg"]
    with pytest.raises(FileNotFoundError):
        list_files(fs, f"{root}/nope")


def _attempts(store: RunStore, stage: str) -> list[str]:
    return sorted(posixpath.basename(i.path)
                  for i in store.fs.get_file_info(pafs.FileSelector(store.path(stage)))
                  if posixpath.basename(i.path).startswith("attempt-"))


def test_run_store_begin_commit_committed(tmp_path):
    store = RunStore.open(str(tmp_path / "out"), "run-1", DataConfig())
    assert store.root == str(tmp_path / "out" / "run-1") and exists(store.fs, store.root)
    stage = "round-0/raw"
    assert store.committed(stage) is None

    first = store.begin(stage)
    second = store.begin(stage)
    assert first != second and posixpath.dirname(first) == store.path(stage)
    assert store.fs.get_file_info(pafs.FileSelector(first)) == []  # fresh and empty
    write_bytes(store.fs, posixpath.join(second, "part-0.parquet"), b"data")
    assert store.committed(stage) is None  # written but not committed: invisible

    store.commit(stage, second, {"images": 3})
    assert store.committed(stage) == second
    assert store.marker(stage) == {"attempt": posixpath.basename(second), "images": 3}
    assert read_json(store.fs, store.path(stage, MARKER))["attempt"] == posixpath.basename(second)
    # the other attempt is dropped, the committed one keeps its files
    assert _attempts(store, stage) == [posixpath.basename(second)]
    assert read_bytes(store.fs, posixpath.join(second, "part-0.parquet")) == b"data"

    # other stages are independent
    assert store.committed("round-0/labels") is None

    # reopening the same run sees the commit (this is what resuming relies on)
    again = RunStore.open(str(tmp_path / "out"), "run-1", DataConfig())
    assert again.committed(stage) == second


def test_run_store_recommit_replaces_the_previous_attempt(tmp_path):
    store = RunStore.open(str(tmp_path), "r", DataConfig())
    old = store.begin("s")
    store.commit("s", old)
    new = store.begin("s")
    assert store.committed("s") == old  # a new attempt does not touch the committed one
    store.commit("s", new, {"n": 1})
    assert store.committed("s") == new and _attempts(store, "s") == [posixpath.basename(new)]


def test_an_unreadable_marker_counts_as_not_committed(tmp_path, caplog):
    store = RunStore.open(str(tmp_path), "run", DataConfig())
    for content in (b"", b'{"attempt": "attempt-1', b"[]", b"\xff\xfe"):
        write_bytes(store.fs, store.path("stage", MARKER), content)
        with caplog.at_level("WARNING", logger="ccd_ray.io.storage"):
            assert store.committed("stage") is None
        assert "commit marker is unreadable" in caplog.text
        caplog.clear()
    attempt = store.begin("stage")
    store.commit("stage", attempt)  # the redone stage commits over it
    assert store.committed("stage") == attempt


def test_a_kill_at_any_point_of_a_commit_leaves_a_readable_store(tmp_path):
    """A child process commits a stage in a loop and is killed with SIGKILL after a random
    delay, 200 times: every marker left is whole (the old attempt's or the new one's), so
    the store always reads as committed or not, and the stage recommits."""
    import os
    import random
    import signal
    import time

    root = tmp_path / "out"
    store = RunStore.open(str(root), "run", DataConfig())
    first = store.begin("stage")
    store.commit("stage", first, {"n": 0})
    rng = random.Random(0)
    for trial in range(200):
        pid = os.fork()
        if pid == 0:  # the child: commit as fast as it can until killed
            try:
                child = RunStore(pafs.LocalFileSystem(), store.root)
                for n in range(10_000):
                    child.commit("stage", child.begin("stage"), {"n": n, "pad": "x" * 4096})
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 0.004))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        attempt = store.committed("stage")  # raises on a torn marker before the fix
        assert attempt is not None, f"trial {trial}: the marker was lost"
        assert store.marker("stage")["attempt"] == posixpath.basename(attempt)
    store.commit("stage", store.begin("stage"), {"n": -1})
    assert store.marker("stage")["n"] == -1
