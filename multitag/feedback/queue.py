"""The durable feedback queue: users' corrected labels wait here for the nightly retraining.

FeedbackQueue, defined here, is the items' state machine. A database holds them (database.py:
SQLite in WAL mode by default, PostgreSQL when several hosts share the queue; the same SQLAlchemy
Core statements on both) and content-addressed files hold the images (store.py, under a root every
host can reach), so the queue survives crashes and restarts and any number of API replicas, CLI
calls and retraining runs can share it. Folders of corrections are queued by importer.py.

An item's life: `pending` -> `claimed` by a retraining run (with a lease, which the living run
renews) -> `consumed` when that run acks it, or back to `pending` when the run releases it, fails,
or dies and its lease expires.
`rejected` items (leakage into the frozen test split, or an admin's decision) never train.
`held` items are pending ones the screen before each claim found suspicious (screen.py: a likely
label error, a flooding client, a contradiction); they wait, with the reason, for an admin to
release them (requeue) or reject them, and never train meanwhile.
Item ids are autoincrement ids: never reused, increasing in arrival order.

Every item belongs to one task: the registered model it corrects (`params.registry.model_name`,
resolved: `voc-real`, `multitag` for the demo). A queue handle is opened for one task and sees,
claims, screens, counts and exports only that task's items, so switching datasets never mixes
corrections. Items written before corrections recorded their task (and those an older replica
writes during a rolling upgrade) have none: they are *unassigned*, seen only by a handle opened
with `task=None` (`multitag feedback list --unassigned`), and join a task when an admin adopts
them (`adopt`, `multitag feedback adopt`).

Labels are normalised here (stripped, deduplicated, sorted: manifest.normalize_labels); checking them against the class list is the
caller's job (the API knows the served model's classes).
A correction is full (`absent` None: every class not in its labels is absent) or partial (`absent`
lists the classes confirmed absent; the others not in its labels are unknown and train no loss).

This module holds the way in (add) and the lease cycle every retraining run goes through (claim,
renew, ack, release). The decisions taken about items apart from that cycle (reject, hold,
requeue, expire, adopt) are in curation.py, the read-only queries in queries.py: FeedbackQueue
inherits both, so one handle does all of it.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Unpack

from sqlalchemy import Connection, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from multitag.data.manifest import normalize_labels
from multitag.data.parallel import chunks
from multitag.feedback.curation import QueueCuration
from multitag.feedback.database import IN_LIST_SIZE, Database, sqlite_url
from multitag.feedback.items import (  # the queue's records, importable from here as before
    AddResult,
    ClaimLost,
    CorrectionDetails,
    FeedbackItem,
    OpenInAnotherTask,
    Truth,
    absent_to_json,
    item_of,
    truth,
)
from multitag.feedback.queries import QueueQueries
from multitag.feedback.schema import (  # MIGRATIONS, Origin and RELEASED: importable from here as before
    IS_OPEN,
    MIGRATIONS,
    OPEN_ONCE,
    OPEN_PREDICATE,
    ORIGINS,
    RELEASED,
    Origin,
    feedback,
    of_task,
)
from multitag.feedback.store import ImageStore, checked_sha

__all__ = [
    "MIGRATIONS",
    "RELEASED",
    "AddResult",
    "ClaimLost",
    "CorrectionDetails",
    "FeedbackItem",
    "FeedbackQueue",
    "OpenInAnotherTask",
    "Origin",
    "Truth",
    "absent_to_json",
    "truth",
]


class FeedbackQueue(QueueQueries, QueueCuration):
    """A feedback queue in the database at `db` with its images under `images_dir`; safe to share across processes and hosts.

    `db` is a SQLAlchemy URL (`sqlite:///...`, `postgresql+psycopg://...`) or the path of a SQLite file.
    `task` is the registered model whose corrections this handle writes and reads (retraining.open_queue
    passes `params.registry.model_name`); None: the unassigned items only.
    """

    def __init__(self, db: str | Path, images_dir: Path, lease_seconds: float = 3600, task: str | None = None):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.lease_seconds = float(lease_seconds)
        self.task = task
        self._mine = of_task(feedback, task)
        self.images = ImageStore(images_dir)
        self.database = Database(db if "://" in str(db) else sqlite_url(Path(db)), "feedback", MIGRATIONS)
        self.url = self.database.url

    def for_task(self, task: str | None) -> FeedbackQueue:
        """A handle on the same queue (database connections, images) for `task`; None: the unassigned items."""
        other = copy.copy(self)
        other.task, other._mine = task, of_task(feedback, task)
        return other

    # -- adding ---------------------------------------------------------------------------------

    def add(self, image_bytes: bytes, labels: Iterable[str], **details: Unpack[CorrectionDetails]) -> AddResult:
        """Store the image and queue its corrected labels; an open identical item is merged, not doubled.
        `details`: the model version, note, origin, client and absent classes (items.CorrectionDetails);
        `client` None: the operator (CLI, import); `absent` None: every class not in `labels` is absent."""
        return self._enqueue(self.images.store(image_bytes), labels, **details)

    def add_by_sha(self, image_sha256: str, labels: Iterable[str], **details: Unpack[CorrectionDetails]) -> AddResult:
        """Queue labels for an image stored earlier (e.g. by /predict) without sending its bytes again;
        `details` as for `add`.

        The image must still be stored when the item is written: checked inside the write
        transaction, under the lock the retention sweep takes exclusively while it deletes, so an
        item never names an image the sweep has just removed (KeyError instead: send the bytes).
        """
        return self._enqueue(checked_sha(image_sha256), labels, **details)

    # -- the retraining run's side --------------------------------------------------------------

    def claim(self, run_id: str, limit: int | None = None) -> list[FeedbackItem]:
        """Lease up to `limit` pending items (oldest first) to `run_id`; expired leases are returned first.

        Concurrent claimers get disjoint items: on SQLite the write transaction is exclusive, on
        PostgreSQL the rows are picked `FOR UPDATE SKIP LOCKED`, so claimers never wait for each
        other's rows nor take them.
        """
        if not run_id:
            raise ValueError("claim needs a non-empty run_id so that ack and release can find its items")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")

        def work(conn: Connection) -> list[FeedbackItem]:
            now = time.time()
            _return_expired(conn, now)
            oldest = select(feedback.c.id).where(self._mine, feedback.c.state == "pending").order_by(feedback.c.id).limit(limit)
            rows = conn.execute(
                update(feedback)
                .where(feedback.c.id.in_(oldest.with_for_update(skip_locked=True).scalar_subquery()))
                .values(state="claimed", claimed_by=run_id, lease_expires_at=now + self.lease_seconds, updated_at=now)
                .returning(*feedback.c)
            ).all()
            return sorted((item_of(row) for row in rows), key=lambda item: item.id)

        return self.database.write(work)

    def renew(self, run_id: str) -> int:
        """Extend the lease of every item the run still holds by lease_seconds from now; how many it holds.

        A run renews while it lives (retraining.leases_renewed), so a retraining longer than one
        lease keeps its items; a dead run stops renewing and its items come back when the lease ends.
        """
        now = time.time()
        return self._update(self._held_by(run_id), lease_expires_at=now + self.lease_seconds, updated_at=now)

    def ack(self, run_id: str, ids: Iterable[int]) -> int:
        """Mark the run's claimed items consumed; how many of `ids` the run has now consumed.

        Every id must be held by the run. The ones it still holds are consumed either way (the
        run trained on them); any others raise ClaimLost naming them, because another run may
        train on them again or they were rejected after this run claimed them. Acking again is
        harmless: items this run consumed already count as acked.
        """
        wanted = {int(i) for i in ids}

        def work(conn: Connection) -> set[int]:
            acked: set[int] = set()
            for chunk in chunks(sorted(wanted), IN_LIST_SIZE):
                conn.execute(
                    update(feedback)
                    .where(self._held_by(run_id), feedback.c.id.in_(chunk))
                    .values(state="consumed", consumed_by=run_id, lease_expires_at=None, updated_at=time.time())
                )
                consumed = select(feedback.c.id).where(
                    self._mine, feedback.c.state == "consumed", feedback.c.consumed_by == run_id, feedback.c.id.in_(chunk)
                )
                acked.update(conn.scalars(consumed))
            return acked

        acked = self.database.write(work)
        if lost := sorted(wanted - acked):
            raise ClaimLost(
                f"run {run_id} no longer holds feedback items {lost} ({len(acked)} others are consumed): their lease ran out "
                "and another run claimed them, or they were rejected meanwhile. See `multitag feedback list`; if the run's "
                "lease renewal could not reach the queue for longer than feedback.lease_seconds, raise that setting."
            )
        return len(acked)

    def release(self, run_id: str) -> int:
        """Give all of the run's claimed items back to pending (the retraining failed or was cancelled)."""
        return self._update(self._held_by(run_id), state="pending", claimed_by=None, lease_expires_at=None, updated_at=time.time())

    def release_expired(self) -> int:
        """Return items whose lease ran out (their run died or hung) to pending, in every task: each
        goes back to its own task's pending items."""
        return self.database.write(lambda conn: _return_expired(conn, time.time()))

    # -- plumbing -------------------------------------------------------------------------------

    def _enqueue(
        self,
        sha: str,
        labels: Iterable[str],
        model_version: str | None = None,
        note: str | None = None,
        origin: Origin = "upload",
        client: str | None = None,
        absent: Iterable[str] | None = None,
    ) -> AddResult:
        """Insert an item unless an open one has the same image and label set, in a transaction that
        also checks the image is still stored, under the sweep's lock: an item never names a swept image.

        The look comes first so a merge costs no id; the unique index decides when two replicas
        insert the same feedback at once (PostgreSQL: the later insert waits, then does nothing).
        """
        if origin not in ORIGINS:
            raise ValueError(f"unknown origin {origin!r}; use one of {', '.join(ORIGINS)}")
        labels_json, absent_json = json.dumps(normalize_labels(labels)), absent_to_json(labels, absent)
        dialect_insert = postgresql.insert if self.database.dialect == "postgresql" else sqlite.insert
        open_twin = select(feedback.c.id, feedback.c.task).where(
            feedback.c.image_sha256 == sha, feedback.c.labels == labels_json, feedback.c.absent == absent_json, IS_OPEN
        )

        def merged_into_twin(conn: Connection) -> AddResult | None:
            twin = conn.execute(open_twin).first()
            if twin is None:
                return None
            if twin.task != self.task:
                if twin.task is None:
                    decide = f"`multitag feedback adopt {twin.id}` gives it to the task in params.yaml"
                else:
                    decide = "one open item per correction holds across tasks: it must train or be rejected first"
                raise OpenInAnotherTask(
                    f"image {sha[:12]} has this very correction open in {f'task {twin.task}' if twin.task else 'no task'} "
                    f"(item {twin.id}): {decide}"
                )
            return AddResult(twin.id, sha, merged=True)

        def work(conn: Connection) -> AddResult:
            self.database.lock_images(conn, exclusive=False)
            self.images.path(sha)  # KeyError when it is gone; the transaction rolls back
            if (existing := merged_into_twin(conn)) is not None:
                return existing
            now = time.time()
            inserted = conn.scalar(
                dialect_insert(feedback)
                .values(
                    image_sha256=sha,
                    labels=labels_json,
                    model_version=model_version,
                    note=note,
                    received_at=now,
                    updated_at=now,
                    origin=origin,
                    client=client,
                    absent=absent_json,
                    task=self.task,
                )
                .on_conflict_do_nothing(index_elements=list(OPEN_ONCE.columns), index_where=OPEN_PREDICATE)
                .returning(feedback.c.id)
            )
            if inserted is None:  # PostgreSQL: a concurrent transaction inserted the twin after our look
                return merged_into_twin(conn)
            return AddResult(inserted, sha, merged=False)

        return self.database.write(work)

    def _update(self, where, **values) -> int:
        """One UPDATE of the rows matching `where`; the number of rows it changed."""
        return self.database.write(lambda conn: conn.execute(update(feedback).where(where).values(**values)).rowcount)


def _return_expired(conn: Connection, now: float) -> int:
    expired = and_(feedback.c.state == "claimed", feedback.c.lease_expires_at <= now)
    return conn.execute(
        update(feedback).where(expired).values(state="pending", claimed_by=None, lease_expires_at=None, updated_at=now)
    ).rowcount
