"""One training step of the CAM classifier: soft-target BCE plus two-view consistency.

Pure PyTorch: the single-process reference and the Ray Train workers call the same step."""

from __future__ import annotations

import torch

from ccd_ray.method.classifier import CAMClassifier
from ccd_ray.method.losses import consistency_loss, consistency_weight, soft_bce


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


def batch_indices(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split an epoch's order into batches; a last batch of one joins the previous one, since
    batch norm cannot train on a single image whose feature map is 1x1."""
    chunks = list(torch.split(order, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def step_losses(model: torch.nn.Module, first: torch.Tensor, second: torch.Tensor,
                targets: torch.Tensor, weights: torch.Tensor | None, beta: float
                ) -> dict[str, torch.Tensor]:
    """Losses of one batch; the second view is only run when the consistency term is on."""
    logits, _ = model(first)
    bce = soft_bce(logits, targets, weights)
    if beta > 0:
        logits_second, _ = model(second)
        consist = consistency_loss(logits, logits_second)
    else:
        consist = torch.zeros((), device=logits.device)
    return {"loss": bce + beta * consist, "bce": bce.detach(), "consistency": consist.detach()}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, first: torch.Tensor,
               second: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
               beta: float) -> dict[str, float]:
    """One optimiser step on a batch already on the model's device; bf16 autocast on GPU."""
    device = first.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        losses = step_losses(model, first, second, targets, weights, beta)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    optimizer.step()
    return {key: float(value.detach()) for key, value in losses.items()}


def mean_losses(steps: list[dict[str, float]]) -> dict[str, float]:
    keys = ("loss", "bce", "consistency")
    return {key: sum(s[key] for s in steps) / max(len(steps), 1) for key in keys}


def train_epoch(model: CAMClassifier | torch.nn.Module, optimizer: torch.optim.Optimizer,
                batches, epoch: int, beta: float, warmup_epochs: int,
                generator: torch.Generator) -> dict[str, float]:
    """One pass over batches of (images, targets, weights); returns the mean losses."""
    model.train()
    weight = consistency_weight(epoch, beta, warmup_epochs)
    device = next(model.parameters()).device
    steps = []
    for images, targets, weights in batches:
        first, second = augment_pair(images, generator)
        steps.append(train_step(model, optimizer, first.to(device), second.to(device),
                                targets.to(device),
                                None if weights is None else weights.to(device), weight))
    return mean_losses(steps)
