"""The CCD job over Ray: the round loop (method.rounds) with a Ray executor, then the final
classifier, evaluation and report.

The executor's heavy stages (raw teacher scores of each round, training inputs, each training
segment) are committed in the run's storage and skipped when a rerun finds them committed, so
running the same command with the same run id again resumes where it stopped. Labels are
derived from the committed scores by the round loop on the driver (cheap, deterministic) and
committed as round-R/labels."""

from __future__ import annotations

import json
import logging
import posixpath
import time
from contextlib import contextmanager

import numpy as np
import yaml

from ccd_ray.cli import log
from ccd_ray.config import CCDConfig, ConfigError
from ccd_ray.io.corpus import commit_manifest, corpus_truth
from ccd_ray.io.storage import RunStore, exists, read_bytes, write_bytes, write_json
from ccd_ray.method.metrics import truth_matrix
from ccd_ray.method.rounds import RoundScores, Targets, run_rounds
from ccd_ray.method.schedule import Segment, selection_threshold
from ccd_ray.stages import labeling
from ccd_ray.stages.evaluate import FINAL_STAGE, classifier_scores, finish_run, training_probs
from ccd_ray.stages.train import checkpoint_at, export_classifier, fit_segment, training_dataset
from ccd_ray.stages.train_inputs import INPUTS_STAGE, build_inputs

CLASSIFIER_FILE = "classifier.pt"
logger = logging.getLogger(__name__)


