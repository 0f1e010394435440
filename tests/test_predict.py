"""jobs/predict.py: a corpus in S3 (moto on loopback) labeled with a trained classifier.pt
through Ray Data; every image labeled (the same probabilities as classifier.predict in this
process), every bad one in errors.parquet; a run killed after two shards' commits resumes and
predicts only the other shards. Plus the shard bookkeeping and the CLI's refusals, no Ray."""

from __future__ import annotations

import io
import logging
import posixpath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from conftest import INTEGRATION, TEST_CLASSES, make_classifier
from script_modules import load_script

from ccd_ray.demo.scenes import make_scenes
from ccd_ray.io.decode import EMPTY, NOT_AN_IMAGE, TRUNCATED, decode_image, encode_png
from ccd_ray.io.inputs_codec import encode_inputs
from ccd_ray.io.storage import RunStore, filesystem_for, read_json, write_bytes, write_json
from ccd_ray.method.classifier import load_classifier, predict
from ccd_ray.method.shards import ShardTally
from ccd_ray.preflight import EXIT_CONFIG, EXIT_INTERNAL
from ccd_ray.stages import predict as predict_stage
from ccd_ray.stages import shards as shard_stages
from ccd_ray.stages.labeling import ERRORS_SCHEMA, LABELS_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "predict/corpus"
SHARDS = 4
CLASSIFIER_SEED = 3
TOLERANCE = 1e-5  # the same weights and torch build in the actor and here


class Killed(Exception):
    """The test's stand-in for a driver killed between two shard commits."""


def _job():
    """jobs/predict.py as a module (jobs/ is not a package)."""
    return load_script(ROOT / "jobs" / "predict.py", "predict_job")


def test_shard_tally_completes_a_shard_only_when_every_row_is_written():
    tally = ShardTally([0, 1, 2])
    assert tally.add(0, 5, 3, [], ["labels-a.parquet"], teacher_passes=4) is None
    assert (tally.rows_done, tally.passes_done) == (0, 0)  # only completed shards count
    done = tally.add(0, 5, 2, ["not an image", "truncated or corrupt image data: OSError: x"],
                     ["labels-b.parquet", "errors-b.parquet"], teacher_passes=1)
    assert done is not None and done.complete
    assert done.teacher_passes == 5 and (tally.rows_done, tally.passes_done) == (5, 5)
    assert done.counts() == {"images": 5, "labeled": 3, "errors": 2, "errors_by_reason": {
        "not an image": 1, "truncated or corrupt image data": 1}}
    assert done.files == ["labels-a.parquet", "labels-b.parquet", "errors-b.parquet"]
    assert tally.add(1, 4, 1, [], []) is None
    assert tally.unseen == {2} and set(tally.in_progress) == {1}
    with pytest.raises(RuntimeError, match="not pending"):
        tally.add(0, 5, 1, [], [])  # shard 0 is complete: more rows mean a bug
    with pytest.raises(RuntimeError, match="rows written"):
        tally.add(1, 4, 4, [], [])


