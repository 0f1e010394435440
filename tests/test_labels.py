"""Label maths: pooling, bias statistics (shard-mergeable), debiasing, fusion, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ccd_ray.method import labels as L
from ccd_ray.method import thresholds as T


def _softmax_scores(n, c, seed, sharpness=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, generator=g) * sharpness).softmax(dim=1)


def test_pool_views_max_and_mean():
    views = np.array([[0.1, 0.7, 0.2],
                      [0.6, 0.3, 0.1],
                      [0.2, 0.2, 0.6]], np.float32)
    np.testing.assert_allclose(L.pool_views(views, np.array([3]), "max"), [[0.6, 0.7, 0.6]])
    np.testing.assert_allclose(L.pool_views(views, np.array([3]), "mean"), [[0.3, 0.4, 0.3]],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="median"):
        L.pool_views(views, np.array([3]), "median")
    with pytest.raises(ValueError, match="at least 1"):
        L.pool_views(views, np.array([3, 0]), "max")
    # a batch of failed images only: no rows, still C columns
    assert L.pool_views(np.zeros((0, 3), np.float32), np.zeros(0, np.int32), "max").shape == (0, 3)


def test_pool_views_splits_in_order():
    scores = np.array([[0.1, 0.9], [0.5, 0.2],      # image 0: two views
                       [0.3, 0.3],                  # image 1: one view
                       [0.0, 0.4], [0.8, 0.1], [0.2, 0.2]], np.float32)  # image 2: three
    out = L.pool_views(scores, np.array([2, 1, 3]), "max")
    np.testing.assert_allclose(out, [[0.5, 0.9], [0.3, 0.3], [0.8, 0.4]])
    out = L.pool_views(scores, np.array([2, 1, 3]), "mean")
    np.testing.assert_allclose(out[2], [1.0 / 3, 0.7 / 3], rtol=1e-6)
    with pytest.raises(ValueError, match="in all"):
        L.pool_views(scores, np.array([2, 2]), "max")


@pytest.mark.parametrize("how", ["max", "mean"])
def test_pool_views_with_equal_view_counts_equals_the_segment_pooling(how):
    """The strided path (every image has V views) gives the segment path's pooling (max: the
    same bits; mean: within float32 rounding, since reduceat sums in another order)."""
    rng = np.random.default_rng(3)
    scores = rng.random((500 * 4, 7), dtype=np.float32)
    strided = L.pool_views(scores, np.full(500, 4), how)
    # one image of 5 views appended forces the segment path over the same first 500 images
    mixed = L.pool_views(np.concatenate([scores, rng.random((5, 7), dtype=np.float32)]),
                         np.r_[np.full(500, 4), 5], how)[:500]
    np.testing.assert_allclose(strided, mixed, rtol=0 if how == "max" else 1e-6, atol=0)
    assert not np.array_equal(strided, scores[0::4])  # pooled, not the first view


def test_entropy():
    for c in (2, 5, 20):
        torch.testing.assert_close(L.entropy(torch.full((1, c), 1.0 / c)),
                                   torch.tensor([math.log(c)]))
    # unnormalised rows are read as distributions
    torch.testing.assert_close(L.entropy(torch.full((1, 4), 0.9)), torch.tensor([math.log(4)]))
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    assert float(L.entropy(one_hot)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(L.entropy(torch.tensor([[0.5, 0.5, 0.0]]))[0]) == pytest.approx(math.log(2))


@pytest.mark.parametrize("form", L.DEBIAS_FORMS)
def test_debias_gamma_zero_is_identity(form):
    scores = _softmax_scores(10, 4, 0)
    bias = torch.tensor([0.1, 1.0, 3.0, 10.0])
    out = L.debias(scores, bias, 0.0, form)
    assert torch.equal(out, scores)
    assert out.data_ptr() != scores.data_ptr()  # a copy, not an alias


@pytest.mark.parametrize("form", L.DEBIAS_FORMS)
@pytest.mark.parametrize("statistic", ["count", "top1_mean"])
def test_debias_lowers_frequent_classes(statistic, form):
    # class 0 is the teacher's favourite: top-1 of most images with a high score
    # (many positives, high mean top-1); class 2 is rare and when top-1, only weakly
    scores = torch.tensor([[0.90, 0.05, 0.05],
                           [0.85, 0.10, 0.05],
                           [0.80, 0.15, 0.05],
                           [0.70, 0.20, 0.10],
                           [0.20, 0.70, 0.10],
                           [0.30, 0.30, 0.40]])
    partials = L.bias_partials(scores, threshold=0.5, entropy_threshold=10.0)
    bias = L.bias_vector(partials, statistic)
    assert bias[0] > bias[2]
    probe = torch.full((1, 3), 0.2)  # equal raw scores, small enough that nothing clamps
    for gamma in (0.5, 1.0, 2.0):
        out = L.debias(probe, bias, gamma, form)[0]
        assert out[0] < out[2], (statistic, gamma, bias)
        expected = ((0.2 / bias.pow(gamma)).clamp(0, 1) if form == "divide" else
                    torch.sigmoid(math.log(0.2 / 0.8) - gamma * bias.log()))
        torch.testing.assert_close(out, expected)
    # stronger gamma, stronger correction
    r1 = L.debias(probe, bias, 1.0, form)[0]
    r2 = L.debias(probe, bias, 2.0, form)[0]
    assert r2[2] / r2[0] > r1[2] / r1[0] > 1


def test_logit_shift_debias_keeps_every_class_ranking():
    """The default debias changes no class's AP and ties no scores at 1.0, on random scores
    and biases far from 1 (where the paper's clamp ties many); divide is shown to. The AP is
    compared in float64, the dtype it then returns: in float32 two scores within float32's
    resolution of 1.0 (6e-8) that a rare class's boost pushes further up can round equal."""
    from ccd_ray.method.metrics import per_class_ap

    rng = np.random.default_rng(0)
    for _ in range(20):
        raw = torch.from_numpy(rng.beta(0.5, 0.5, (400, 6)).clip(1e-6, 1 - 1e-6))
        truth = rng.random((400, 6)) < 0.3
        bias = torch.from_numpy(np.exp(rng.normal(0, 1.0, 6)).astype(np.float32))
        gamma = float(rng.uniform(0.25, 2.0))
        shifted = L.debias(raw, bias, gamma, "logit_shift")
        assert shifted.dtype == torch.float64
        assert bool(((shifted > 0) & (shifted < 1)).all())
        np.testing.assert_allclose(per_class_ap(shifted.numpy(), truth),
                                   per_class_ap(raw.numpy(), truth), rtol=0, atol=1e-12)
        # the float32 scores of a run: nothing tied at 1.0 (a teacher's p stays below 1 - 1e-4)
        raw32 = raw.clamp(1e-4, 1 - 1e-4).float()
        assert float((L.debias(raw32, bias, gamma, "logit_shift") == 1.0).float().mean()) == 0.0
    divided = L.debias(raw.float(), bias, gamma, "divide")
    assert float((divided == 1.0).float().mean()) > 0.01  # the clamp ties scores at 1.0
    with pytest.raises(ValueError, match="debias form 'clamp'"):
        L.debias(raw, bias, 1.0, "clamp")


def test_bias_vector_count_values():
    scores = torch.tensor([[0.9, 0.6, 0.1],
                           [0.8, 0.1, 0.1],
                           [0.7, 0.1, 0.2]])
    partials = L.bias_partials(scores, threshold=0.5, entropy_threshold=10.0)
    torch.testing.assert_close(partials["positives"], torch.tensor([3.0, 1.0, 0.0],
                                                                   dtype=torch.float64))
    bias = L.bias_vector(partials, "count")
    # n = [3, 1, 0 -> 1], mean 5/3
    torch.testing.assert_close(bias, torch.tensor([3 * 3 / 5, 3 / 5, 3 / 5]))
    assert bias.dtype == torch.float32


def test_bias_vector_top1_mean_values_and_unseen_class():
    scores = torch.tensor([[0.9, 0.05, 0.05],
                           [0.7, 0.2, 0.1],
                           [0.1, 0.6, 0.3]])
    partials = L.bias_partials(scores, threshold=0.5, entropy_threshold=10.0)
    bias = L.bias_vector(partials, "top1_mean")
    # class 0: mean(0.9, 0.7) = 0.8; class 1: 0.6; class 2 never top-1 -> mean of others 0.7
    torch.testing.assert_close(bias, torch.tensor([0.8, 0.6, 0.7]))


def test_bias_partials_only_confident_images_count_for_top1():
    sharp = torch.tensor([[0.97, 0.01, 0.02]])
    flat = torch.tensor([[0.34, 0.33, 0.33]])
    threshold = float(L.entropy(flat)[0]) - 0.01  # flat is uncertain, sharp is confident
    partials = L.bias_partials(torch.cat([sharp, flat, flat]), 0.5, threshold)
    torch.testing.assert_close(partials["top1_count"], torch.tensor([1.0, 0, 0],
                                                                    dtype=torch.float64))
    torch.testing.assert_close(partials["top1_sum"], torch.tensor([0.97, 0, 0],
                                                                  dtype=torch.float64))
    assert float(partials["images"]) == 3.0
    # nobody confident: top1_mean has no evidence and divides by nothing
    none = L.bias_partials(flat, 0.5, 0.0)
    assert torch.equal(L.bias_vector(none, "top1_mean"), torch.ones(3))


def test_bias_partials_merge_equals_concatenation():
    a = _softmax_scores(13, 5, 1)
    b = _softmax_scores(7, 5, 2)
    c = _softmax_scores(1, 5, 3)
    kwargs = dict(threshold=0.4, entropy_threshold=1.0)
    merged = L.merge_bias_partials([L.bias_partials(x, **kwargs) for x in (a, b, c)])
    whole = L.bias_partials(torch.cat([a, b, c]), **kwargs)
    assert set(merged) == set(whole)
    for key in whole:
        torch.testing.assert_close(merged[key], whole[key], rtol=1e-12, atol=1e-12)
    assert float(whole["top1_count"].sum()) > 0   # the confident filter kept something ...
    assert float(whole["top1_count"].sum()) < 21  # ... and dropped something
    for statistic in ("count", "top1_mean"):
        torch.testing.assert_close(L.bias_vector(merged, statistic),
                                   L.bias_vector(whole, statistic))
    with pytest.raises(ValueError):
        L.merge_bias_partials([])
    with pytest.raises(ValueError, match="statistic"):
        L.bias_vector(whole, "median")


def test_fuse():
    old = torch.tensor([[0.9, 0.1, 0.5]])
    new = torch.tensor([[0.2, 0.8, 0.5]])
    assert torch.equal(L.fuse(old, new, 1.0), old)
    assert torch.equal(L.fuse(old, new, 0.0), new)
    torch.testing.assert_close(L.fuse(old, new, 0.4), torch.tensor([[0.48, 0.52, 0.5]]))


def test_smoothing_floor_and_binarize():
    s = torch.tensor([[0.01, 0.5, 0.04]])
    assert torch.equal(L.smoothing_floor(s, 0.0), s)
    torch.testing.assert_close(L.smoothing_floor(s, 0.05), torch.tensor([[0.05, 0.5, 0.05]]))
    assert T.binarize(s.numpy(), 0.5).tolist() == [[False, True, False]]
    assert _names(np.array([[0.6, 0.2], [0.5, 0.9], [0.1, 0.1]], np.float32), ["cat", "dog"],
                  0.5) == [["cat"], ["cat", "dog"], []]
    assert _names(np.zeros((0, 2), np.float32), ["cat", "dog"], 0.5) == []


def test_sample_weights():
    confident = torch.tensor([[0.98, 0.01, 0.01]])
    uncertain = torch.tensor([[0.34, 0.33, 0.33]])
    scores = torch.cat([confident, uncertain, confident])
    w = L.sample_weights(scores, entropy_threshold=0.5, uncertain_weight=0.25)
    assert w.dtype == torch.float32
    assert w.tolist() == [1.0, 0.25, 1.0]
    assert L.sample_weights(scores, 0.5, 1.0).tolist() == [1.0, 1.0, 1.0]
    assert L.sample_weights(scores, 10.0, 0.0).tolist() == [1.0, 1.0, 1.0]


def _names(scores: np.ndarray, class_names: list[str], threshold) -> list[list[str]]:
    offsets, classes = T.label_indices(scores, threshold)
    return [[class_names[c] for c in classes[a:b]] for a, b in zip(offsets[:-1], offsets[1:])]


def test_label_indices_per_class_thresholds():
    scores = np.array([[0.6, 0.2], [0.3, 0.9], [0.25, 0.1]], np.float32)
    # class 0 at 0.25 (inclusive), class 1 at 0.95: a per-class vector, not its first value
    assert _names(scores, ["cat", "dog"], np.array([0.25, 0.95], np.float32)) == [
        ["cat"], ["cat"], ["cat"]]
    assert _names(scores, ["cat", "dog"], np.array([0.7, 0.2], np.float32)) == [
        ["dog"], ["dog"], []]


def test_rate_thresholds_label_as_many_images_as_the_scores_expect():
    rng = np.random.default_rng(0)
    scores = rng.random((200, 3)).astype(np.float32) ** np.array([1.0, 4.0, 0.25], np.float32)
    thresholds = T.rate_thresholds(scores)
    expected = np.rint(scores.sum(axis=0))
    # continuous scores have no ties: exactly round(sum) images per class reach the threshold
    np.testing.assert_array_equal((scores >= thresholds).sum(axis=0), expected)
    # scores u**p (u uniform) have mean 1/(p+1), and u**p >= t for a fraction 1 - t**(1/p):
    # the threshold giving that fraction is (p / (p+1))**p
    p = np.array([1.0, 4.0, 0.25])
    np.testing.assert_allclose(thresholds, (p / (p + 1)) ** p, atol=0.05)
    # hand example: class 0 sums to 1.6 -> 2 images (0.8, 0.5); class 1 sums to 0.3 -> at
    # least 1 image (its best, 0.2): a configured class is assumed to occur
    small = np.array([[0.8, 0.1], [0.5, 0.2], [0.3, 0.0]], np.float32)
    np.testing.assert_array_equal(T.rate_thresholds(small), np.array([0.5, 0.2], np.float32))
    with pytest.raises(ValueError, match="at least one image"):
        T.rate_thresholds(np.zeros((0, 2), np.float32))


def test_otsu_thresholds_split_each_class_between_its_own_modes():
    rng = np.random.default_rng(1)

    def two_modes(low, high, n_low, n_high):
        return np.r_[rng.normal(low, 0.02, n_low), rng.normal(high, 0.02, n_high)]

    # class 0: absent ~0.05, present ~0.30 (an under-confident class, below any fixed 0.5);
    # class 1: absent ~0.55, present ~0.95 (an over-confident one, above it when absent)
    scores = np.stack([two_modes(0.05, 0.30, 150, 50),
                       two_modes(0.55, 0.95, 120, 80)], axis=1).clip(0, 1).astype(np.float32)
    thresholds = T.otsu_thresholds(scores)
    assert 0.12 < thresholds[0] < 0.24
    assert 0.63 < thresholds[1] < 0.88
    truth = np.r_[np.zeros(150), np.ones(50)].astype(bool), \
        np.r_[np.zeros(120), np.ones(80)].astype(bool)
    for c in range(2):
        np.testing.assert_array_equal(scores[:, c] >= thresholds[c], truth[c])
    # every score in one bin: nothing to split, the bin's upper edge
    one_bin = np.full((5, 1), 0.301, np.float32)
    assert T.otsu_thresholds(one_bin)[0] == pytest.approx(78 / 256)  # 0.301 is in bin 77


def test_count_rule_takes_the_zero_shot_split_count_in_the_order_of_the_given_scores():
    rng = np.random.default_rng(2)
    # the teacher's zero-shot scores: class 0 has 30 of 100 images in its high mode, class 1 has
    # 60; the scores being thresholded rank the images differently and sit in one blurred mode
    zero_shot = np.stack([np.r_[rng.normal(0.1, 0.02, 70), rng.normal(0.8, 0.02, 30)],
                          np.r_[rng.normal(0.2, 0.02, 40), rng.normal(0.9, 0.02, 60)]],
                         axis=1).clip(0, 1).astype(np.float32)
    scores = rng.random((100, 2)).astype(np.float32) * 0.3 + 0.35
    thresholds = T.class_thresholds(scores, "count", 0.5, zero_shot)
    labeled = scores >= thresholds
    np.testing.assert_array_equal(labeled.sum(axis=0), [30, 60])
    for c, k in ((0, 30), (1, 60)):   # the k images these scores rank highest, not zero-shot's
        np.testing.assert_array_equal(np.flatnonzero(labeled[:, c]),
                                      np.sort(np.argsort(-scores[:, c])[:k]))
    # with the zero-shot scores themselves the rule is Otsu's split of them
    np.testing.assert_array_equal(
        zero_shot >= T.class_thresholds(zero_shot, "count", 0.5, zero_shot),
        zero_shot >= T.otsu_thresholds(zero_shot))
    with pytest.raises(ValueError, match="zero-shot scores of the same"):
        T.class_thresholds(scores, "count", 0.5)
    with pytest.raises(ValueError, match="zero-shot scores of the same"):
        T.class_thresholds(scores, "count", 0.5, zero_shot[:10])


def test_count_thresholds_clip_the_counts_to_the_images():
    scores = np.array([[0.8, 0.1], [0.5, 0.2], [0.3, 0.0]], np.float32)
    # class 0: its 2nd highest (0.5); class 1: a count of 0 is 1, its highest (0.2)
    np.testing.assert_array_equal(T.count_thresholds(scores, np.array([2, 0])),
                                  scores[[1, 1], [0, 1]])
    np.testing.assert_array_equal(T.count_thresholds(scores, np.array([9, 3])), scores[2])
    with pytest.raises(ValueError, match="at least one image"):
        T.count_thresholds(np.zeros((0, 2), np.float32), np.array([1, 1]))


def test_class_thresholds_dispatch():
    scores = np.array([[0.8, 0.1], [0.5, 0.2], [0.3, 0.0]], np.float32)
    np.testing.assert_array_equal(T.class_thresholds(scores, "fixed", 0.4),
                                  np.array([0.4, 0.4], np.float32))
    np.testing.assert_array_equal(T.class_thresholds(scores, "rate", 0.4),
                                  T.rate_thresholds(scores))
    np.testing.assert_array_equal(T.class_thresholds(scores, "otsu", 0.4),
                                  T.otsu_thresholds(scores))
    with pytest.raises(ValueError, match="threshold rule 'median'"):
        T.class_thresholds(scores, "median", 0.4)


def test_final_label_scores_sources():
    pseudo = np.array([[0.9, 0.1], [0.2, 0.6]], np.float32)
    classifier = np.array([[0.5, 0.3], [0.4, 1.0]], np.float32)
    np.testing.assert_array_equal(L.final_label_scores("pseudo", pseudo, classifier, 0.4), pseudo)
    np.testing.assert_array_equal(L.final_label_scores("classifier", pseudo, classifier, 0.4),
                                  classifier)
    # alpha weighs the pseudo-labels, 1 - alpha the classifier
    np.testing.assert_allclose(L.final_label_scores("fusion", pseudo, classifier, 0.4),
                               [[0.66, 0.22], [0.32, 0.84]], rtol=1e-6)
    np.testing.assert_array_equal(L.final_label_scores("fusion", pseudo, classifier, 1.0), pseudo)
    out = L.final_label_scores("pseudo", pseudo, classifier, 0.4)
    assert out.dtype == np.float32 and not np.shares_memory(out, pseudo)
    with pytest.raises(ValueError, match="aligned"):
        L.final_label_scores("fusion", pseudo, classifier[:1], 0.4)
    with pytest.raises(ValueError, match="final source 'teacher'"):
        L.final_label_scores("teacher", pseudo, classifier, 0.4)


def test_the_chunked_label_steps_equal_the_whole_matrix_formulas(monkeypatch):
    """initial_bias and round_labels work CHUNK_ROWS rows at a time; the result is the whole
    matrix's: the partial sums of the bias and the elementwise debias/fuse."""
    monkeypatch.setattr(L, "CHUNK_ROWS", 7)
    raw, previous = _softmax_scores(60, 5, seed=1), _softmax_scores(60, 5, seed=2)
    bias, partials = L.initial_bias(raw, 0.3, 1.2, "count")
    whole = L.bias_partials(raw, 0.3, 1.2)
    for key in whole:
        torch.testing.assert_close(partials[key], whole[key], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bias, L.bias_vector(whole, "count"), rtol=0, atol=0)
    for form in L.DEBIAS_FORMS:
        torch.testing.assert_close(L.round_labels(raw, None, bias, 0.7, 0.4, form),
                                   L.debias(raw, bias, 0.7, form), rtol=0, atol=0)
        torch.testing.assert_close(L.round_labels(raw, previous, bias, 0.7, 0.4, form),
                                   L.fuse(previous, L.debias(raw, bias, 0.7, form), 0.4),
                                   rtol=0, atol=0)
    with pytest.raises(ValueError, match="previous labels"):
        L.round_labels(raw, previous[:50], bias, 0.7, 0.4, "logit_shift")
