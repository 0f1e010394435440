"""Label math: pool view scores, measure and remove the teacher's class bias, fuse rounds.

All functions take and return float tensors (pool_views: arrays) of class scores in [0, 1]
(rows: images, columns: classes in the config's order). The bias statistic is computed from
sums, so shards can be reduced independently and merged (`bias_partials` ->
`merge_bias_partials` -> `bias_vector`).
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-8
# rows a driver-side label step takes at once: each elementwise temporary is then a few MB
# that stays in cache, not another N x C array (at 10^6 x 80 twice as fast for the bias,
# several times for a round's labels)
CHUNK_ROWS = 65_536


def pool_views(scores: np.ndarray, views: np.ndarray, how: str) -> np.ndarray:
    """N x C pooled rows of the images' views (scores: their V_i x C rows, concatenated in
    image order; views: V_i per image): max keeps a class any view sees, mean averages.
    Where every image has the same V views (round 0: the image and its random crops), a
    strided maximum or sum over the V views, several times faster than reduceat's
    row-by-row segments on a driver holding 10^6 images."""
    if how not in ("max", "mean"):
        raise ValueError(f"aggregation {how!r}: expected 'max' or 'mean'")
    views = np.asarray(views)
    if int(views.sum()) != len(scores) or (len(views) and int(views.min()) < 1):
        raise ValueError(f"views {views.tolist()[:5]}...: expected at least 1 an image and "
                         f"{len(scores)} in all")
    if not len(views):
        return np.zeros((0, scores.shape[1]), np.float32)
    if bool(np.all(views == views[0])):
        v = int(views[0])
        pooled = scores[0::v].copy()
        for k in range(1, v):
            (np.maximum if how == "max" else np.add)(pooled, scores[k::v], out=pooled)
        return pooled if how == "max" else pooled / np.float32(v)
    starts = np.r_[0, np.cumsum(views)[:-1]]
    if how == "max":
        return np.maximum.reduceat(scores, starts, axis=0)
    return np.add.reduceat(scores, starts, axis=0) / views.astype(np.float32)[:, None]


def entropy(scores: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row, read as a distribution over classes."""
    p = scores / scores.sum(dim=1, keepdim=True).clamp_min(EPS)
    return -(p * p.clamp_min(EPS).log()).sum(dim=1)


def bias_partials(scores: torch.Tensor, threshold: float, entropy_threshold: float
                  ) -> dict[str, torch.Tensor]:
    """Sums over a shard from which either bias statistic follows:
    positives[c]: images scoring class c at or above threshold (the paper's n_c);
    top1_sum[c] / top1_count[c]: top-1 scores of the confident images (entropy at most
    entropy_threshold) whose top-1 class is c (the authors' statistic)."""
    num_classes = scores.shape[1]
    confident = entropy(scores) <= entropy_threshold
    top_score, top_class = scores.max(dim=1)
    top_class, top_score = top_class[confident], top_score[confident].double()
    return {
        "positives": (scores >= threshold).sum(dim=0).double(),
        "top1_sum": torch.zeros(num_classes, dtype=torch.float64).index_add_(0, top_class,
                                                                             top_score),
        "top1_count": torch.bincount(top_class, minlength=num_classes).double(),
        "images": torch.tensor(float(scores.shape[0]), dtype=torch.float64),
    }