def check_run_config(cfg: CCDConfig, store: RunStore) -> None:
    """Write the run's config; a rerun with the same run id must not change the method or the
    corpus once a stage is committed (before that, e.g. after a start that stopped on a broken
    teacher path, the corrected config replaces it)."""
    path = store.path("config.yaml")
    if exists(store.fs, path) and store.committed(labeling.raw_stage(0)) is not None:
        previous = yaml.safe_load(read_bytes(store.fs, path))
        current = cfg.to_dict()
        changed = sorted(k for k in ("classes", "teacher", "initial", "labels", "relabel", "train")
                         if previous.get(k) != json.loads(json.dumps(current[k])))
        # the same method on another corpus is another run too (its stages hold other images)
        changed += [f"data.{k}" for k in ("corpus_uri", "corpus_format")
                    if previous.get("data", {}).get(k) != current["data"][k]]
        if changed:
            raise ConfigError(f"run_id: run {cfg.run_id!r} already exists with different "
                              f"settings in {changed}; use a new run_id or the original config")
        return
    write_bytes(store.fs, path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
    write_json(store.fs, store.path("classes.json"), cfg.classes.names)


@contextmanager
def stage_log(store: RunStore, name: str, detail=lambda: "", images=None):
    """One console line per stage, when it ends (or was found committed): its counts, time and
    rate (images: the number the rate counts, read when the stage ends). That it started goes to
    the run's log file only."""
    committed = store.committed(name) is not None
    started = time.time()
    if not committed:
        logger.info("%s: started", name)
    yield
    seconds = time.time() - started
    extra = detail()
    if committed:
        verb = "skipped (already committed)"
    else:
        count = images() if images else None
        rate = f", {count / seconds:.1f} images/s" if count and seconds > 0 else ""
        verb = f"done in {seconds:.1f} s{rate}"
    log(f"{name}: {verb}{'; ' + extra if extra else ''}")


def scored_images(store: RunStore, name: str) -> int | None:
    """The images a scoring stage ran the teacher on (None when its scores came from the score
    cache: no rate to give)."""
    marker = store.marker(name)
    return marker["images_run"] if marker.get("teacher_passes_run") else None


def scoring_counts(store: RunStore, name: str) -> str:
    """What a scoring stage's marker counts: images, labeled, errors, the teacher's work done
    by the run that committed it (the shards a killed earlier run had committed not in it)."""
    marker = store.marker(name)
    passes, resumed = marker.get("teacher_passes_run"), marker.get("shards_resumed")
    work = f"{passes} teacher passes" if passes or resumed else "scores from the score cache"
    if resumed:
        work += f" ({resumed} of {marker['shards']} shards resumed)"
    return (f"{marker['images']} images, {marker['labeled']} labeled, {marker['errors']} errors; "
            f"{work}")


class RayExecutor:
    """The round loop's work on Ray: teacher scores through Ray Data actor pools, training as
    one Ray Train fit() per segment. `trained` between segments is the segment's stage name."""

    def __init__(self, cfg: CCDConfig, store: RunStore, before_epoch=None):
        self.cfg, self.store, self.before_epoch = cfg, store, before_epoch
        self.inputs_path: str | None = None

    def classifier(self, trained: str) -> bytes:
        return read_bytes(self.store.fs, posixpath.join(self.store.committed(trained),
                                                        CLASSIFIER_FILE))

    def training_inputs(self) -> str:
        if self.inputs_path is None:
            with stage_log(self.store, INPUTS_STAGE):
                self.inputs_path = build_inputs(self.cfg, self.store)
        return self.inputs_path

    def score_round(self, round_index: int, trained: str | None) -> RoundScores:
        cfg, store = self.cfg, self.store
        name = labeling.raw_stage(round_index)
        with stage_log(store, name, lambda: scoring_counts(store, name),
                       images=lambda: scored_images(store, name)):
            if round_index == 0:
                labeling.score_initial(cfg, store)
            elif store.committed(name) is None:
                classifier = self.classifier(trained)
                threshold = selection_threshold(
                    cfg, lambda: training_probs(classifier_scores(cfg, store, classifier)))
                labeling.score_relabel(cfg, store, round_index, classifier, threshold)
        ids, raw, _ = labeling.read_raw(cfg, store, round_index)
        return RoundScores(ids, raw)

    def publish_labels(self, round_index, ids, labels, bias, partials) -> None:
        name = labeling.labels_stage(round_index)

        def counts() -> str:
            marker = self.store.marker(labeling.raw_stage(round_index))
            return f"{marker['labeled']} labeled, {marker['errors']} errors"

        with stage_log(self.store, name, counts):
            labeling.commit_labels(self.cfg, self.store, round_index, ids, labels, bias, partials)

    def ground_truth(self) -> tuple[np.ndarray, np.ndarray]:
        truth = corpus_truth(self.cfg)
        if not truth:
            raise ConfigError(f"train.targets=ground_truth: the corpus {self.cfg.data.corpus_uri} "
                              "has no ground-truth labels")
        ids = np.array(sorted(truth))
        return ids, truth_matrix(truth, list(ids), self.cfg.classes.names)

    def train_segment(self, segment: Segment, targets: Targets, trained: str | None) -> str:
        cfg, store = self.cfg, self.store
        name = f"train/segment-{segment.index}"

        def detail() -> str:
            marker = store.marker(name)
            return (f"epochs {marker['epochs'][0]}..{marker['epochs'][1] - 1} on round-"
                    f"{segment.labels_round} labels, last loss "
                    f"{marker['metrics'].get('loss', float('nan')):.4f}")

        if store.committed(name) is None:
            self.training_inputs()  # its own stage line, before the segment's
        with stage_log(store, name, detail):
            if store.committed(name) is None:
                start_from = None
                if trained is not None:
                    start_from = checkpoint_at(store, store.marker(trained)["checkpoint"])
                dataset = training_dataset(cfg, self.training_inputs(), store, targets)
                result = fit_segment(cfg, store, dataset, segment.index, segment.epochs,
                                     start_from, self.before_epoch)
                attempt = store.begin(name)
                write_bytes(store.fs, posixpath.join(attempt, CLASSIFIER_FILE),
                            export_classifier(result.checkpoint, cfg))
                metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
                store.commit(name, attempt, {"checkpoint": result.checkpoint.path,
                                             "epochs": list(segment.epochs), "metrics": metrics})
        return name


def run_ccd(cfg: CCDConfig, before_epoch=None) -> RunStore:
    """Run (or resume) the whole job; returns the run's store. before_epoch: the tests' hook
    into the Train workers (see stages.train.train_loop_per_worker)."""
    store = RunStore.open(cfg.data.output_uri, cfg.run_id, cfg.data)
    log(f"run {cfg.run_id!r}: corpus {cfg.data.corpus_uri} -> {store.root}")
    check_run_config(cfg, store)
    # check_run_config has refused another corpus where round 0 is committed
    _, layout, listed = commit_manifest(
        cfg, store, work_done=store.committed(labeling.raw_stage(0)) is not None)
    log(f"corpus: {len(layout.tasks)} read tasks, "
        + ("listed once for the run (its manifest: corpus-manifest/)" if listed else
           "from the run's manifest (the files its first start listed)"))
    executor = RayExecutor(cfg, store, before_epoch)
    result = run_rounds(cfg, executor)
    with stage_log(store, FINAL_STAGE):
        final = finish_run(cfg, store, executor.classifier(result.trained),
                           executor.training_inputs())
    log(f"outputs: {final} (classifier.pt, metrics.json, report.md); labels per round in "
        f"{store.root}/round-*/labels")
    return store
