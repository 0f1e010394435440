"""Callable classes that Ray Data runs as actor pools: each builds its models once in __init__
and maps a pyarrow batch to a pyarrow batch. They import no Ray, so tests call them directly.

One family emits the teacher's scores of every view (`VIEW_SCHEMA`), and beside them each
image's views pooled both ways (`max_scores`, `mean_scores`): a round's raw stage is a
score-cache entry, and the driver's label step reads one C-wide pooled row an image instead
of decoding every view's scores. Phase 2 is one pool, `GuidedViewScorer`, holding the
classifier and the teacher: each image is decoded once and its CAM boxes go straight to the
teacher, so no decoded pixels cross the object store and a round starts one torch actor, not
two (a CAM pool streaming into a teacher pool did both).

Rows that arrive with an error pass through untouched; rows whose bytes do not decode leave
with `error` and `error_stage` set and no scores, so a bad image never fails a batch."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from ccd_ray.config import config_from_dict
from ccd_ray.io.decode import decode_image
from ccd_ray.io.inputs_codec import decode_inputs
from ccd_ray.method.classifier import load_classifier, normalise
from ccd_ray.method.labels import pool_views
from ccd_ray.method.rows import list_column
from ccd_ray.method.scoring import (
    classifier_outputs,
    phase1_boxes,
    pick_device,
    relabel_boxes,
    score_views,
)
from ccd_ray.method.teacher import Teacher

VIEW_SCHEMA = pa.schema([("image_id", pa.string()), ("height", pa.int32()),
                         ("width", pa.int32()), ("boxes", pa.list_(pa.int32())),
                         ("view_scores", pa.list_(pa.float32())), ("views", pa.int32()),
                         ("max_scores", pa.list_(pa.float32())),
                         ("mean_scores", pa.list_(pa.float32())),
                         ("teacher_passes", pa.int64()), ("error", pa.string()),
                         ("error_stage", pa.string())])


def views_table(image_ids: pa.Array | pa.ChunkedArray, views: np.ndarray, heights: np.ndarray,
                widths: np.ndarray, boxes: np.ndarray, scores: np.ndarray, passes: np.ndarray,
                errors: list | pa.Array, stages: list | pa.Array) -> pa.Table:
    """Rows of VIEW_SCHEMA built from whole-batch arrays (no list per row): views[i] is
    image i's view count, 0 for a row that failed (nulls then); boxes and scores are every
    good image's V_i x 4 boxes and V_i x C scores, concatenated in row order."""
    missing = np.asarray(views) == 0
    counts = np.asarray(views)[~missing]
    classes = scores.shape[1]
    pooled_width = np.where(missing, 0, classes)
    return pa.Table.from_arrays([
        image_ids, pa.array(heights, pa.int32(), mask=missing),
        pa.array(widths, pa.int32(), mask=missing),
        list_column(boxes, 4 * views, missing, np.int32),
        list_column(scores, classes * views, missing), pa.array(views, pa.int32()),
        list_column(pool_views(scores, counts, "max"), pooled_width, missing),
        list_column(pool_views(scores, counts, "mean"), pooled_width, missing),
        pa.array(passes, pa.int64()), pa.array(errors, pa.string()),
        pa.array(stages, pa.string())], schema=VIEW_SCHEMA)


class _DecodingStage:
    """Shared by the actors: the batch's good rows as images, the others' errors carried."""

    def __init__(self, cfg_dict: dict):
        self.cfg = config_from_dict(cfg_dict)

    def decode(self, batch: pa.Table) -> tuple[list[int], list[torch.Tensor], list, list]:
        """(indices of good rows, their 3 x H x W uint8 images, per-row error, per-row error
        stage; a row that arrives with an error is a read error)."""
        errors = batch.column("error").to_pylist()
        stages = ["read" if e else None for e in errors]
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
                images.append(torch.from_numpy(decoded.image))
        return good, images, errors, stages


