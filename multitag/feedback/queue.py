"""The durable feedback queue: users' corrected labels wait here for the nightly retraining.

This module is the items' state machine. SQLite in WAL mode holds them (database.py: every
write one `BEGIN IMMEDIATE` transaction, retried while another writer holds the lock) and
content-addressed files hold the images (store.py), so the queue survives crashes and restarts
without a server and any number of API workers, CLI calls and retraining runs can share it.
Folders of corrections are queued by importer.py.

An item's life: `pending` -> `claimed` by a retraining run (with a lease, which the living run
renews) -> `consumed` when that run acks it, or back to `pending` when the run releases it, fails,
or dies and its lease expires.
`rejected` items (leakage into the frozen test split, or an admin's decision) never train.
Item ids are SQLite INTEGER autoincrement ids: never reused, increasing in arrival order.

Labels are normalised here (stripped, deduplicated, sorted: manifest.normalize_labels); checking them against the class list is the
caller's job (the API knows the served model's classes).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from multitag.data.manifest import normalize_labels
from multitag.errors import MultitagError, UsageError
from multitag.feedback.database import Database
from multitag.feedback.store import ImageStore, checked_sha

State = Literal["pending", "claimed", "consumed", "rejected"]
STATES: tuple[State, ...] = get_args(State)
RequeueState = Literal["rejected", "consumed"]
OPEN_STATES = "('pending', 'claimed')"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_sha256 TEXT NOT NULL,
    labels TEXT NOT NULL,
    model_version TEXT,
    note TEXT,
    received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN {tuple(STATES)!r}),
    claimed_by TEXT,
    lease_expires_at REAL,
    consumed_by TEXT,
    reason TEXT,
    updated_at REAL NOT NULL
);
-- At most one open item per (image, label set): the database itself refuses doubles.
CREATE UNIQUE INDEX IF NOT EXISTS feedback_open_once
    ON feedback (image_sha256, labels) WHERE state IN {OPEN_STATES};
CREATE INDEX IF NOT EXISTS feedback_by_state ON feedback (state, id);
CREATE INDEX IF NOT EXISTS feedback_by_claim ON feedback (claimed_by) WHERE state = 'claimed';
"""


class ClaimLost(MultitagError, RuntimeError):
    """A run acked items it no longer holds: its lease ran out and another run took them, or they were rejected."""


@dataclass(frozen=True)
class AddResult:
    id: int
    image_sha256: str
    merged: bool


@dataclass(frozen=True)
class FeedbackItem:
    id: int
    image_sha256: str
    labels: tuple[str, ...]
    model_version: str | None
    note: str | None
    received_at: float
    state: State
    claimed_by: str | None
    lease_expires_at: float | None
    consumed_by: str | None
    reason: str | None
    updated_at: float


