"""Ray Data callables that score views and keep every view's scores (not only the pooled
ones), for the per-view score cache. They import no Ray, so tests call them directly.

Each output row holds an image's boxes (the exact view geometry, in decoded pixels), its
V x C view scores, and how many teacher forward passes the batch cost (on the batch's first
row), so a cache stage can say how much CLIP work it did."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from ccd_ray.method.views import crop_views, initial_boxes
from ccd_ray.stages.actors import _TeacherStage

VIEW_SCHEMA = pa.schema([("image_id", pa.string()), ("height", pa.int32()),
                         ("width", pa.int32()), ("boxes", pa.list_(pa.int32())),
                         ("view_scores", pa.list_(pa.float32())), ("views", pa.int32()),
                         ("teacher_passes", pa.int64()), ("error", pa.string()),
                         ("error_stage", pa.string())])


def score_views(teacher, images: list[torch.Tensor], boxes: list[np.ndarray], batch_size: int
                ) -> list[np.ndarray]:
    """Every image's views scored, unpooled: a V_i x C array per image."""
    views = [crop_views(img, b, teacher.image_size, teacher.mean, teacher.std)
             for img, b in zip(images, boxes)]
    if not views:
        return []
    scores = teacher.score_batched(torch.cat(views), batch_size).numpy().astype(np.float32)
    return list(np.split(scores, np.cumsum([len(b) for b in boxes])[:-1]))


def _view_table(batch: pa.Table, good: list[int], images: list[torch.Tensor],
                boxes: list[np.ndarray], scores: list[np.ndarray], passes: int, errors: list,
                stages: list) -> pa.Table:
    n = batch.num_rows
    heights, widths, box_cols, score_cols, counts = [None] * n, [None] * n, [None] * n, \
        [None] * n, [0] * n
    for slot, i in enumerate(good):
        heights[i], widths[i] = int(images[slot].shape[1]), int(images[slot].shape[2])
        box_cols[i] = boxes[slot].astype(np.int32).ravel().tolist()
        score_cols[i] = scores[slot].ravel().tolist()
        counts[i] = len(boxes[slot])
    passes_col = [0] * n
    if n:
        passes_col[0] = passes
    return pa.Table.from_pydict({"image_id": batch.column("image_id"), "height": heights,
                                 "width": widths, "boxes": box_cols, "view_scores": score_cols,
                                 "views": counts, "teacher_passes": passes_col, "error": errors,
                                 "error_stage": stages}, schema=VIEW_SCHEMA)


class InitialViewScorer(_TeacherStage):
    """Phase-1 views (global + random crops) of each image, every view's scores kept."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        ids = [batch.column("image_id")[i].as_py() for i in good]
        ic = self.cfg.initial
        boxes = [initial_boxes(img.shape[1], img.shape[2], ic.random_crops, ic.crop_scale,
                               self.cfg.seed, image_id) for img, image_id in zip(images, ids)]
        before = self.teacher.forward_passes
        scores = score_views(self.teacher, images, boxes, self.cfg.teacher.batch_size)
        return _view_table(batch, good, images, boxes, scores,
                           self.teacher.forward_passes - before, errors, stages)


class GuidedViewScorer(_TeacherStage):
    """Box-guided views chosen by actors.CamBoxer, every view's scores kept."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        good, images, errors, stages = self.decode(batch)
        box_lists = batch.column("boxes").to_pylist()
        boxes = [np.asarray(box_lists[i], dtype=np.int64).reshape(-1, 4) for i in good]
        before = self.teacher.forward_passes
        scores = score_views(self.teacher, images, boxes, self.cfg.teacher.batch_size)
        return _view_table(batch, good, images, boxes, scores,
                           self.teacher.forward_passes - before, errors, stages)