class _TeacherStage(_DecodingStage):
    """A decoding stage that holds the teacher, built once per actor, and writes every view's
    scores with the boxes that made them and the forward passes the batch cost (on its first
    row), so a stage can say how much CLIP work it did."""

    def __init__(self, cfg_dict: dict):
        super().__init__(cfg_dict)
        self.device = pick_device(self.cfg)
        self.teacher = Teacher.from_config(self.cfg.teacher, self.cfg.classes, self.device)

    def view_table(self, batch: pa.Table, good: list[int], images: list[torch.Tensor],
                   boxes: list[np.ndarray], errors: list, stages: list) -> pa.Table:
        before = self.teacher.forward_passes
        scores = score_views(self.teacher, images, boxes, self.cfg.teacher.batch_size)
        n, classes = batch.num_rows, len(self.cfg.classes.names)
        views, heights, widths = (np.zeros(n, np.int32) for _ in range(3))
        for slot, i in enumerate(good):
            views[i] = len(boxes[slot])
            heights[i], widths[i] = images[slot].shape[1], images[slot].shape[2]
        passes = np.zeros(n, np.int64)
        if n:
            passes[0] = self.teacher.forward_passes - before
        return views_table(
            batch.column("image_id"), views, heights, widths,
            np.concatenate(boxes) if boxes else np.zeros((0, 4)),
            np.concatenate(scores) if scores else np.zeros((0, classes), np.float32),
            passes, errors, stages)


class InitialViewScorer(_TeacherStage):
    """Phase 1: the global view and random crops of each image."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        ids = [batch.column("image_id")[i].as_py() for i in good]
        return self.view_table(batch, good, images, phase1_boxes(images, ids, self.cfg),
                               errors, stages)


class ClassifierLoadError(RuntimeError):
    """The round's classifier checkpoint did not load in a phase-2 actor: the run's own file,
    so an internal error, not the teacher failing to load (ccd_ray.cli tells them apart by
    this name)."""


class GuidedViewScorer(_TeacherStage):
    """Phase 2: the classifier's CAM boxes of each image's selected classes, and the
    teacher's scores of the views around them, on one decode of the image.

    classifier: returns the classifier.pt bytes, called once in the actor (stages pass
    stages.datasets.by_reference, so the bytes travel through the object store, not inside
    the map function). The teacher loads first, so a failure there is reported as the
    teacher's."""

    def __init__(self, cfg_dict: dict, classifier: Callable[[], bytes], threshold: float,
                 round_index: int):
        super().__init__(cfg_dict)
        try:
            self.classifier, _, _ = load_classifier(io.BytesIO(classifier()), self.device)
        except Exception as exc:
            raise ClassifierLoadError(f"round {round_index}'s classifier checkpoint did not "
                                      f"load: {type(exc).__name__}: {exc}") from exc
        self.threshold = threshold
        self.round_index = round_index

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        boxes: list[np.ndarray] = []
        if good:
            ids = [batch.column("image_id")[i].as_py() for i in good]
            probs, cams = classifier_outputs(self.classifier, images, self.cfg.train.image_size)
            boxes = relabel_boxes(probs, cams, images, ids, self.threshold, self.round_index,
                                  self.cfg)
        return self.view_table(batch, good, images, boxes, errors, stages)


class InputsPredictor:
    """Classifier probabilities of stored training inputs (encoded, already resized).

    classifier: as GuidedViewScorer's."""

    def __init__(self, cfg_dict: dict, classifier: Callable[[], bytes]):
        cfg = config_from_dict(cfg_dict)
        self.device = pick_device(cfg)
        self.model, _, self.image_size = load_classifier(io.BytesIO(classifier()), self.device)

    @torch.no_grad()
    def __call__(self, batch: pa.Table) -> pa.Table:
        pixels = decode_inputs(batch.column("image").to_pylist(), self.image_size)
        logits, _ = self.model(normalise(torch.from_numpy(pixels).to(self.device)))
        probs = torch.sigmoid(logits).float().cpu().numpy()
        return pa.table({"image_id": batch.column("image_id"),
                         "probs": list_column(probs, np.full(len(probs), probs.shape[1])),
                         "holdout": batch.column("holdout")})
