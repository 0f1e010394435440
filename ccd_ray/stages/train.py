"""Ray Train: DDP training of the CAM classifier on the corpus joined with a round's labels.

The images are decoded and resized once per run into a `train-inputs` stage; each training
segment (the epochs between two relabel rounds) is one TorchTrainer.fit() whose workers
stream their shard of those inputs with the current soft labels attached. A segment starts
from the previous segment's last checkpoint (weights, Adam state, epoch), so the segments
together are one uninterrupted schedule; a worker lost mid-epoch is replaced and resumes
from the segment's last checkpoint (FailureConfig)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from ray.data import ExecutionOptions
from ray.train import (Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig,
                       ScalingConfig)
from ray.train.torch import TorchTrainer

from ccd_ray.method.classifier import CAMClassifier, normalise, resize_images, save_classifier
from ccd_ray.config import CCDConfig, config_from_dict
from ccd_ray.io.decode import decode_image
from ccd_ray.stages.labeling import corpus_rows
from ccd_ray.io.storage import RunStore
from ccd_ray.method.training import augment_pair, mean_losses, train_step
from ccd_ray.method.losses import consistency_weight

INPUTS_STAGE = "train-inputs"
STATE_FILE = "state.pt"
# Test hook, read by the driver: "EPOCH:MARKER_FILE" makes the rank-0 worker exit abruptly in
# that epoch, once (the marker file records that it happened), to prove recovery from a lost
# worker.
FAULT_ENV = "CCD_RAY_FAIL_WORKER_ONCE"


def is_holdout(image_id: str, fraction: float, seed: int) -> bool:
    """A stable split: the same image is held out on every run with the same seed."""
    digest = hashlib.sha256(f"holdout\x1f{seed}\x1f{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def _inputs_batch(batch: pa.Table, cfg_dict: dict) -> pa.Table:
    cfg = config_from_dict(cfg_dict)
    ids, pixels, holdout = [], [], []
    for image_id, data, error in zip(batch.column("image_id").to_pylist(),
                                     batch.column("image").to_pylist(),
                                     batch.column("error").to_pylist()):
        if error:
            continue  # recorded by the labeling stages
        decoded = decode_image(data, cfg.data.max_image_pixels, cfg.data.max_image_side)
        if decoded.error:
            continue
        ids.append(image_id)
        pixels.append(resize_images([decoded.image], cfg.train.image_size)[0].numpy().tobytes())
        holdout.append(is_holdout(image_id, cfg.train.holdout_fraction, cfg.seed))
    return pa.table({"image_id": pa.array(ids, pa.string()), "pixels": pa.array(pixels, pa.binary()),
                     "holdout": pa.array(holdout, pa.bool_())})


def build_inputs(cfg: CCDConfig, store: RunStore) -> str:
    """Decode and resize every good image once (uint8, train.image_size), with its split."""
    if store.committed(INPUTS_STAGE) is None:
        attempt = store.begin(INPUTS_STAGE)
        inputs = corpus_rows(cfg).map_batches(_inputs_batch, batch_format="pyarrow",
                                              fn_kwargs={"cfg_dict": cfg.to_dict()})
        # rows land in corpus order, so every run trains on the same sequence (reproducible)
        inputs.context.execution_options.preserve_order = True
        inputs.write_parquet(attempt, filesystem=store.fs)
        store.commit(INPUTS_STAGE, attempt)
    return store.committed(INPUTS_STAGE)


def _attach_labels(batch: pa.Table, ids: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                   image_size: int) -> dict[str, np.ndarray]:
    """Training rows of the batch (not held out, labeled) with their targets and weights."""
    batch_ids = np.asarray(batch.column("image_id").to_pylist(), dtype=ids.dtype)
    rows = np.minimum(np.searchsorted(ids, batch_ids), len(ids) - 1)
    keep = (ids[rows] == batch_ids) & ~np.asarray(batch.column("holdout").to_pylist(), dtype=bool)
    pixels = [np.frombuffer(p, dtype=np.uint8).reshape(3, image_size, image_size)
              for p, k in zip(batch.column("pixels").to_pylist(), keep) if k]
    return {"pixels": np.stack(pixels) if pixels else np.zeros((0, 3, image_size, image_size),
                                                               np.uint8),
            "targets": scores[rows[keep]], "weights": weights[rows[keep]]}


def training_dataset(cfg: CCDConfig, inputs_path: str, store: RunStore,
                     labels: dict[str, np.ndarray], weights: dict[str, float]) -> ray.data.Dataset:
    """The training split with each image's soft targets and sample weight attached."""
    ids = np.array(sorted(labels))
    scores = np.stack([labels[i] for i in ids]).astype(np.float32)
    weight = np.array([weights.get(i, 1.0) for i in ids], dtype=np.float32)
    dataset = ray.data.read_parquet(inputs_path, filesystem=store.fs).map_batches(
        _attach_labels, batch_format="pyarrow",
        fn_kwargs={"ids": ids, "scores": scores, "weights": weight,
                   "image_size": cfg.train.image_size})
    return dataset


