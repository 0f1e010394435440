"""Ray Train: DDP training of the CAM classifier on the corpus joined with a round's labels.

The Ray Data workers that feed training decode the `train-inputs` stage (stages.train_inputs:
each image resized and encoded once per run); each training segment (the epochs between two
relabel rounds) is one TorchTrainer.fit() whose workers stream their shard of those inputs
with the current soft labels attached. A segment starts
from the previous segment's last checkpoint (weights, Adam state, epoch), so the segments
together are one uninterrupted schedule; a worker lost mid-epoch is replaced and resumes
from the segment's last checkpoint (FailureConfig)."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.data import ExecutionOptions
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from ccd_ray.config import CCDConfig, config_from_dict
from ccd_ray.io.storage import RunStore
from ccd_ray.method.classifier import CAMClassifier, classifier_bytes
from ccd_ray.method.rounds import Targets
from ccd_ray.method.rows import training_rows
from ccd_ray.method.training import fit_epochs, new_classifier
from ccd_ray.stages.train_inputs import input_files

STATE_FILE = "state.pt"
ROWS_PER_READ = 256  # rows per chunk a worker reads of its shard (the order does not depend on it)
# Ray 2.60's Train V2 logs every ray.train.report at INFO through a logger named by its file's
# path (logging.getLogger(__file__) in this module of Ray's), which RunConfig's LoggingConfig
# does not reach: one line an epoch, with the checkpoint's path, on the job's console
TRAIN_REPORT_LOGGER = "ray/train/v2/_internal/execution/context.py"


def quiet_train_reports() -> None:
    """Raise that logger to WARNING in this worker process. Found by the end of its name, so
    a Ray that names it otherwise is left as it is (tests/test_train_ray.py notices)."""
    for name in list(logging.root.manager.loggerDict):
        if name.replace("\\", "/").endswith(TRAIN_REPORT_LOGGER):
            logging.getLogger(name).setLevel(logging.WARNING)


def training_dataset(cfg: CCDConfig, inputs_path: str, store: RunStore, targets: Targets
                     ) -> ray.data.Dataset:
    """The training split of the stored inputs, decoded, with each image's soft targets and
    weight (decoded in this map, on Ray Data's CPU workers, not in the Train workers)."""
    return ray.data.read_parquet(input_files(store, inputs_path), filesystem=store.fs).map_batches(
        training_rows, batch_format="numpy",
        fn_kwargs={"target_ids": targets.ids, "scores": targets.scores,
                   "weights": targets.weights, "image_size": cfg.train.image_size})


def ingest_config() -> DataConfig:
    """Ray Train's ingest options. Train replaces a dataset's own execution options with these
    (by default the driver's global DataContext, where blocks arrive in completion order);
    keeping the block order makes each worker's stream, and so a rerun's classifier and the
    in-process executor's, the same."""
    return DataConfig(execution_options=ExecutionOptions(preserve_order=True))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """A Train worker: rebuild the classifier (the same seeded init on every rank), resume the
    latest checkpoint, then the shared epoch loop over this worker's shard, checkpointing
    after every epoch. config["before_epoch"]: an optional callable(epoch, rank), the tests'
    hook for a worker lost mid-segment."""
    quiet_train_reports()
    cfg = config_from_dict(config["cfg"])
    tc = cfg.train
    first_epoch, end_epoch = config["epochs"]
    rank = ray.train.get_context().get_world_rank()
    model, optimizer = new_classifier(cfg)
    # this segment's own latest checkpoint (after a worker failure), else the previous segment's
    checkpoint = ray.train.get_checkpoint() or config.get("start_from")
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = max(first_epoch, state["epoch"] + 1)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    before_epoch = config.get("before_epoch")

    def rows(epoch: int):
        if before_epoch is not None:
            before_epoch(epoch, rank)
        return shard.iter_batches(batch_size=ROWS_PER_READ, batch_format="numpy")

    def report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save({"model": getattr(model, "module", model).state_dict(),
                            "optimizer": optimizer.state_dict(), "epoch": metrics["epoch"]},
                           Path(folder) / STATE_FILE)
                saved = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)

    fit_epochs(model, optimizer, tc, cfg.seed, range(first_epoch, end_epoch), rows, report,
               device, rank)


def fit_segment(cfg: CCDConfig, store: RunStore, dataset: ray.data.Dataset, segment: int,
                epochs: tuple[int, int], start_from: Checkpoint | None,
                before_epoch=None) -> ray.train.Result:
    """Train epochs [a, b) on dataset; resumes this segment's own checkpoints if it was cut.
    before_epoch: see train_loop_per_worker."""
    storage = store.path("ray-train")
    run_config = RunConfig(
        name=f"segment-{segment}", storage_path=storage, storage_filesystem=store.fs,
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        failure_config=FailureConfig(max_failures=cfg.compute.train_max_failures),
        # Train's INFO records (worker group started, each checkpoint and report) would stream
        # to the job's console, a dozen lines a segment; they stay in Ray's session logs
        logging_config=LoggingConfig(log_level="WARNING"))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "epochs": list(epochs), "start_from": start_from,
                           "before_epoch": before_epoch},
        scaling_config=ScalingConfig(num_workers=cfg.compute.train_workers,
                                     use_gpu=cfg.compute.use_gpu,
                                     resources_per_worker={"CPU": cfg.compute.cpus_per_worker}),
        run_config=run_config, datasets={"train": dataset}, dataset_config=ingest_config())
    return trainer.fit()


def export_classifier(checkpoint: Checkpoint, cfg: CCDConfig) -> bytes:
    """The self-describing classifier file (classifier.save_classifier format) of a checkpoint."""
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    model = CAMClassifier(cfg.train.backbone, len(cfg.classes.names))
    model.load_state_dict(state["model"])
    return classifier_bytes(model, cfg.classes.names, cfg.train.image_size)


def checkpoint_at(store: RunStore, path: str) -> Checkpoint:
    return Checkpoint(path=path, filesystem=store.fs)