def merge_bias_partials(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if not parts:
        raise ValueError("no bias partials to merge")
    return {key: sum(p[key] for p in parts) for key in parts[0]}


def bias_vector(partials: dict[str, torch.Tensor], statistic: str) -> torch.Tensor:
    """Per-class bias b_c > 0, scaled so that a class of typical bias has b_c = 1.

    count:     b_c = n_c / mean_c(n_c), n_c floored at 1 (a class nobody predicts is not
               divided by zero; it is the rarest possible, so it is boosted most).
    top1_mean: b_c = mean top-1 score of the images whose top-1 class is c; a class that is
               never top-1 gets the mean of the others (no evidence either way)."""
    if statistic == "count":
        counts = partials["positives"].clamp_min(1.0)
        return (counts / counts.mean()).float()
    if statistic == "top1_mean":
        count = partials["top1_count"]
        seen = count > 0
        if not bool(seen.any()):
            return torch.ones_like(count, dtype=torch.float32)
        mean = torch.where(seen, partials["top1_sum"] / count.clamp_min(1.0),
                           torch.zeros_like(count))
        mean[~seen] = mean[seen].mean()
        return mean.clamp_min(EPS).float()
    raise ValueError(f"bias statistic {statistic!r}: expected 'count' or 'top1_mean'")


DEBIAS_FORMS = ("logit_shift", "divide")


def debias(scores: torch.Tensor, bias: torch.Tensor, gamma: float, form: str) -> torch.Tensor:
    """Remove the class bias b_c with strength gamma (0: the identity).

    logit_shift: sigmoid(logit(p_c) - gamma * log b_c), computed in float64. Strictly
                 increasing in p_c, so each class keeps its ranking of the images (its AP)
                 and no two different scores are made equal (up to float32's resolution
                 near 1, 6e-8); a biased class is pulled down in log-odds, a rare one pushed
                 up, and every score stays inside (0, 1).
    divide:      the paper's p_c / b_c^gamma clamped to [0, 1]. The clamp sends every score
                 at or above b_c^gamma to exactly 1.0, which ties those images and loses the
                 class's ranking among them (AP falls, measured in research/README.md)."""
    if form not in DEBIAS_FORMS:
        raise ValueError(f"debias form {form!r}: expected one of {', '.join(DEBIAS_FORMS)}")
    if gamma == 0:
        return scores.clone()
    if form == "divide":
        return (scores / bias.clamp_min(EPS).pow(gamma)).clamp(0.0, 1.0)
    p = scores.double().clamp(EPS, 1.0 - EPS)
    shift = gamma * bias.double().clamp_min(EPS).log()
    return torch.sigmoid(torch.logit(p) - shift).to(scores.dtype)


def fuse(previous: torch.Tensor, local: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * previous + (1 - alpha) * local: alpha = 1 keeps the previous label."""
    return (alpha * previous + (1.0 - alpha) * local).clamp(0.0, 1.0)


def smoothing_floor(scores: torch.Tensor, floor: float) -> torch.Tensor:
    """Raise soft targets below floor to it (0 disables), as the authors' label smoothing."""
    return scores.clamp_min(floor) if floor > 0 else scores


def sample_weights(initial_scores: torch.Tensor, entropy_threshold: float,
                   uncertain_weight: float) -> torch.Tensor:
    """Per-image BCE weight: uncertain_weight where the initial scores' entropy is high, else 1."""
    uncertain = entropy(initial_scores) > entropy_threshold
    return torch.where(uncertain, torch.full_like(uncertain, uncertain_weight, dtype=torch.float32),
                       torch.ones_like(uncertain, dtype=torch.float32))


def final_label_scores(source: str, pseudo: np.ndarray, classifier: np.ndarray, alpha: float
                       ) -> np.ndarray:
    """The final labels' scores from rows aligned image by image: the last round's
    pseudo-labels, the classifier's probabilities, or their fusion as the rounds fuse
    (alpha * pseudo + (1 - alpha) * classifier: the classifier is the newest evidence)."""
    if pseudo.shape != classifier.shape:
        raise ValueError(f"pseudo-labels {pseudo.shape} and classifier {classifier.shape} "
                         "scores must be aligned")
    if source == "pseudo":
        return pseudo.astype(np.float32, copy=True)
    if source == "classifier":
        return classifier.astype(np.float32, copy=True)
    if source == "fusion":
        return fuse(torch.from_numpy(pseudo), torch.from_numpy(classifier), alpha).numpy()
    raise ValueError(f"final source {source!r}: expected 'pseudo', 'classifier' or 'fusion'")


def initial_bias(initial_raw: torch.Tensor, threshold: float, entropy_threshold: float,
                 statistic: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(bias vector, the partial sums it came from) of the round-0 raw scores."""
    partials = merge_bias_partials([
        bias_partials(initial_raw[i:i + CHUNK_ROWS], threshold, entropy_threshold)
        for i in range(0, max(len(initial_raw), 1), CHUNK_ROWS)])
    return bias_vector(partials, statistic), partials


def round_labels(raw: torch.Tensor, previous: torch.Tensor | None, bias: torch.Tensor,
                 gamma: float, alpha: float, form: str) -> torch.Tensor:
    """A round's soft labels from its pooled raw scores: debiased (gamma, form), and from round 1
    on fused with the previous round's labels (alpha). Every executor derives labels here."""
    if previous is not None and previous.shape != raw.shape:
        raise ValueError(f"previous labels {tuple(previous.shape)} for raw scores "
                         f"{tuple(raw.shape)}")
    out = torch.empty_like(raw)
    for i in range(0, len(raw), CHUNK_ROWS):
        debiased = debias(raw[i:i + CHUNK_ROWS], bias, gamma, form)
        out[i:i + CHUNK_ROWS] = (debiased if previous is None else
                                 fuse(previous[i:i + CHUNK_ROWS], debiased, alpha))
    return out