class FeedbackQueue:
    """A feedback queue at `db_path` with its images under `images_dir`; safe to share across processes."""

    def __init__(self, db_path: Path, images_dir: Path, lease_seconds: float = 3600):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.db_path = Path(db_path)
        self.lease_seconds = float(lease_seconds)
        self.images = ImageStore(images_dir)
        self._db = Database(self.db_path, _SCHEMA)

    # -- adding ---------------------------------------------------------------------------------

    def add(self, image_bytes: bytes, labels: Iterable[str], model_version: str | None = None, note: str | None = None) -> AddResult:
        """Store the image and queue its corrected labels; an open identical item is merged, not doubled."""
        return self._enqueue(self.images.store(image_bytes), labels, model_version, note)

    def add_by_sha(self, image_sha256: str, labels: Iterable[str], model_version: str | None = None, note: str | None = None) -> AddResult:
        """Queue labels for an image stored earlier (e.g. by /predict) without sending its bytes again.

        The image must still be stored when the item is written: checked inside the write
        transaction, which the retention sweep also holds while it deletes, so an item never names
        an image the sweep has just removed (KeyError instead: send the bytes).
        """
        return self._enqueue(checked_sha(image_sha256), labels, model_version, note)

    # -- the retraining run's side --------------------------------------------------------------

    def claim(self, run_id: str, limit: int | None = None) -> list[FeedbackItem]:
        """Lease up to `limit` pending items (oldest first) to `run_id`; expired leases are returned first.

        Claiming happens in one write transaction, so concurrent claimers get disjoint items.
        """
        if not run_id:
            raise ValueError("claim needs a non-empty run_id so that ack and release can find its items")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")

        def work(conn: sqlite3.Connection) -> list[FeedbackItem]:
            now = time.time()
            _return_expired(conn, now)
            rows = conn.execute(
                "UPDATE feedback SET state = 'claimed', claimed_by = ?, lease_expires_at = ?, updated_at = ? "
                "WHERE id IN (SELECT id FROM feedback WHERE state = 'pending' ORDER BY id LIMIT ?) RETURNING *",
                (run_id, now + self.lease_seconds, now, -1 if limit is None else limit),
            ).fetchall()
            return sorted((_item(row) for row in rows), key=lambda item: item.id)

        return self._db.write(work)

    def renew(self, run_id: str) -> int:
        """Extend the lease of every item the run still holds by lease_seconds from now; how many it holds.

        A run renews while it lives (retraining.leases_renewed), so a retraining longer than one
        lease keeps its items; a dead run stops renewing and its items come back when the lease ends.
        """
        now = time.time()
        return self._db.update(
            "UPDATE feedback SET lease_expires_at = ?2, updated_at = ?3 WHERE state = 'claimed' AND claimed_by = ?1",
            (run_id, now + self.lease_seconds, now),
        )

    def ack(self, run_id: str, ids: Iterable[int]) -> int:
        """Mark the run's claimed items consumed; how many of `ids` the run has now consumed.

        Every id must be held by the run. The ones it still holds are consumed either way (the
        run trained on them); any others raise ClaimLost naming them, because another run may
        train on them again or they were rejected after this run claimed them. Acking again is
        harmless: items this run consumed already count as acked.
        """
        wanted = {int(i) for i in ids}

        def work(conn: sqlite3.Connection) -> set[int]:
            conn.execute(
                "UPDATE feedback SET state = 'consumed', consumed_by = ?1, lease_expires_at = NULL, updated_at = ?2 "
                "WHERE state = 'claimed' AND claimed_by = ?1 AND id IN (SELECT value FROM json_each(?3))",
                (run_id, time.time(), _json_ids(wanted)),
            )
            rows = conn.execute(
                "SELECT id FROM feedback WHERE state = 'consumed' AND consumed_by = ? AND id IN (SELECT value FROM json_each(?))",
                (run_id, _json_ids(wanted)),
            ).fetchall()
            return {row["id"] for row in rows}

        acked = self._db.write(work)
        if lost := sorted(wanted - acked):
            raise ClaimLost(
                f"run {run_id} no longer holds feedback items {lost} ({len(acked)} others are consumed): their lease ran out "
                "and another run claimed them, or they were rejected meanwhile. See `multitag feedback list`; if the run's "
                "lease renewal could not reach the queue for longer than feedback.lease_seconds, raise that setting."
            )
        return len(acked)

    def release(self, run_id: str) -> int:
        """Give all of the run's claimed items back to pending (the retraining failed or was cancelled)."""
        return self._db.update(
            "UPDATE feedback SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, updated_at = ?2 "
            "WHERE state = 'claimed' AND claimed_by = ?1",
            (run_id, time.time()),
        )

    def release_expired(self) -> int:
        """Return items whose lease ran out (their run died or hung) to pending."""
        return self._db.write(lambda conn: _return_expired(conn, time.time()))

    # -- curation -------------------------------------------------------------------------------

    def reject(self, ids: Iterable[int], reason: str) -> int:
        """Reject open (pending or claimed) items so they never train; consumed history stays as it is."""
        if not reason or not reason.strip():
            raise ValueError("reject needs a reason, so that whoever requeues the item later knows why")
        return self._db.update(
            f"UPDATE feedback SET state = 'rejected', reason = ?1, claimed_by = NULL, lease_expires_at = NULL, "
            f"updated_at = ?2 WHERE state IN {OPEN_STATES} AND id IN (SELECT value FROM json_each(?3))",
            (reason.strip(), time.time(), _json_ids(ids)),
        )

    def reject_leaked(self, test_hashes: set[str]) -> list[int]:
        """Reject open items whose image is in the frozen test split (reason 'leakage'); returns their ids."""

        def work(conn: sqlite3.Connection) -> list[int]:
            rows = conn.execute(
                "UPDATE feedback SET state = 'rejected', reason = 'leakage', claimed_by = NULL, "
                f"lease_expires_at = NULL, updated_at = ?1 WHERE state IN {OPEN_STATES} "
                "AND image_sha256 IN (SELECT value FROM json_each(?2)) RETURNING id",
                (time.time(), json.dumps(sorted(sha.lower() for sha in test_hashes))),
            ).fetchall()
            return sorted(row["id"] for row in rows)

        return self._db.write(work)

    def requeue(self, ids: Iterable[int] | None = None, state: RequeueState = "rejected") -> int:
        """Put items in `state` back to pending: the given ids, or every item in that state when ids is None.

        Use it to undo a rejection, or to train again on consumed feedback (a run whose model was
        thrown away). The item keeps its id and received_at; claim, consumer and reason are cleared.
        One open item per image and label set still holds: among chosen twins only the newest comes
        back, and none does when an open item already carries that feedback. Items not in `state`
        are left alone. Leakage is not re-checked here: the retraining flow runs reject_leaked
        before every claim.
        """
        if state not in ("rejected", "consumed"):
            raise UsageError(
                f"requeue takes items that are 'rejected' or 'consumed', not {state!r}; "
                "claimed items go back with release() or release_expired()"
            )
        return self._db.update(
            "UPDATE feedback SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, consumed_by = NULL, "
            "reason = NULL, updated_at = ?2 WHERE id IN ("
            "  SELECT MAX(id) FROM feedback AS chosen WHERE chosen.state = ?1"
            "  AND (?3 IS NULL OR chosen.id IN (SELECT value FROM json_each(?3)))"
            "  GROUP BY chosen.image_sha256, chosen.labels"
            f") AND NOT EXISTS (SELECT 1 FROM feedback AS open WHERE open.state IN {OPEN_STATES} "
            "AND open.image_sha256 = feedback.image_sha256 AND open.labels = feedback.labels)",
            (state, time.time(), None if ids is None else _json_ids(ids)),
        )

    # -- reading --------------------------------------------------------------------------------

    def claimed(self, run_id: str) -> list[FeedbackItem]:
        """The items `run_id` holds now, oldest first."""
        rows = self._db.read(
            lambda conn: conn.execute("SELECT * FROM feedback WHERE state = 'claimed' AND claimed_by = ? ORDER BY id", (run_id,)).fetchall()
        )
        return [_item(row) for row in rows]

    def pending_count(self) -> int:
        return self._db.read(lambda conn: conn.execute("SELECT COUNT(*) FROM feedback WHERE state = 'pending'").fetchone()[0])

    def stats(self) -> dict:
        """Item counts per state and in total, and how often each label occurs among pending items."""

        def work(conn: sqlite3.Connection) -> dict:
            counts = dict.fromkeys(STATES, 0)
            counts.update(conn.execute("SELECT state, COUNT(*) FROM feedback GROUP BY state").fetchall())
            labels = conn.execute(
                "SELECT label.value, COUNT(*) FROM feedback, json_each(feedback.labels) AS label "
                "WHERE feedback.state = 'pending' GROUP BY label.value ORDER BY label.value"
            ).fetchall()
            return {**counts, "total": sum(counts.values()), "pending_labels": dict(labels)}

        return self._db.read(work)

    def list_items(self, state: State | None = None, limit: int = 100) -> list[FeedbackItem]:
        """The newest `limit` items (all states, or one), newest first, as an admin page shows them."""
        if state is not None and state not in STATES:
            raise UsageError(f"unknown state {state!r}; use one of {', '.join(STATES)}")
        rows = self._db.read(
            lambda conn: conn.execute(
                "SELECT * FROM feedback WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2", (state, limit)
            ).fetchall()
        )
        return [_item(row) for row in rows]

    # -- plumbing -------------------------------------------------------------------------------

    def _enqueue(self, sha: str, labels: Iterable[str], model_version: str | None, note: str | None) -> AddResult:
        """Insert an item unless an open one has the same image and label set (checked in the same
        transaction, as is that the image is still stored: an item never names a swept image)."""
        labels_json = json.dumps(normalize_labels(labels))

        def work(conn: sqlite3.Connection) -> AddResult:
            self.images.path(sha)  # KeyError when it is gone; the transaction rolls back
            existing = conn.execute(
                f"SELECT id FROM feedback WHERE image_sha256 = ? AND labels = ? AND state IN {OPEN_STATES}",
                (sha, labels_json),
            ).fetchone()
            if existing is not None:
                return AddResult(existing["id"], sha, merged=True)
            now = time.time()
            cursor = conn.execute(
                "INSERT INTO feedback (image_sha256, labels, model_version, note, received_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sha, labels_json, model_version, note, now, now),
            )
            return AddResult(cursor.lastrowid, sha, merged=False)

        return self._db.write(work)


def _return_expired(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "UPDATE feedback SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, updated_at = ?1 "
        "WHERE state = 'claimed' AND lease_expires_at <= ?1",
        (now,),
    ).rowcount


def _json_ids(ids: Iterable[int]) -> str:
    """Ids as one JSON parameter for json_each, so any number of ids fits in one statement."""
    return json.dumps([int(i) for i in ids])


def _item(row: sqlite3.Row) -> FeedbackItem:
    return FeedbackItem(**{**dict(row), "labels": tuple(json.loads(row["labels"]))})
