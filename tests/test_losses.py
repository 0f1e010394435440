"""Losses: weighted soft BCE, the consistency term and its warm-up schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ccd_ray.method.losses import consistency_loss, consistency_weight, soft_bce


def _logits(*shape, seed=0, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_consistency_zero_for_identical_views():
    a = _logits(6, 5)
    assert float(consistency_loss(a, a.clone())) == pytest.approx(0.0, abs=1e-7)
    big = torch.tensor([[30.0, -30.0, 0.0]])
    assert float(consistency_loss(big, big.clone())) == pytest.approx(0.0, abs=1e-6)


def test_consistency_positive_for_different_views():
    a, b = _logits(6, 5, seed=0), _logits(6, 5, seed=1)
    assert float(consistency_loss(a, b)) > 1e-3
    # a single differing class is enough
    c = a.clone()
    c[2, 3] += 1.0
    assert float(consistency_loss(a, c)) > 0


def test_consistency_is_the_bernoulli_kl():
    a, b = _logits(4, 3, seed=2), _logits(4, 3, seed=3)
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    torch.testing.assert_close(consistency_loss(a, b), kl.mean(), rtol=1e-5, atol=1e-6)


def test_consistency_gradient_equals_bce_towards_detached_anchor():
    anchor = _logits(5, 4, seed=4).requires_grad_(True)
    other = _logits(5, 4, seed=5).requires_grad_(True)
    consistency_loss(anchor, other).backward()
    ours = other.grad.clone()
    assert anchor.grad is None           # the anchor is a fixed target

    other_ref = other.detach().clone().requires_grad_(True)
    target = torch.sigmoid(anchor.detach())
    F.binary_cross_entropy_with_logits(other_ref, target).backward()
    torch.testing.assert_close(ours, other_ref.grad, rtol=1e-6, atol=1e-8)
    # and the analytic form: (sigmoid(other) - sigmoid(anchor)) / numel
    torch.testing.assert_close(ours, (torch.sigmoid(other.detach()) - target) / other.numel(),
                               rtol=1e-5, atol=1e-8)
    assert float(ours.abs().sum()) > 0


def test_consistency_gradient_through_shared_model():
    """When both views come from one model, only the second view's path gets gradient."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    consistency_loss(layer(x1), layer(x2)).backward()
    got = layer.weight.grad.clone()
    layer.zero_grad()
    F.binary_cross_entropy_with_logits(layer(x2), torch.sigmoid(layer(x1)).detach()).backward()
    torch.testing.assert_close(got, layer.weight.grad, rtol=1e-5, atol=1e-7)


def test_soft_bce_matches_torch_without_weights():
    logits, targets = _logits(6, 3, seed=6), torch.rand(6, 3, generator=torch.Generator()
                                                         .manual_seed(7))
    torch.testing.assert_close(soft_bce(logits, targets),
                               F.binary_cross_entropy_with_logits(logits, targets))
    ones = torch.ones(6)
    torch.testing.assert_close(soft_bce(logits, targets, ones), soft_bce(logits, targets))


def test_soft_bce_zero_weight_removes_sample():
    logits, targets = _logits(4, 3, seed=8), torch.rand(4, 3, generator=torch.Generator()
                                                         .manual_seed(9))
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0])
    keep = [0, 2]
    torch.testing.assert_close(soft_bce(logits, targets, weights),
                               soft_bce(logits[keep], targets[keep]))
    # changing a removed sample's logits changes nothing, not even the gradient of the others
    moved = logits.clone()
    moved[1] += 100.0
    torch.testing.assert_close(soft_bce(moved, targets, weights), soft_bce(logits, targets,
                                                                           weights))
    x = logits.clone().requires_grad_(True)
    soft_bce(x, targets, weights).backward()
    assert torch.equal(x.grad[[1, 3]], torch.zeros(2, 3))
    assert bool((x.grad[keep] != 0).all())


def test_soft_bce_weighted_mean():
    logits, targets = _logits(3, 2, seed=10), torch.rand(3, 2, generator=torch.Generator()
                                                         .manual_seed(11))
    per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    weights = torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(soft_bce(logits, targets, weights),
                               (per_image * weights).sum() / weights.sum())
    # scale-invariant in the weights
    torch.testing.assert_close(soft_bce(logits, targets, weights * 7),
                               soft_bce(logits, targets, weights))
    # all-zero weights: a finite zero, not NaN
    assert float(soft_bce(logits, targets, torch.zeros(3))) == 0.0


def test_consistency_weight_schedule():
    assert [consistency_weight(e, 1.5, 2) for e in range(5)] == [0.0, 0.0, 1.5, 1.5, 1.5]
    assert consistency_weight(0, 0.7, 0) == 0.7
    assert consistency_weight(9, 0.0, 2) == 0.0


def test_gce_spans_bce_and_mae_and_weighs_disputed_labels_less():
    from ccd_ray.method.losses import soft_gce, target_loss

    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4) * 3, torch.rand(6, 4)
    weights = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 0.5])
    p = torch.sigmoid(logits)
    # q = 1: the mean absolute error between p and the soft target, weighted as BCE is
    mae = (targets * (1 - p) + (1 - targets) * p).mean(dim=1)
    torch.testing.assert_close(soft_gce(logits, targets, weights, 1.0),
                               (mae * weights).sum() / weights.sum())
    # q -> 0: BCE
    torch.testing.assert_close(soft_gce(logits, targets, weights, 1e-5),
                               soft_bce(logits, targets, weights), rtol=1e-3, atol=1e-4)
    # a positive label the classifier disputes (p small) pulls p^q times BCE's gradient
    x = torch.tensor([[-4.0]], requires_grad=True)
    soft_gce(x, torch.ones(1, 1), q=0.7).backward()
    gce_grad = float(x.grad)
    x.grad = None
    soft_bce(x, torch.ones(1, 1)).backward()
    assert gce_grad == pytest.approx(float(x.grad) * float(torch.sigmoid(x.detach())) ** 0.7)
    torch.testing.assert_close(target_loss(logits, targets, None, "bce", 0.7),
                               soft_bce(logits, targets))
    with pytest.raises(ValueError, match="loss 'mse'"):
        target_loss(logits, targets, None, "mse", 0.7)
