"""Retention of the queue: feedback items no run needs (`expire_items`), and stored images nothing
names (`ImageRetention`). /predict stores every image so that a correction can name it by hash, but
an image that no feedback item names is kept only for a while.

An image that any feedback item references, in any state, is never deleted: the feedback export
and requeued items need it. An image's age is its file's mtime, which storing it again renews. An
item's retention (`feedback.held_days`, `feedback.retention_days`) runs first, so the images of
deleted items go in the same sweep once they are old enough.
"""

from __future__ import annotations

import logging
import time
from itertools import islice
from pathlib import Path

from sqlalchemy import Connection, select

from multitag.config import FeedbackParams
from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.schema import feedback

log = logging.getLogger(__name__)
GRACE_S = 60  # an image younger than this may be on its way into the queue: never swept, even with retention 0
BATCH = 256  # images decided per write transaction, so that feedback writes never wait long for a sweep


def expire_items(queue: FeedbackQueue, params: FeedbackParams, now: float | None = None) -> dict[str, int]:
    """Turn stale held items rejected and delete old decided ones (FeedbackQueue.expire); the counts."""
    counts = queue.expire(*params.expiry_cutoffs(time.time() if now is None else now))
    if any(counts.values()):
        log.info(
            "feedback retention: %d held item(s) older than %g days rejected, %d decided item(s) older than %g days deleted",
            counts["held_expired"], params.held_days, counts["deleted"], params.retention_days,
        )  # fmt: skip
    return counts


class ImageRetention:
    """Deletes the queue's stored images that are older than `max_age_s` and that no feedback item
    names; with `items`, first the feedback items past their retention (expire_items)."""

    def __init__(self, queue: FeedbackQueue, max_age_s: float, items: FeedbackParams | None = None):
        self.queue, self.items = queue, items
        self.images, self.max_age_s, self.database = queue.images, max_age_s, queue.database

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete the expired unreferenced images; returns their sha256s.

        References are read and files deleted inside one write transaction on the queue that holds
        the image lock exclusively, so no item can name an image between the check and the deletion. Each file's age is checked again there: an
        image stored again meanwhile is kept.
        """
        cutoff = (time.time() if now is None else now) - max(self.max_age_s, GRACE_S)
        candidates = ((sha, path) for sha, path in self.images.stored() if _modified_at(path) <= cutoff)
        deleted: list[str] = []
        while batch := list(islice(candidates, BATCH)):
            deleted += self.database.write(lambda conn, batch=batch: self._delete_unreferenced(conn, batch, cutoff))
        if deleted:
            log.info("deleted %d stored image(s) older than %g h that no feedback names", len(deleted), self.max_age_s / 3600)
        return deleted

    def sweep_logged(self) -> None:
        """`expire_items` then `sweep`, with a failure logged instead of raised: the next sweep tries again."""
        try:
            if self.items is not None:
                expire_items(self.queue, self.items)
            self.sweep()
        except Exception:
            log.exception("sweeping expired images under %s failed", self.images.root)

    def _delete_unreferenced(self, conn: Connection, batch: list[tuple[str, Path]], cutoff: float) -> list[str]:
        self.database.lock_images(conn, exclusive=True)
        named = select(feedback.c.image_sha256).distinct().where(feedback.c.image_sha256.in_([sha for sha, _ in batch]))
        referenced = set(conn.scalars(named))
        deleted = []
        for sha, path in batch:
            if sha not in referenced and _modified_at(path) <= cutoff:
                path.unlink(missing_ok=True)
                deleted.append(sha)
        return deleted


def _modified_at(path: Path) -> float:
    """The file's mtime; infinitely young when it is gone already (nothing to delete)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
