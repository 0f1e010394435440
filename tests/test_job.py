"""The whole job behind `ray job submit`, on a `ray start --head` cluster the test starts and
stops, reading a corpus from and writing its run to the S3 endpoint on loopback; then the same
job killed mid-relabel and rerun with the same run id (with a Train worker lost on the way)."""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ccd_ray.config import DEFAULT_CONFIG, load_config
from ccd_ray.demo.scenes import CLASS_NAMES
from ccd_ray.io.packing import synthetic_records, write_shards
from ccd_ray.io.storage import (
    MARKER,
    RunStore,
    filesystem_for,
    read_bytes,
    read_json,
    write_json,
)
from ccd_ray.method.classifier import load_classifier
from ccd_ray.stages.labeling import labels_stage, read_labels

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT = 1200


def _free_ports(count: int) -> list[int]:
    """Distinct free ports on loopback (held together while picked, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="module")
def head_cluster(s3_server, tmp_path_factory):
    """`ray start --head` on loopback (its own process group, stopped at the end).

    Every port is a free one picked here: the session's other Ray instance already holds the
    default ones (the dashboard agent's 52365 above all), and an agent that cannot bind its
    port leaves the head with "No available agent to submit job"."""
    flags = ("--port", "--dashboard-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--ray-client-server-port", "--node-manager-port", "--object-manager-port")
    ports = dict(zip(flags, _free_ports(len(flags))))
    # a short root of its own: Ray's socket paths must stay under 107 characters
    temp_dir = tempfile.mkdtemp(prefix="ccd-head-", dir="/tmp")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    log = tmp_path_factory.mktemp("head") / "head.log"
    ray_cli = str(Path(sys.executable).with_name("ray"))
    process = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus", "4", "--node-ip-address",
         "127.0.0.1", "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
         "--disable-usage-stats", "--temp-dir", temp_dir,
         *(str(item) for pair in ports.items() for item in pair)],
        env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2)
                break
            except OSError:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"ray start --head did not come up: {log.read_text()}") from None
                time.sleep(1)
        yield {"dashboard": url, "gcs": f"127.0.0.1:{ports['--port']}", "env": env,
               "ray": ray_cli, "temp_dir": temp_dir}
    finally:
        _stop_head(process, temp_dir)


def _cluster_processes(temp_dir: str) -> list[int]:
    """Live processes of the head cluster: every Ray process (raylet, GCS, dashboard, workers)
    names its session folder under temp_dir on its command line; zombies have none."""
    found, below = [], temp_dir.rstrip("/") + "/"
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and below in (proc / "cmdline").read_bytes().decode(
                    errors="replace"):
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return found


def _stop_head(process: subprocess.Popen, temp_dir: str) -> None:
    """Stop the head as `ray stop` does, without its 16 s grace: SIGTERM to the head's process
    group, 5 s to exit, then SIGKILL to the group. Ray's workers run in sessions of their own,
    outside that group: they exit once their raylet is gone. Any process of the cluster still
    there 30 s later is killed and reported: a leak."""
    seen = [pid for pid in _cluster_processes(temp_dir) if pid != process.pid]
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group already exited
        pass
    process.wait(timeout=30)
    deadline = time.time() + 30
    while (left := _cluster_processes(temp_dir)) and time.time() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp_dir, ignore_errors=True)
    # the probe must have seen the cluster, or its empty answer afterwards would prove nothing
    assert seen, f"no process named {temp_dir} while the head ran: the leak check is blind"
    assert not left, f"processes of the head cluster outlived its stop: {left}"


def _agent_log_tail(head_cluster) -> str:
    logs = sorted(Path(head_cluster["temp_dir"]).glob("session_*/logs/dashboard_agent.log"))
    return logs[-1].read_text()[-3000:] if logs else "(no dashboard_agent.log)"


@pytest.fixture(scope="module")
def job_corpus(s3_server):
    """48 synthetic scenes (the embedded default's kind) as Parquet shards in S3."""
    cfg = load_config(overrides=[f"classes.names={list(CLASS_NAMES)}",
                                 f"data.s3_endpoint={s3_server['endpoint']}"])
    fs, root = filesystem_for(f"s3://{s3_server['bucket']}/job-corpus", cfg.data)
    write_shards(synthetic_records(48, 11, 96, 3), fs, root, 16)
    return f"s3://{s3_server['bucket']}/job-corpus"


def job_overrides(s3_server, local_teacher, corpus_uri: str) -> list[str]:
    """The embedded default's config, with the corpus and the run in S3."""
    sets = [f"classes.names=[{', '.join(CLASS_NAMES)}]", f"teacher.model={local_teacher}",
            # one warm-up epoch, the relabel round, two epochs after it: every stage, fewer
            # epochs than the default's 2 + 2
            "train.epochs=3", "train.warmup_epochs=1",
            f"data.corpus_uri={corpus_uri}", f"data.output_uri=s3://{s3_server['bucket']}/runs",
            f"data.s3_endpoint={s3_server['endpoint']}"]
    return [arg for item in sets for arg in ("--set", item)]


def run_store(s3_server, run_id: str) -> RunStore:
    cfg = load_config(DEFAULT_CONFIG, [f"classes.names={list(CLASS_NAMES)}",
                                       f"data.s3_endpoint={s3_server['endpoint']}"])
    return RunStore.open(f"s3://{s3_server['bucket']}/runs", run_id, cfg.data)


def submit(head_cluster, args: list[str]) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir .`, retried while the job agent is still starting."""
    command = [head_cluster["ray"], "job", "submit", "--address", head_cluster["dashboard"],
               "--working-dir", str(REPO), "--", "python", "jobs/run_ccd.py", *args]
    deadline = time.time() + 240
    while True:
        result = subprocess.run(command, env=head_cluster["env"], capture_output=True,
                                text=True, timeout=JOB_TIMEOUT, cwd=REPO)
        if "No available agent" not in result.stdout + result.stderr:
            return result
        if time.time() > deadline:
            result.stderr += "\n--- dashboard_agent.log ---\n" + _agent_log_tail(head_cluster)
            return result
        time.sleep(3)


@pytest.fixture(scope="module")
def submitted_run(head_cluster, s3_server, local_teacher, job_corpus):
    result = submit(head_cluster, [*job_overrides(s3_server, local_teacher, job_corpus),
                                   "--run-id", "e2e"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def test_job_submit_writes_every_documented_output(submitted_run, s3_server):
    store = run_store(s3_server, "e2e")
    fs = store.fs
    assert "[ccd-ray] final: done" in submitted_run
    assert "AWS_SECRET_ACCESS_KEY" not in submitted_run
    assert "[ccd-ray] corpus: 3 read tasks, listed once for the run" in submitted_run
    assert store.marker("corpus-manifest")["read_tasks"] == 3
    classes = read_json(fs, store.path("classes.json"))
    assert classes == list(CLASS_NAMES)
    config_text = read_bytes(fs, store.path("config.yaml")).decode()
    assert "secret" not in config_text.lower() and "access_key" not in config_text.lower()
    for round_index in (0, 1):
        folder = store.committed(labels_stage(round_index))
        assert folder, f"round {round_index} labels not committed"
        table = pa.concat_tables(
            pq.read_table(f, filesystem=fs)
            for f in [i.path for i in fs.get_file_info(
                pafs.FileSelector(posixpath.join(folder, "labels")))])
        assert table.schema.field("scores").type == pa.list_(pa.float32())
        assert table.schema.field("labels").type == pa.list_(pa.string())
        assert table.num_rows == 48
        for scores, names in zip(table.column("scores").to_pylist(),
                                 table.column("labels").to_pylist()):
            assert len(scores) == len(classes)
            assert names == [c for c, s in zip(classes, scores) if s >= 0.5]
        errors = pq.read_table(posixpath.join(folder, "errors.parquet"), filesystem=fs)
        assert errors.column_names == ["image_id", "stage", "reason"] and errors.num_rows == 0
        summary = read_json(fs, posixpath.join(folder, "summary.json"))
        assert summary["images"] == 48 and summary["labeled"] == 48 and summary["errors"] == 0
    bias = read_json(fs, posixpath.join(store.committed(labels_stage(0)), "bias.json"))
    assert len(bias["bias"]) == len(classes) and all(b > 0 for b in bias["bias"])
    final = store.committed("final")
    model, names, size = load_classifier(io.BytesIO(read_bytes(fs, posixpath.join(
        final, "classifier.pt"))))
    assert names == list(CLASS_NAMES) and size == 96
    metrics = read_json(fs, posixpath.join(final, "metrics.json"))
    assert metrics["ground_truth_images"] == 48
    assert [r["round"] for r in metrics["rounds"]] == [0, 1]
    assert 0 <= metrics["classifier_holdout"]["mAP"] <= 100
    assert "| pseudo-labels, round 1 |" in read_bytes(fs, posixpath.join(final, "report.md")
                                                      ).decode()
    for plot in ("map_per_round.png", "per_class_ap.png", "samples.png"):
        assert read_bytes(fs, posixpath.join(final, plot))[:4] == b"\x89PNG"


# A driver like jobs/run_ccd.py whose Train workers lose rank 0 once: it exits abruptly at the
# start of epoch 2 (the last segment's second epoch, so it resumes from that segment's own
# checkpoint), leaving a marker file that says it happened. The hook is
# defined in __main__, so Ray ships it to the workers by value.
FAIL_ONCE_DRIVER = """
import os, sys
from pathlib import Path

from ccd_ray.cli import job_config
from ccd_ray.stages.pipeline import run_ccd
from ccd_ray.stages.runtime import init_ray

marker = Path(sys.argv[1])


def fail_once(epoch, rank):
    if epoch == 2 and rank == 0 and not marker.exists():
        marker.write_text("failed once")
        os._exit(1)


args = sys.argv[2:]
sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
run_id = args[args.index("--run-id") + 1]
init_ray(args[args.index("--address") + 1])
run_ccd(job_config(None, sets + [f"run_id={run_id}"]), before_epoch=fail_once)
"""


def _run_driver(head_cluster, args: list[str], env: dict, kill_after: str | None = None,
                kill_when=lambda: True, driver: list[str] | None = None):
    """Run jobs/run_ccd.py (or driver) as a driver of the head cluster; with kill_after,
    SIGKILL it once a line containing that text was printed and kill_when() then holds
    (polled; the output is read meanwhile by a thread, so the driver never blocks on it).
    Returns (exit code, output)."""
    process = subprocess.Popen(
        [sys.executable, *(driver or ["jobs/run_ccd.py"]), *args,
         "--address", head_cluster["gcs"]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if kill_after and kill_after in line:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + JOB_TIMEOUT
    while process.poll() is None and time.time() < deadline:
        if seen.is_set() and kill_when():
            break
        time.sleep(0.2)
    if process.poll() is None:  # asked to be killed, or out of time
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=120)
    reader.join(timeout=30)
    return process.returncode, "".join(lines)


# The stages before the relabel round. The killed run starts from the uninterrupted run's
# copies of them: same config and seed, and training is deterministic (test_train_ray), so
# they are the bits it would compute again; the test pays for them once.
EARLY_STAGES = ("round-0/raw", "round-0/labels", "train-inputs", "train/segment-0")


def _copy_early_stages(source: RunStore, target: RunStore) -> None:
    """source's committed EARLY_STAGES and segment-0's Ray Train folder (the checkpoint the
    next segment starts from) into target; the segment's marker then names target's copy."""
    for folder in (*EARLY_STAGES, "ray-train/segment-0"):
        pafs.copy_files(source.path(folder), target.path(folder),
                        source_filesystem=source.fs, destination_filesystem=target.fs)
    info = target.marker("train/segment-0")
    assert info["checkpoint"].startswith(source.root + "/"), info
    info["checkpoint"] = target.root + info["checkpoint"][len(source.root):]
    write_json(target.fs, target.path("train/segment-0", MARKER), info)


def test_killed_job_resumes_and_a_lost_train_worker_is_recovered(
        submitted_run, head_cluster, s3_server, local_teacher, job_corpus, tmp_path):
    from ccd_ray.stages.shards import committed_shards

    e2e, store = run_store(s3_server, "e2e"), run_store(s3_server, "resume")
    _copy_early_stages(e2e, store)
    # Round 1's score-cache key is the uninterrupted run's (the same classifier bytes): its
    # entry is removed, or round-1/raw would be a cache hit and the kill would stop no scoring.
    cache = RunStore(store.fs, posixpath.join(posixpath.dirname(store.root), "score-cache"))
    entry = e2e.marker("round-1/raw")["cache_entry"]
    store.fs.delete_dir(cache.path(entry))
    args = [*job_overrides(s3_server, local_teacher, job_corpus), "--run-id", "resume"]
    # killed mid round-1/raw: once a shard of its entry is committed, before the entry is
    code, first = _run_driver(head_cluster, args, head_cluster["env"],
                              kill_after="train/segment-0: skipped",
                              kill_when=lambda: bool(committed_shards(cache, entry)))
    assert code == -signal.SIGKILL, first[-3000:]
    assert committed_shards(cache, entry) and cache.committed(entry) is None
    assert store.committed(labels_stage(1)) is None and store.committed("final") is None

    marker = tmp_path / "worker-failed"
    code, second = _run_driver(head_cluster, args, head_cluster["env"],
                               driver=["-c", FAIL_ONCE_DRIVER, str(marker)])
    assert code == 0, second[-4000:]
    for stage in EARLY_STAGES:
        assert f"[ccd-ray] {stage}: skipped (already committed)" in second, stage
    assert "[ccd-ray] round-1/raw: done" in second
    assert "[ccd-ray] corpus: 3 read tasks, from the run's manifest" in second  # not listed again
    assert marker.exists(), "the injected worker failure did not happen"
    assert "[ccd-ray] final: done" in second

    resumed = dict(zip(*read_labels(store, 1)))
    uninterrupted = dict(zip(*read_labels(run_store(s3_server, "e2e"), 1)))
    assert sorted(resumed) == sorted(uninterrupted)
    for image_id, scores in uninterrupted.items():
        np.testing.assert_allclose(resumed[image_id], scores, atol=1e-4, err_msg=image_id)
    # the killed scoring attempts were in the shards of the round's score-cache entry: each
    # shard's commit dropped them, so the entry holds exactly the files its commit lists
    from ccd_ray.stages.score_cache import entry_files

    cache = RunStore(store.fs, posixpath.join(posixpath.dirname(store.root), "score-cache"))
    entry = store.marker("round-1/raw")["cache_entry"]
    held = {i.path for i in store.fs.get_file_info(pafs.FileSelector(cache.path(entry),
                                                                     recursive=True))
            if i.path.endswith(".parquet")}
    assert held == set(entry_files(store.fs, cache.committed(entry))), \
        "a killed attempt's files were not cleaned up on commit"
