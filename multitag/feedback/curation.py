"""The feedback queue's decisions outside a retraining run's lease: rejecting items (an admin, or
the leakage check before each claim), holding suspicious ones (the screen, screen.py), putting
items back to pending (requeue), retention's expiry, and giving unassigned items to a task (adopt).

They live apart from queue.py, which holds the way in (add) and the lease cycle every run goes
through (claim, renew, ack, release), because they are another job: each is a decision someone or
some policy takes, with a reason, about items no run needs to hold; none takes or honours a lease
(a rejected item a run still holds is lost to it: ack raises ClaimLost). FeedbackQueue inherits
them (`QueueCuration`), so the handle's task scopes them as it scopes the rest.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import get_args

from sqlalchemy import ColumnElement, Connection, and_, delete, exists, func, or_, select, update

from multitag.data.parallel import chunks
from multitag.errors import UsageError
from multitag.feedback.database import IN_LIST_SIZE, Database
from multitag.feedback.schema import IS_OPEN, OPEN_STATES, RELEASED, RequeueState, feedback, of_task


class QueueCuration:
    """The queue handle's curation and upkeep. Each decision changes the handle's task's items only
    (`_mine`), unless its docstring says every task; FeedbackQueue sets `database`, `task` and `_mine`."""

    database: Database
    task: str | None
    _mine: ColumnElement[bool]

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
            .where(chosen.c.state == state, of_task(chosen, self.task))
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
        requeued = (
            update(feedback)
            .where(feedback.c.id.in_(newest_of_twins.scalar_subquery()), ~carried_by_open_item)
            .values(
                state="pending",
                claimed_by=None,
                lease_expires_at=None,
                consumed_by=None,
                reason=RELEASED if state == "held" else None,  # the screen lets a released item through
                updated_at=time.time(),
            )
        )
        return self.database.write(lambda conn: conn.execute(requeued).rowcount)

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


def _reject(conn: Connection, mine, ids: list[int], reason: str) -> int:
    rejected = 0
    for chunk in chunks(ids, IN_LIST_SIZE):
        rejected += conn.execute(
            update(feedback)
            .where(mine, IS_OPEN, feedback.c.id.in_(chunk))
            .values(state="rejected", reason=reason, claimed_by=None, lease_expires_at=None, updated_at=time.time())
        ).rowcount
    return rejected
