"""Callable classes that Ray Data runs as actor pools: each builds its model once in __init__
and maps a pyarrow batch to a pyarrow batch. They import no Ray, so tests call them directly.

Rows that arrive with an error pass through untouched; rows whose bytes do not decode leave
with `error` and `error_stage` set and no scores, so a bad image never fails a batch."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import torch

from ccd_ray.config import CCDConfig, config_from_dict
from ccd_ray.io.decode import decode_image
from ccd_ray.method.classifier import load_classifier, normalise
from ccd_ray.method.scoring import classifier_outputs, initial_scores, relabel_boxes, score_boxes
from ccd_ray.method.teacher import Teacher

RAW_SCHEMA = pa.schema([("image_id", pa.string()), ("scores", pa.list_(pa.float32())),
                        ("views", pa.int32()), ("error", pa.string()),
                        ("error_stage", pa.string())])
BOXES_SCHEMA = pa.schema([("image_id", pa.string()), ("image", pa.binary()),
                          ("boxes", pa.list_(pa.int32())), ("error", pa.string()),
                          ("error_stage", pa.string())])


def pick_device(cfg: CCDConfig) -> torch.device:
    """compute.device: 'cpu', 'cuda' (which must be there), or 'auto' (cuda when visible)."""
    if cfg.compute.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "compute.device is 'cuda' but this process sees no CUDA device (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); run on a GPU "
            "node with compute.gpus_per_actor > 0, or set compute.device to auto or cpu")
    if cfg.compute.device == "cuda" or (cfg.compute.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class _DecodingStage:
    """Shared by the actors: decode the batch's good rows, carry the others' errors."""

    def __init__(self, cfg_dict: dict):
        self.cfg = config_from_dict(cfg_dict)

    def decode(self, batch: pa.Table) -> tuple[list[int], list[torch.Tensor], list, list]:
        """(indices of decoded rows, their images, per-row error, per-row error stage)."""
        errors = batch.column("error").to_pylist()
        stages = batch.column("error_stage").to_pylist() if "error_stage" in batch.column_names \
            else ["read" if e else None for e in errors]
        good, images = [], []
        for i, data in enumerate(batch.column("image").to_pylist()):
            if errors[i]:
                continue
            decoded = decode_image(data, self.cfg.data.max_image_pixels,
                                   self.cfg.data.max_image_side)
            if decoded.error:
                errors[i], stages[i] = decoded.error, "decode"
            else:
                good.append(i)
                images.append(decoded.image)
        return good, images, errors, stages


def _scores_table(batch: pa.Table, good: list[int], scores: torch.Tensor, views: list[int],
                  errors: list, stages: list) -> pa.Table:
    rows: list = [None] * batch.num_rows
    counts: list = [0] * batch.num_rows
    for slot, i in enumerate(good):
        rows[i] = scores[slot].numpy().astype(np.float32).tolist()
        counts[i] = views[slot]
    return pa.Table.from_pydict({"image_id": batch.column("image_id"), "scores": rows,
                                 "views": counts, "error": errors, "error_stage": stages},
                                schema=RAW_SCHEMA)


class _TeacherStage(_DecodingStage):
    """A decoding stage that holds the teacher, built once per actor."""

    def __init__(self, cfg_dict: dict):
        super().__init__(cfg_dict)
        self.teacher = Teacher.from_config(self.cfg.teacher, self.cfg.classes,
                                           pick_device(self.cfg))


class InitialScorer(_TeacherStage):
    """Phase 1: global view + random crops per image -> pooled raw teacher scores."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        ids = [batch.column("image_id")[i].as_py() for i in good]
        scores = initial_scores(self.teacher, images, ids, self.cfg) if good else torch.zeros(0)
        views = [1 + self.cfg.initial.random_crops] * len(good)
        return _scores_table(batch, good, scores, views, errors, stages)


class CamBoxer(_DecodingStage):
    """Phase 2, classifier half: CAM boxes of the selected classes -> the views to score."""

    def __init__(self, cfg_dict: dict, classifier_bytes: bytes, threshold: float,
                 round_index: int):
        super().__init__(cfg_dict)
        self.device = pick_device(self.cfg)
        self.model, _, _ = load_classifier(io.BytesIO(classifier_bytes), self.device)
        self.threshold = threshold
        self.round_index = round_index

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        boxes: list = [None] * batch.num_rows
        if good:
            ids = [batch.column("image_id")[i].as_py() for i in good]
            probs, cams = classifier_outputs(self.model, images, self.cfg.train.image_size)
            per_image = relabel_boxes(probs, cams, images, ids, self.threshold, self.round_index,
                                      self.cfg)
            for i, b in zip(good, per_image):
                boxes[i] = b.astype(np.int32).ravel().tolist()
        return pa.Table.from_pydict({"image_id": batch.column("image_id"),
                                     "image": batch.column("image"), "boxes": boxes,
                                     "error": errors, "error_stage": stages},
                                    schema=BOXES_SCHEMA)


class GuidedScorer(_TeacherStage):
    """Phase 2, teacher half: score the views chosen by CamBoxer -> pooled raw local scores."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        box_lists = batch.column("boxes").to_pylist()
        boxes = [np.asarray(box_lists[i], dtype=np.int64).reshape(-1, 4) for i in good]
        scores = score_boxes(self.teacher, images, boxes, self.cfg) if good else torch.zeros(0)
        return _scores_table(batch, good, scores, [len(b) for b in boxes], errors, stages)


class InputsPredictor:
    """Classifier probabilities of stored training inputs (uint8, already resized)."""

    def __init__(self, cfg_dict: dict, classifier_bytes: bytes):
        cfg = config_from_dict(cfg_dict)
        self.device = pick_device(cfg)
        self.model, _, self.image_size = load_classifier(io.BytesIO(classifier_bytes), self.device)

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        pixels = np.stack([np.frombuffer(p, dtype=np.uint8).reshape(3, self.image_size,
                                                                    self.image_size)
                           for p in batch.column("pixels").to_pylist()])
        logits, _ = self.model(normalise(torch.from_numpy(pixels).to(self.device)))
        probs = torch.sigmoid(logits).float().cpu().numpy()
        return pa.table({"image_id": batch.column("image_id"),
                         "probs": pa.array(probs.tolist(), pa.list_(pa.float32()))})
