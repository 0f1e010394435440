"""Training the CAM classifier: one sampling policy, one epoch loop, one step.

Every training path calls `fit_epochs`: the Ray Train workers on their dataset shard, and the
in-process executor (tests, sweep trials) on the same rows read in the same order. Rows
arrive as a stream of column chunks (`pixels` uint8 N x 3 x S x S, `targets` N x C, `weights`
N); `shuffled_batches` passes them through a seeded buffer of `train.shuffle_buffer` rows and
cuts batches of `train.batch_size`, so the order depends on the seed, epoch and rank, never
on how the stream was chunked into blocks. Pure PyTorch/NumPy: no Ray here."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

from ccd_ray.config import CCDConfig, TrainConfig
from ccd_ray.method.classifier import CAMClassifier, normalise
from ccd_ray.method.losses import consistency_loss, consistency_weight, target_loss
from ccd_ray.method.rows import Chunk


def augment_pair(images: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of normalised images: a random horizontal flip shared by both, and for the
    second a per-image brightness/contrast jitter (so CAMs of both views stay aligned)."""
    n = images.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    first = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.4, generator=generator)
    brightness = torch.empty(n, 1, 1, 1).uniform_(-0.4, 0.4, generator=generator)
    mean = first.mean(dim=(1, 2, 3), keepdim=True)
    second = (first - mean) * contrast + mean + brightness
    return first, second


def step_losses(model: torch.nn.Module, first: torch.Tensor, second: torch.Tensor,
                targets: torch.Tensor, weights: torch.Tensor | None, beta: float,
                loss: tuple[str, float] = ("bce", 0.0)) -> dict[str, torch.Tensor]:
    """Losses of one batch (loss: train.loss and train.gce_q); the second view is only run
    when the consistency term is on."""
    logits, _ = model(first)
    bce = target_loss(logits, targets, weights, *loss)
    if beta > 0:
        logits_second, _ = model(second)
        consist = consistency_loss(logits, logits_second)
    else:
        consist = torch.zeros((), device=logits.device)
    return {"loss": bce + beta * consist, "bce": bce.detach(), "consistency": consist.detach()}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, first: torch.Tensor,
               second: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
               beta: float, loss: tuple[str, float] = ("bce", 0.0)) -> dict[str, float]:
    """One optimiser step on a batch already on the model's device; bf16 autocast on GPU."""
    device = first.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        losses = step_losses(model, first, second, targets, weights, beta, loss)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {key: float(value.detach()) for key, value in losses.items()}


def mean_losses(steps: list[dict[str, float]]) -> dict[str, float]:
    keys = ("loss", "bce", "consistency")
    return {key: sum(s[key] for s in steps) / max(len(steps), 1) for key in keys}


BATCH_KEYS = ("pixels", "targets", "weights")


def epoch_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The generator of one worker's epoch: its shuffle and (through a derived torch seed) its
    augmentations; the same for a resumed epoch as for an uninterrupted one."""
    return np.random.default_rng([seed, epoch, rank])


def shuffled_batches(chunks: Iterable[Chunk], batch_size: int, buffer_rows: int,
                     rng: np.random.Generator) -> Iterator[Chunk]:
    """Batches of a row stream shuffled through a buffer: each incoming row displaces a random
    row of the full buffer, which is emitted; the rest leaves in random order at the end. A
    last batch of one joins the previous batch (a stream of a single row yields nothing), since
    batch norm cannot train on a single image whose feature map is 1x1."""
    buffer: list[tuple[np.ndarray, ...]] = []
    batch: list[tuple[np.ndarray, ...]] = []
    held: list[tuple[np.ndarray, ...]] | None = None

    def emit(row):
        nonlocal held
        batch.append(row)
        if len(batch) == batch_size:
            ready, held = held, list(batch)
            batch.clear()
            return ready
        return None

    def stack(rows):
        return {key: np.stack([r[k] for r in rows]) for k, key in enumerate(BATCH_KEYS)}

    for chunk in chunks:
        for row in zip(*(chunk[key] for key in BATCH_KEYS)):
            if len(buffer) < buffer_rows:
                buffer.append(row)
                continue
            slot = int(rng.integers(len(buffer)))
            buffer[slot], row = row, buffer[slot]
            ready = emit(row)
            if ready:
                yield stack(ready)
    for slot in rng.permutation(len(buffer)):
        ready = emit(buffer[slot])
        if ready:
            yield stack(ready)
    if len(batch) == 1:
        held, batch = (held + batch if held else None), []
    for rows in (held, batch):
        if rows:
            yield stack(rows)


def new_classifier(cfg: CCDConfig) -> tuple[CAMClassifier, torch.optim.Optimizer]:
    """The classifier and its Adam optimiser at their seeded start: the same initial weights
    on every Train worker, in every executor and on every rerun."""
    tc = cfg.train
    torch.manual_seed(cfg.seed)
    model = CAMClassifier(tc.backbone, len(cfg.classes.names), tc.backbone_weights)
    optimizer = torch.optim.Adam(model.param_groups(tc.lr, tc.head_lr_mult),
                                 weight_decay=tc.weight_decay)
    return model, optimizer


def fit_epochs(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tc: TrainConfig,
               seed: int, epochs: range, rows_for_epoch: Callable[[int], Iterable[Chunk]],
               report: Callable[[dict[str, Any]], None], device: torch.device,
               rank: int = 0) -> None:
    """Train the epochs in order; after each, report its epoch number, batch count and mean
    losses (the caller checkpoints there). The only epoch loop of the project."""
    for epoch in epochs:
        rng = epoch_rng(seed, epoch, rank)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        beta = consistency_weight(epoch, tc.beta, tc.warmup_epochs)
        model.train()
        steps = []
        for batch in shuffled_batches(rows_for_epoch(epoch), tc.batch_size, tc.shuffle_buffer,
                                      rng):
            first, second = augment_pair(normalise(torch.from_numpy(batch["pixels"])), generator)
            steps.append(train_step(model, optimizer, first.to(device), second.to(device),
                                    torch.from_numpy(batch["targets"]).to(device),
                                    torch.from_numpy(batch["weights"]).to(device), beta,
                                    (tc.loss, tc.gce_q)))
        report({"epoch": epoch, "batches": len(steps), **mean_losses(steps)})
