"""The bookkeeping of per-shard commits, without Ray: which read tasks ("shards") of a stage
are complete, their counts, and what identifies a corpus layout, so a resumed stage cannot
mix two layouts. Shared by jobs/predict.py's shards and the score cache's entries."""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass, field

COUNT_KEYS = ("images", "labeled", "errors")


def reason_key(error: str) -> str:
    """The group of an error reason in a summary's errors_by_reason: the text before its first
    colon (the stable reason, without the file's details)."""
    return error.split(":")[0]


def shards_digest(root: str, tasks: list[list[str]]) -> str:
    """SHA-256 of every read task's files relative to the corpus root, in task order: shard i
    of a resumed run must be the same files as shard i of the first."""
    relative = [[posixpath.relpath(f, root) for f in files] for files in tasks]
    return hashlib.sha256(json.dumps(relative).encode()).hexdigest()


@dataclass
class ShardProgress:
    expected: int                  # rows the read task produced (images and read errors)
    rows: int = 0
    errors: int = 0
    teacher_passes: int = 0        # the teacher's forward passes (0 where no teacher ran)
    reasons: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.rows == self.expected

    def counts(self) -> dict:
        """The shard's counts in the rounds' summary vocabulary."""
        return {"images": self.rows, "labeled": self.rows - self.errors, "errors": self.errors,
                "errors_by_reason": dict(sorted(self.reasons.items()))}


class ShardTally:
    """Rows written per pending shard, from the writer's reports; a shard is complete when
    all the rows its read task produced are written. Holds only shards in progress, and the
    totals of the shards completed so far (the work done now)."""

    def __init__(self, pending: list[int]):
        self.unseen = set(pending)
        self.in_progress: dict[int, ShardProgress] = {}
        self.rows_done = 0
        self.passes_done = 0

    def add(self, shard: int, expected: int, rows: int, reasons: list[str], files: list[str],
            teacher_passes: int = 0) -> ShardProgress | None:
        """Record one written part of a shard; returns the shard's progress once it is
        complete (and forgets it), else None."""
        if shard not in self.unseen and shard not in self.in_progress:
            raise RuntimeError(f"shard {shard}: rows written for a shard that is not pending")
        self.unseen.discard(shard)
        progress = self.in_progress.setdefault(shard, ShardProgress(expected))
        progress.rows += rows
        progress.errors += len(reasons)
        progress.teacher_passes += teacher_passes
        for reason in reasons:
            progress.reasons[reason_key(reason)] = progress.reasons.get(reason_key(reason), 0) + 1
        progress.files.extend(files)
        if progress.rows > expected:
            raise RuntimeError(f"shard {shard}: {progress.rows} rows written, {expected} read")
        if progress.complete:
            self.rows_done += progress.rows
            self.passes_done += progress.teacher_passes
            return self.in_progress.pop(shard)
        return None


def total_counts(markers: list[dict]) -> dict:
    """A stage's counts (images, labeled, errors, errors_by_reason) summed over its shards'
    commit markers."""
    counts: dict = {k: 0 for k in COUNT_KEYS}
    reasons: dict[str, int] = {}
    for marker in markers:
        for key in COUNT_KEYS:
            counts[key] += marker[key]
        for reason, n in marker["errors_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    counts["errors_by_reason"] = dict(sorted(reasons.items()))
    return counts
