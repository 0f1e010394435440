"""The whole CCD loop in one process on in-memory tensors: the oracle for the distributed job.

initial labels -> debias -> warm-up training -> relabel round(s) guided by the classifier's
CAMs -> training with consistency -> final labels and classifier."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ccd_ray.method import labels as label_ops
from ccd_ray.method.cam import avg_count_threshold
from ccd_ray.method.classifier import CAMClassifier, prepare_images
from ccd_ray.config import CCDConfig
from ccd_ray.method.scoring import classifier_outputs, initial_scores, relabel_boxes, score_boxes
from ccd_ray.method.teacher import Teacher
from ccd_ray.method.training import batch_indices, train_epoch


@dataclass
class ReferenceResult:
    initial_raw: torch.Tensor                 # N x C pooled phase-1 teacher scores
    bias: torch.Tensor                        # C
    labels: list[torch.Tensor]                # per round: N x C soft labels (round 0 = initial)
    local_raw: list[torch.Tensor]             # per relabel round: N x C pooled guided scores
    classifier: CAMClassifier
    history: list[dict] = field(default_factory=list)  # per epoch: losses and round

    @property
    def final_labels(self) -> torch.Tensor:
        return self.labels[-1]


def selection_threshold(probs: torch.Tensor, cfg: CCDConfig) -> float:
    if cfg.relabel.class_selection == "avg_count":
        return avg_count_threshold(probs, cfg.relabel.avg_count)
    return cfg.relabel.selection_threshold


def relabel_round(teacher: Teacher, model: CAMClassifier, images: list[torch.Tensor],
                  image_ids: list[str], previous: torch.Tensor, bias: torch.Tensor,
                  round_index: int, cfg: CCDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(new soft labels, raw pooled local scores) of one classifier-guided round."""
    probs, cams = classifier_outputs(model, images, cfg.train.image_size)
    boxes = relabel_boxes(probs, cams, images, image_ids, selection_threshold(probs, cfg),
                          round_index, cfg)
    return labels_from_boxes(teacher, images, boxes, previous, bias, cfg)


def labels_from_boxes(teacher: Teacher, images: list[torch.Tensor], boxes: list[np.ndarray],
                      previous: torch.Tensor, bias: torch.Tensor, cfg: CCDConfig
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """A round's second half, from its views: (new soft labels, raw pooled local scores)."""
    local = score_boxes(teacher, images, boxes, cfg)
    local_debiased = label_ops.debias(local, bias, cfg.labels.gamma)
    return label_ops.fuse(previous, local_debiased, cfg.labels.alpha), local


def run_reference(cfg: CCDConfig, images: list[torch.Tensor], image_ids: list[str],
                  teacher: Teacher) -> ReferenceResult:
    torch.manual_seed(cfg.seed)
    lc, tc = cfg.labels, cfg.train
    initial_raw = initial_scores(teacher, images, image_ids, cfg)
    partials = label_ops.bias_partials(initial_raw, lc.threshold, cfg.initial.entropy_threshold)
    bias = label_ops.bias_vector(partials, lc.bias_statistic)
    labels = [label_ops.debias(initial_raw, bias, lc.gamma)]
    weights = label_ops.sample_weights(initial_raw, cfg.initial.entropy_threshold,
                                       cfg.initial.uncertain_weight)
    model = CAMClassifier(tc.backbone, len(cfg.classes.names), tc.backbone_weights)
    optimizer = torch.optim.Adam(model.param_groups(tc.lr, tc.head_lr_mult),
                                 weight_decay=tc.weight_decay)
    inputs = prepare_images(images, tc.image_size)
    generator = torch.Generator().manual_seed(cfg.seed)
    local_raw, history = [], []
    for epoch in range(tc.epochs):
        round_index = epoch - tc.warmup_epochs + 1
        if 1 <= round_index <= cfg.relabel.rounds:
            new_labels, local = relabel_round(teacher, model, images, image_ids, labels[-1], bias,
                                              round_index, cfg)
            labels.append(new_labels)
            local_raw.append(local)
        targets = label_ops.smoothing_floor(labels[-1], lc.smoothing_floor)
        order = torch.randperm(len(images), generator=generator)
        batches = [(inputs[idx], targets[idx], weights[idx])
                   for idx in batch_indices(order, tc.batch_size)]
        losses = train_epoch(model, optimizer, batches, epoch, tc.beta, tc.warmup_epochs,
                             generator)
        history.append({"epoch": epoch, "labels_round": len(labels) - 1, **losses})
    return ReferenceResult(initial_raw, bias, labels, local_raw, model, history)