def ingest_config() -> DataConfig:
    """Ray Train's ingest options. Train replaces a dataset's own execution options with these
    (by default the driver's global DataContext, where blocks arrive in completion order);
    keeping the block order makes each worker's shard and its seeded shuffle, and so a rerun's
    classifier, reproducible."""
    return DataConfig(execution_options=ExecutionOptions(preserve_order=True))


def _maybe_fail(spec: str | None, epoch: int, rank: int) -> None:
    if not spec or rank != 0:
        return
    fail_epoch, marker = spec.split(":", 1)
    if int(fail_epoch) == epoch and not Path(marker).exists():
        Path(marker).write_text("failed once\n")
        os._exit(1)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = config_from_dict(config["cfg"])
    tc = cfg.train
    first_epoch, end_epoch = config["epochs"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and every rerun
    model = CAMClassifier(tc.backbone, len(cfg.classes.names), tc.backbone_weights)
    optimizer = torch.optim.Adam(model.param_groups(tc.lr, tc.head_lr_mult),
                                 weight_decay=tc.weight_decay)
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
    for epoch in range(first_epoch, end_epoch):
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 16 + rank)
        beta = consistency_weight(epoch, tc.beta, tc.warmup_epochs)
        model.train()
        steps = []
        for batch in shard.iter_torch_batches(batch_size=tc.batch_size, device="cpu",
                                              local_shuffle_buffer_size=4 * tc.batch_size,
                                              local_shuffle_seed=cfg.seed + epoch,
                                              pin_memory=device.type == "cuda"):
            if len(batch["pixels"]) < 2:
                continue  # batch norm cannot train on one image
            _maybe_fail(config.get("fail_once"), epoch, rank)
            first, second = augment_pair(normalise(batch["pixels"]), generator)
            steps.append(train_step(model, optimizer, first.to(device), second.to(device),
                                    batch["targets"].to(device), batch["weights"].to(device),
                                    beta))
        metrics = {"epoch": epoch, "batches": len(steps), **mean_losses(steps)}
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                torch.save({"model": getattr(model, "module", model).state_dict(),
                            "optimizer": optimizer.state_dict(), "epoch": epoch},
                           Path(folder) / STATE_FILE)
                saved = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)


def fit_segment(cfg: CCDConfig, store: RunStore, dataset: ray.data.Dataset, segment: int,
                epochs: tuple[int, int], start_from: Checkpoint | None) -> ray.train.Result:
    """Train epochs [a, b) on dataset; resumes this segment's own checkpoints if it was cut."""
    storage = store.path("ray-train")
    run_config = RunConfig(
        name=f"segment-{segment}", storage_path=storage, storage_filesystem=store.fs,
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        failure_config=FailureConfig(max_failures=cfg.compute.train_max_failures))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "epochs": list(epochs), "start_from": start_from,
                           "fail_once": os.environ.get(FAULT_ENV)},
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
    buffer = io.BytesIO()
    save_classifier(buffer, model, cfg.classes.names, cfg.train.image_size)
    return buffer.getvalue()


def checkpoint_at(store: RunStore, path: str) -> Checkpoint:
    return Checkpoint(path=path, filesystem=store.fs)
