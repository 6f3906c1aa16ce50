"""The durable feedback queue: users' corrected labels wait here for the nightly retraining.

This module is the items' state machine. A database holds them (database.py: SQLite in WAL mode
by default, PostgreSQL when several hosts share the queue; the same SQLAlchemy Core statements on
both) and content-addressed files hold the images (store.py, under a root every host can reach),
so the queue survives crashes and restarts and any number of API replicas, CLI calls and
retraining runs can share it. Folders of corrections are queued by importer.py.

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
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import get_args

from sqlalchemy import (
    Connection,
    and_,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from multitag.data.manifest import normalize_labels
from multitag.data.parallel import chunks
from multitag.errors import UsageError
from multitag.feedback.database import IN_LIST_SIZE, Database, sqlite_url
from multitag.feedback.items import (  # the queue's records, importable from here as before
    AddResult,
    ClaimLost,
    FeedbackItem,
    OpenInAnotherTask,
    Truth,
    absent_to_json,
    item_of,
    truth,
)
from multitag.feedback.schema import (
    IS_OPEN,
    MIGRATIONS,
    OPEN_ONCE,
    OPEN_PREDICATE,
    OPEN_STATES,
    ORIGINS,
    RELEASED,
    STATES,
    Origin,
    RequeueState,
    State,
    feedback,
)
from multitag.feedback.store import ImageStore, checked_sha

__all__ = ["AddResult", "ClaimLost", "FeedbackItem", "FeedbackQueue", "OpenInAnotherTask", "Truth", "absent_to_json", "truth"]


class FeedbackQueue:
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
        self._mine = _of_task(feedback, task)
        self.images = ImageStore(images_dir)
        self.database = Database(db if "://" in str(db) else sqlite_url(Path(db)), "feedback", MIGRATIONS)
        self.url = self.database.url

    def for_task(self, task: str | None) -> FeedbackQueue:
        """A handle on the same queue (database connections, images) for `task`; None: the unassigned items."""
        other = copy.copy(self)
        other.task, other._mine = task, _of_task(feedback, task)
        return other

    # -- adding ---------------------------------------------------------------------------------

    def add(
        self,
        image_bytes: bytes,
        labels: Iterable[str],
        model_version: str | None = None,
        note: str | None = None,
        origin: Origin = "upload",
        client: str | None = None,
        absent: Iterable[str] | None = None,
    ) -> AddResult:
        """Store the image and queue its corrected labels; an open identical item is merged, not doubled.
        `client` names the sender (a keyed hash, never an address); None: the operator (CLI, import).
        `absent` None: every class not in `labels` is absent; a list: only those, the others are unknown."""
        return self._enqueue(self.images.store(image_bytes), labels, model_version, note, origin, client, absent)

    def add_by_sha(
        self,
        image_sha256: str,
        labels: Iterable[str],
        model_version: str | None = None,
        note: str | None = None,
        origin: Origin = "upload",
        client: str | None = None,
        absent: Iterable[str] | None = None,
    ) -> AddResult:
        """Queue labels for an image stored earlier (e.g. by /predict) without sending its bytes again.

        The image must still be stored when the item is written: checked inside the write
        transaction, under the lock the retention sweep takes exclusively while it deletes, so an
        item never names an image the sweep has just removed (KeyError instead: send the bytes).
        """
        return self._enqueue(checked_sha(image_sha256), labels, model_version, note, origin, client, absent)

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

    # -- curation -------------------------------------------------------------------------------

    def reject(self, ids: Iterable[int], reason: str) -> int:
        """Reject open (pending, claimed or held) items so they never train; consumed history stays as it is."""
        if not reason or not reason.strip():
            raise ValueError("reject needs a reason, so that whoever requeues the item later knows why")
        return self.database.write(lambda conn: _reject(conn, self._mine, [int(i) for i in ids], reason.strip()))

    def reject_leaked(self, test_hashes: set[str], from_corrections: set[str] = frozenset()) -> list[int]:
        """Reject open items whose image is in the frozen test split (reason 'leakage'); returns their ids.

        A full labelling of an image a correction put in test (`from_corrections`, e.g. frozen by a
        run that then failed) is no leak: it goes to test again. A partial one still is: a test photo
        needs every class's answer."""
        wanted = {sha.lower() for sha in test_hashes}

        def work(conn: Connection) -> list[int]:
            rows = conn.execute(select(feedback.c.id, feedback.c.image_sha256, feedback.c.absent).where(self._mine, IS_OPEN)).all()
            leaked = sorted(
                item_id for item_id, sha, absent in rows if sha in wanted and not (sha in from_corrections and json.loads(absent) is None)
            )
            _reject(conn, self._mine, leaked, "leakage")
            return leaked

        return self.database.write(work)

    def hold(self, reasons: Mapping[int, str]) -> int:
        """Set pending items aside for review, each with its reason ({id: reason}); how many were held.

        Only items still pending move: one a run claimed or an admin rejected meanwhile keeps its state.
        """

        def work(conn: Connection) -> int:
            now = time.time()
            held = update(feedback).where(self._mine, feedback.c.state == "pending")
            return sum(
                conn.execute(held.where(feedback.c.id == int(item_id)).values(state="held", reason=reason, updated_at=now)).rowcount
                for item_id, reason in reasons.items()
            )

        return self.database.write(work)

    def requeue(self, ids: Iterable[int] | None = None, state: RequeueState = "rejected") -> int:
        """Put items in `state` back to pending: the given ids, or every item in that state when ids is None.

        Use it to undo a rejection, to release held items an admin has checked (the screen does not
        hold them again: see screen.py), or to train again on consumed feedback (a run whose model was
        thrown away). The item keeps its id and received_at; claim, consumer and reason are cleared.
        One open item per image and label set still holds: among chosen twins only the newest comes
        back, and none does when an open item already carries that feedback. Items not in `state`
        are left alone. Leakage is not re-checked here: the retraining flow runs reject_leaked
        before every claim.
        """
        if state not in get_args(RequeueState):
            raise UsageError(
                f"requeue takes items that are 'rejected', 'consumed' or 'held', not {state!r}; "
                "claimed items go back with release() or release_expired()"
            )
        chosen, already_open = feedback.alias("chosen"), feedback.alias("already_open")
        newest_of_twins = (
            select(func.max(chosen.c.id))
            .where(chosen.c.state == state, _of_task(chosen, self.task))
            .group_by(chosen.c.image_sha256, chosen.c.labels, chosen.c.absent)
        )
        if ids is not None:
            newest_of_twins = newest_of_twins.where(chosen.c.id.in_([int(i) for i in ids]))
        carried_by_open_item = exists().where(  # in any task: feedback_open_once holds across tasks
            already_open.c.id != feedback.c.id,  # a held item is open itself
            already_open.c.state.in_(OPEN_STATES),
            already_open.c.image_sha256 == feedback.c.image_sha256,
            already_open.c.labels == feedback.c.labels,
            already_open.c.absent == feedback.c.absent,
        )
        return self._update(
            and_(feedback.c.id.in_(newest_of_twins.scalar_subquery()), ~carried_by_open_item),
            state="pending",
            claimed_by=None,
            lease_expires_at=None,
            consumed_by=None,
            reason=RELEASED if state == "held" else None,  # the screen lets a released item through
            updated_at=time.time(),
        )

    def expire(self, held_before: float | None, decided_before: float | None) -> dict[str, int]:
        """Retention, in every task, of what no run needs: held items an admin left alone since
        `held_before` are rejected ('held_expired': still requeueable until they expire in turn);
        rejected items, and consumed ones a newer consumed correction of the same image replaced,
        last changed before `decided_before` are deleted. None keeps them. The newest consumed
        correction of each image is training data, like the dataset's photos, and is never deleted;
        an image nothing names any more goes with the image sweep (feedback/retention.py)."""
        newer = feedback.alias("newer")
        replaced = exists().where(
            newer.c.image_sha256 == feedback.c.image_sha256,
            newer.c.task.is_not_distinct_from(feedback.c.task),
            newer.c.state == "consumed",
            newer.c.id > feedback.c.id,
        )

        def work(conn: Connection) -> dict[str, int]:
            counts = {"held_expired": 0, "deleted": 0}
            if held_before is not None:
                stale = and_(feedback.c.state == "held", feedback.c.updated_at < held_before)
                expired = update(feedback).where(stale).values(state="rejected", reason="held_expired", updated_at=time.time())
                counts["held_expired"] = conn.execute(expired).rowcount
            if decided_before is not None:
                done = or_(feedback.c.state == "rejected", and_(feedback.c.state == "consumed", replaced))
                counts["deleted"] = conn.execute(delete(feedback).where(done, feedback.c.updated_at < decided_before)).rowcount
            return counts

        return self.database.write(work)

    def open_images_of(self, client: str) -> set[str]:
        """The images of every open (pending, claimed, held) item `client` sent, in every task: what
        its storage quota counts (serving/quotas.py)."""
        query = select(feedback.c.image_sha256).distinct().where(feedback.c.client == client, IS_OPEN)
        return self.database.read(lambda conn: set(conn.scalars(query)))

    # -- reading --------------------------------------------------------------------------------

    def claimed(self, run_id: str) -> list[FeedbackItem]:
        """The items `run_id` holds now, oldest first."""
        return self._items(select(feedback).where(self._held_by(run_id)).order_by(feedback.c.id))

    def named_images(self, hashes: Iterable[str]) -> set[str]:
        """Which of `hashes` a feedback item names, in any state: someone has labelled those images already."""
        wanted = sorted({sha.lower() for sha in hashes})

        def work(conn: Connection) -> set[str]:
            named = feedback.c.image_sha256
            query = select(named).distinct().where(self._mine)
            return {sha for chunk in chunks(wanted, IN_LIST_SIZE) for sha in conn.scalars(query.where(named.in_(chunk)))}

        return self.database.read(work)

    def corrections(self, hashes: Iterable[str]) -> dict[str, Truth]:
        """The newest correction of each of `hashes` that has one (a rejected item is no correction,
        nor is a held one until an admin releases it): the truth a shadow report scores both
        models' answers against, only on the classes it knows (`Truth.knows`)."""
        wanted = sorted({sha.lower() for sha in hashes})
        trusted = feedback.c.state.not_in(("rejected", "held"))
        query = select(feedback.c.image_sha256, feedback.c.labels, feedback.c.absent).where(self._mine, trusted).order_by(feedback.c.id)

        def work(conn: Connection) -> dict[str, Truth]:
            rows = (row for chunk in chunks(wanted, IN_LIST_SIZE) for row in conn.execute(query.where(feedback.c.image_sha256.in_(chunk))))
            return {sha: truth(labels, absent) for sha, labels, absent in rows}  # ascending ids: the newest wins

        return self.database.read(work)

    def pending_count(self) -> int:
        return self.database.read(lambda conn: conn.scalar(select(func.count()).where(self._mine, feedback.c.state == "pending")))

    def stats(self) -> dict:
        """The task's item counts per state and in total, and how often each label occurs among its pending items."""

        def work(conn: Connection) -> dict:
            counts = dict.fromkeys(STATES, 0)
            per_state = select(feedback.c.state, func.count()).where(self._mine).group_by(feedback.c.state)
            counts.update((state, count) for state, count in conn.execute(per_state))
            pending_labels = Counter(
                label
                for labels in conn.scalars(select(feedback.c.labels).where(self._mine, feedback.c.state == "pending"))
                for label in json.loads(labels)
            )
            return {**counts, "total": sum(counts.values()), "pending_labels": dict(sorted(pending_labels.items()))}

        return self.database.read(work)

    def unassigned_count(self) -> int:
        """How many items in the whole queue belong to no task (queued before corrections recorded
        theirs, or by a replica of an older multitag): they wait for an admin to adopt them."""
        return self.database.read(lambda conn: conn.scalar(select(func.count()).where(feedback.c.task.is_(None))))

    def list_items(self, state: State | None = None, limit: int = 100) -> list[FeedbackItem]:
        """The task's newest `limit` items (all states, or one), newest first, as an admin page shows them."""
        if state is not None and state not in STATES:
            raise UsageError(f"unknown state {state!r}; use one of {', '.join(STATES)}")
        query = select(feedback).where(self._mine).order_by(feedback.c.id.desc()).limit(limit)
        return self._items(query if state is None else query.where(feedback.c.state == state))

    def adopt(self, ids: Iterable[int] | None = None) -> int:
        """Make unassigned items (the given ids, or all of them) this task's, in whatever state they
        are: a pending one then waits for this task's next claim, a consumed one joins its export.
        Items of another task are left alone. How many were adopted."""
        if self.task is None:
            raise UsageError("adopt gives unassigned items to a task: open the queue for that task (params' registry.model_name)")
        adopted = update(feedback).where(feedback.c.task.is_(None)).values(task=self.task, updated_at=time.time())

        def work(conn: Connection) -> int:
            if ids is None:
                return conn.execute(adopted).rowcount
            wanted = sorted({int(i) for i in ids})
            return sum(conn.execute(adopted.where(feedback.c.id.in_(chunk))).rowcount for chunk in chunks(wanted, IN_LIST_SIZE))

        return self.database.write(work)

    # -- plumbing -------------------------------------------------------------------------------

    def _enqueue(
        self,
        sha: str,
        labels: Iterable[str],
        model_version: str | None,
        note: str | None,
        origin: Origin,
        client: str | None,
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

    def _items(self, query) -> list[FeedbackItem]:
        return [item_of(row) for row in self.database.read(lambda conn: conn.execute(query).all())]

    def _held_by(self, run_id: str):
        return and_(self._mine, feedback.c.state == "claimed", feedback.c.claimed_by == run_id)


def _of_task(table, task: str | None):
    """The rows of `table` (the feedback table or an alias of it) that belong to `task` (None: unassigned)."""
    return table.c.task.is_(None) if task is None else table.c.task == task


def _return_expired(conn: Connection, now: float) -> int:
    expired = and_(feedback.c.state == "claimed", feedback.c.lease_expires_at <= now)
    return conn.execute(
        update(feedback).where(expired).values(state="pending", claimed_by=None, lease_expires_at=None, updated_at=now)
    ).rowcount


def _reject(conn: Connection, mine, ids: list[int], reason: str) -> int:
    rejected = 0
    for chunk in chunks(ids, IN_LIST_SIZE):
        rejected += conn.execute(
            update(feedback)
            .where(mine, IS_OPEN, feedback.c.id.in_(chunk))
            .values(state="rejected", reason=reason, claimed_by=None, lease_expires_at=None, updated_at=time.time())
        ).rowcount
    return rejected