def test_help_documents_every_argument(capsys):
    with pytest.raises(SystemExit) as done:
        _job().parse_args(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    for flag in ("--classifier", "--corpus", "--output", "--run-id", "--set", "--config",
                 "--debug", "docs/errors.md", "docs/predict.md", "resumes"):
        assert flag in text, flag


def test_cli_refuses_a_missing_classifier_and_other_class_names(tmp_path, capsys):
    job = _job()
    out = ["--output", str(tmp_path / "runs")]
    code = job.main(["--classifier", str(tmp_path / "nope.pt"), "--corpus", str(tmp_path), *out])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_CONFIG and len(err.splitlines()) == 1 and "nope.pt" in err
    _, checkpoint = make_classifier(list(TEST_CLASSES), CLASSIFIER_SEED)
    (tmp_path / "classifier.pt").write_bytes(checkpoint)
    code = job.main(["--classifier", str(tmp_path / "classifier.pt"), "--corpus", str(tmp_path),
                     *out, "--set", "classes.names=[a,b]"])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_CONFIG and "differ from the classifier's" in err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    code = job.main(["--classifier", str(tmp_path / "bad.pt"), "--corpus", str(tmp_path), *out])
    assert code == EXIT_CONFIG and "not a ccd-ray classifier.pt" in capsys.readouterr().err


def test_read_classifier_follows_a_committed_stage_folder(tmp_path, make_config):
    store = RunStore.open(str(tmp_path), "run", make_config().data)
    attempt = store.begin("final")
    write_bytes(store.fs, posixpath.join(attempt, "classifier.pt"), b"weights")
    store.commit("final", attempt)
    assert predict_stage.read_classifier(store.path("final"), make_config().data) == b"weights"


def test_thresholds_are_the_runs_per_class_ones_else_the_fixed_one(tmp_path, make_config):
    cfg = make_config("labels.threshold=0.3")
    names = cfg.classes.names
    store = RunStore.open(str(tmp_path), "run", cfg.data)
    attempt = store.begin("final")
    write_bytes(store.fs, posixpath.join(attempt, "classifier.pt"), b"weights")
    store.commit("final", attempt)
    fixed, source = predict_stage.read_thresholds(store.path("final"), cfg)
    assert fixed.tolist() == pytest.approx([0.3] * len(names)) and "every class" in source
    saved = {n: 0.1 * (k + 1) for k, n in enumerate(reversed(names))}  # not in class order
    write_json(store.fs, posixpath.join(attempt, "metrics.json"),
               {"threshold_rule": "otsu", "thresholds": {"classifier": saved}})
    for uri in (store.path("final"), posixpath.join(attempt, "classifier.pt")):
        per_class, source = predict_stage.read_thresholds(uri, cfg)
        assert per_class.tolist() == pytest.approx([saved[n] for n in names])
        assert "otsu" in source


# --- the integration test: Ray, S3 ---

def _corpus_rows() -> list[list[tuple[str, bytes]]]:
    """Four Parquet shards of 80 px scenes; the last also holds three broken images."""
    scenes = make_scenes(SHARDS * 5, seed=21, size=80, class_names=list(TEST_CLASSES))
    pngs = [encode_png(s.image) for s in scenes]
    shards = [[(f"s{k}/img-{i}", pngs[k * 5 + i]) for i in range(5)] for k in range(SHARDS)]
    shards[-1] += [("bad/empty", b""), ("bad/text", b"<html>not found</html>"),
                   ("bad/truncated", pngs[0][: len(pngs[0]) // 2])]
    return shards


BAD = {"bad/empty": EMPTY, "bad/text": NOT_AN_IMAGE, "bad/truncated": TRUNCATED}


@pytest.fixture(scope="module")
def s3_corpus(s3_config):
    cfg = s3_config(CORPUS)
    fs, root = filesystem_for(cfg.data.corpus_uri, cfg.data)
    images = {}
    for k, rows in enumerate(_corpus_rows()):
        table = pa.table({"image_id": [r[0] for r in rows], "image": [r[1] for r in rows]},
                         schema=pa.schema([("image_id", pa.string()), ("image", pa.binary())]))
        fs.create_dir(root, recursive=True)
        pq.write_table(table, posixpath.join(root, f"shard-{k:05d}.parquet"), filesystem=fs)
        images.update(rows)
    model, checkpoint = make_classifier(list(TEST_CLASSES), CLASSIFIER_SEED)
    classifier_uri = f"s3://{posixpath.dirname(root)}/classifier.pt"
    write_bytes(fs, posixpath.join(posixpath.dirname(root), "classifier.pt"), checkpoint)
    return cfg, images, checkpoint, classifier_uri


def _argv(cfg, classifier_uri: str, run_id: str) -> list[str]:
    sets = [*INTEGRATION, "compute.images_per_batch=4", "data.max_error_fraction=0.5",
            "compute.device=cpu", f"data.s3_endpoint={cfg.data.s3_endpoint}"]
    return ["--classifier", classifier_uri, "--corpus", cfg.data.corpus_uri, "--output",
            cfg.data.output_uri, "--run-id", run_id,
            *[arg for s in sets for arg in ("--set", s)]]


def _outputs(cfg, run_id: str):
    store = RunStore.open(cfg.data.output_uri, run_id, cfg.data)
    folder = store.committed(predict_stage.PREDICT_STAGE)
    assert folder is not None
    labels = pads.dataset(posixpath.join(folder, "labels"), filesystem=store.fs,
                          format="parquet").to_table().sort_by("image_id")
    errors = pq.read_table(posixpath.join(folder, "errors.parquet"), filesystem=store.fs)
    summary = read_json(store.fs, posixpath.join(folder, "summary.json"))
    return store, labels, errors, summary


def _shard_markers(store) -> dict[int, str]:
    return {i: store.marker(shard_stages.shard_stage(i))["attempt"]
            for i in shard_stages.committed_shards(store)}


@pytest.mark.ray
@pytest.mark.slow
def test_predict_labels_an_s3_corpus_and_resumes_after_a_kill(ray_session, s3_corpus,
                                                              monkeypatch, large_udf_warnings):
    cfg, images, checkpoint, classifier_uri = s3_corpus
    job = _job()
    assert job.main(_argv(cfg, classifier_uri, "full")) == 0
    assert large_udf_warnings() == []  # the classifier travelled by reference
    store, labels, errors, summary = _outputs(cfg, "full")

    # every good image labeled once, with classifier.predict's probabilities in this process
    assert labels.schema.equals(LABELS_SCHEMA)
    good = sorted(i for i in images if i not in BAD)
    assert labels.column("image_id").to_pylist() == good
    model, names, size = load_classifier(io.BytesIO(checkpoint))
    decoded = [torch.from_numpy(decode_image(images[i], cfg.data.max_image_pixels,
                                             cfg.data.max_image_side).image) for i in good]
    expected = predict(model, decoded, size).numpy()
    got = np.asarray(labels.column("scores").to_pylist(), dtype=np.float32)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert labels.column("labels").to_pylist() == [
        [n for n, s in zip(names, row) if s >= cfg.labels.threshold] for row in got]
    # every bad one in errors.parquet with its reason, and counted
    assert errors.schema.equals(ERRORS_SCHEMA)
    rows = {r["image_id"]: r for r in errors.to_pylist()}
    assert set(rows) == set(BAD)
    for image_id, reason in BAD.items():
        assert rows[image_id]["stage"] == "decode" and rows[image_id]["reason"].startswith(reason)
    assert (summary["images"], summary["labeled"], summary["errors"]) == (len(images), len(good),
                                                                         len(BAD))
    assert summary["shards"] == SHARDS and summary["shards_resumed"] == 0

    # killed after two shards' commits: those stay, nothing else is committed
    real_commit = shard_stages.commit_shard
    committed_now: list[int] = []

    def commit_then_die(store, under, shard, attempt, progress):
        if len(committed_now) == 2:
            raise Killed("killed by the test")
        real_commit(store, under, shard, attempt, progress)
        committed_now.append(shard)

    monkeypatch.setattr(shard_stages, "commit_shard", commit_then_die)
    assert job.main(_argv(cfg, classifier_uri, "resumed")) == EXIT_INTERNAL  # one line, no raise
    resumed_store = RunStore.open(cfg.data.output_uri, "resumed", cfg.data)
    first = _shard_markers(resumed_store)
    assert set(first) == set(committed_now) and len(first) == 2
    assert resumed_store.committed(predict_stage.PREDICT_STAGE) is None

    # the rerun predicts only the two other shards
    committed_now.clear()

    def commit_and_record(store, under, shard, attempt, progress):
        real_commit(store, under, shard, attempt, progress)
        committed_now.append(shard)

    monkeypatch.setattr(shard_stages, "commit_shard", commit_and_record)
    assert job.main(_argv(cfg, classifier_uri, "resumed")) == 0
    assert sorted(committed_now) == sorted(set(range(SHARDS)) - set(first))
    after = _shard_markers(resumed_store)
    assert {i: after[i] for i in first} == first  # the first run's shards were not redone
    _, labels2, errors2, summary2 = _outputs(cfg, "resumed")
    assert summary2["shards_resumed"] == 2
    assert labels2.column("image_id").to_pylist() == good  # no row twice, none lost
    assert np.abs(np.asarray(labels2.column("scores").to_pylist()) - got).max() <= TOLERANCE
    assert sorted(errors2.column("image_id").to_pylist()) == sorted(BAD)

    # a third run finds everything committed; another classifier under the same id is refused
    assert job.main(_argv(cfg, classifier_uri, "resumed")) == 0
    other = classifier_uri.replace("classifier.pt", "other.pt")
    fs, path = filesystem_for(other, cfg.data)
    write_bytes(fs, path, make_classifier(list(TEST_CLASSES), 99)[1])
    assert job.main(_argv(cfg, other, "resumed")) == EXIT_CONFIG


def test_predicted_scores_follow_the_classifier_not_a_constant():
    """Two random classifiers give different probabilities on the same scenes: the scores
    compared above depend on the weights (the comparison can fail)."""
    scenes = make_scenes(3, seed=2, size=80, class_names=list(TEST_CLASSES))
    images = [torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1) for s in scenes]
    a = predict(make_classifier(list(TEST_CLASSES), 1)[0], images, 64)
    b = predict(make_classifier(list(TEST_CLASSES), 2)[0], images, 64)
    assert (a - b).abs().max() > 100 * TOLERANCE


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def large_udf_warnings(monkeypatch):
    """Ray Data's warning about a map function larger than 1 MiB (its own threshold is 100
    MiB, above this test's 45 MB classifier): the classifier's bytes inside the function
    would trigger it, a reference does not."""
    from ray.data._internal.execution.operators import map_operator

    monkeypatch.setattr(map_operator.MapOperator, "MAP_UDF_WARN_SIZE_THRESHOLD", 1024**2)
    records = _Records()
    map_operator.logger.addHandler(records)
    yield lambda: [m for m in records.messages if "too large" in m]
    map_operator.logger.removeHandler(records)


@pytest.mark.ray
@pytest.mark.slow
def test_classifier_scores_ship_the_classifier_by_reference(ray_session, tmp_path, make_config,
                                                           large_udf_warnings):
    from ccd_ray.stages.evaluate import classifier_scores

    cfg = make_config(*INTEGRATION, "compute.device=cpu", f"data.output_uri={tmp_path}")
    store = RunStore.open(cfg.data.output_uri, "inputs", cfg.data)
    model, checkpoint = make_classifier(list(TEST_CLASSES), CLASSIFIER_SEED)
    pixels = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(4))
    attempt = store.begin("train-inputs")
    pq.write_table(pa.table({"image_id": [f"i{k}" for k in range(6)],
                             "image": encode_inputs(pixels.numpy(), "png", 95),
                             "holdout": [k % 2 == 0 for k in range(6)]}),
                   posixpath.join(attempt, "part.parquet"), filesystem=store.fs)
    store.commit("train-inputs", attempt)
    scores = classifier_scores(cfg, store, checkpoint)
    assert scores.ids.tolist() == [f"i{k}" for k in range(6)]
    assert scores.holdout.tolist() == [k % 2 == 0 for k in range(6)]
    expected = predict(model, list(pixels), 64).numpy()
    assert np.abs(scores.probs - expected).max() <= TOLERANCE
    assert large_udf_warnings() == []
