"""Training losses: soft-target BCE or generalised cross-entropy with per-image weights, and
two-view consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TARGET_LOSSES = ("bce", "gce")


def _weighted_mean(per_image: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_image.mean()
    return (per_image * weights).sum() / weights.sum().clamp_min(1e-8)


def soft_bce(logits: torch.Tensor, targets: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits towards soft targets in [0, 1], mean over classes, then a weighted mean
    over images (weights default to 1; a weight of 0 removes an image)."""
    per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    return _weighted_mean(per_image, weights)


def soft_gce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
             q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy (Zhang & Sabuncu, NeurIPS 2018) per class towards soft
    targets t: t (1 - p^q) / q + (1 - t) (1 - (1 - p)^q) / q, p = sigmoid(logit); reduced as
    soft_bce. q -> 0 is BCE, q = 1 the mean absolute error: a wrong label whose p the
    classifier already disputes weighs p^q times BCE's gradient, so confident
    disagreements with noisy pseudo-labels pull less."""
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    per_class = (targets * (1 - torch.exp(q * log_p))
                 + (1 - targets) * (1 - torch.exp(q * log_not_p))) / q
    return _weighted_mean(per_class.mean(dim=1), weights)


def target_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
                kind: str, q: float) -> torch.Tensor:
    """train.loss: 'bce' (soft_bce) or 'gce' (soft_gce with train.gce_q)."""
    if kind == "bce":
        return soft_bce(logits, targets, weights)
    if kind == "gce":
        return soft_gce(logits, targets, weights, q)
    raise ValueError(f"loss {kind!r}: expected one of {', '.join(TARGET_LOSSES)}")


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
