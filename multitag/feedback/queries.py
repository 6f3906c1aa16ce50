"""What a feedback queue handle can tell without changing an item: the read-only queries that the
admin pages, the shadow report, the review list, the quotas and the retraining flow ask.

They live apart from the items' state machine (queue.py) because none of them moves an item: a
reader of this module needs no state diagram, and a change to a transition never touches them.
FeedbackQueue inherits them (`QueueQueries`), so they read through the same handle, database and
task as its writes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Connection, and_, func, select

from multitag.data.parallel import chunks
from multitag.errors import UsageError
from multitag.feedback.database import IN_LIST_SIZE, Database
from multitag.feedback.items import FeedbackItem, Truth, item_of, truth
from multitag.feedback.schema import IS_OPEN, STATES, State, feedback


class QueueQueries:
    """The queue handle's read-only side. Each query sees the handle's task only (`_mine`), unless
    its docstring says it reads every task; FeedbackQueue sets `database` and `_mine`."""

    database: Database
    _mine: ColumnElement[bool]

    def open_images_of(self, client: str) -> set[str]:
        """The images of every open (pending, claimed, held) item `client` sent, in every task: what
        its storage quota counts (serving/quotas.py)."""
        query = select(feedback.c.image_sha256).distinct().where(feedback.c.client == client, IS_OPEN)
        return self.database.read(lambda conn: set(conn.scalars(query)))

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

    def _items(self, query) -> list[FeedbackItem]:
        return [item_of(row) for row in self.database.read(lambda conn: conn.execute(query).all())]

    def _held_by(self, run_id: str):
        """The task's items `run_id` holds now: what `claimed` lists, and renew, ack and release change."""
        return and_(self._mine, feedback.c.state == "claimed", feedback.c.claimed_by == run_id)
