"""Training losses: soft-target BCE with per-image weights, and two-view consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_bce(logits: torch.Tensor, targets: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits towards soft targets in [0, 1], mean over classes, then a weighted mean
    over images (weights default to 1; a weight of 0 removes an image)."""
    per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    if weights is None:
        return per_image.mean()
    return (per_image * weights).sum() / weights.sum().clamp_min(1e-8)


def consistency_loss(logits_anchor: torch.Tensor, logits_other: torch.Tensor) -> torch.Tensor:
    """Per-class Bernoulli KL(sigmoid(anchor) || sigmoid(other)), anchor detached, mean over
    classes and images.

    Its gradient in `logits_other` equals that of the authors' BCE towards the detached
    sigmoid of the anchor view (the two differ by the anchor's entropy, a constant), and
    unlike that BCE it is zero when the two views agree."""
    target = torch.sigmoid(logits_anchor.detach())
    bce = F.binary_cross_entropy_with_logits(logits_other, target, reduction="none")
    target_entropy = F.binary_cross_entropy_with_logits(logits_anchor.detach(), target,
                                                        reduction="none")
    return (bce - target_entropy).mean()


def consistency_weight(epoch: int, beta: float, warmup_epochs: int) -> float:
    """beta once the warm-up is over, 0 before (epochs count from 0)."""
    return beta if epoch >= warmup_epochs else 0.0
