"""The durable feedback queue: users' corrected labels wait here for the nightly retraining.

SQLite in WAL mode holds the items and content-addressed files hold the images, so the queue
survives crashes and restarts without a server. Every write is one `BEGIN IMMEDIATE`
transaction, retried a few times when another writer holds the lock, so any number of API
workers, CLI calls and retraining runs (threads or processes) can share one queue.

An item's life: `pending` -> `claimed` by a retraining run (with a lease) -> `consumed` when that
run acks it, or back to `pending` when the run releases it, fails, or dies and its lease expires.
`rejected` items (leakage into the frozen test split, or an admin's decision) never train.
Item ids are SQLite INTEGER autoincrement ids: never reused, increasing in arrival order.

Labels are stripped, deduplicated and sorted here; checking them against the class list is the
caller's job (the API knows the served model's classes).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

State = Literal["pending", "claimed", "consumed", "rejected"]
STATES: tuple[State, ...] = ("pending", "claimed", "consumed", "rejected")
OPEN_STATES = "('pending', 'claimed')"
BUSY_TIMEOUT_MS = 10_000
WRITE_ATTEMPTS = 5
IMPORT_CSV_LAYOUT = "a header 'filename,labels', then one row per image, labels separated by '|'"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (  # extension, (offset, bytes) that must match
    ("jpg", ((0, b"\xff\xd8\xff"),)),
    ("png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("webp", ((0, b"RIFF"), (8, b"WEBP"))),
    ("bmp", ((0, b"BM"),)),
    ("gif", ((0, b"GIF87a"),)),
    ("gif", ((0, b"GIF89a"),)),
)
EXTENSIONS = (*dict.fromkeys(ext for ext, _ in _MAGIC), "bin")

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

T = TypeVar("T")


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

    def to_dict(self) -> dict:
        """JSON-ready: labels as a list, everything else as stored."""
        return {**asdict(self), "labels": list(self.labels)}


@dataclass(frozen=True)
class ImportProblem:
    line: int
    filename: str
    reason: str


@dataclass
class ImportReport:
    added: list[AddResult] = field(default_factory=list)
    merged: list[AddResult] = field(default_factory=list)
    errors: list[ImportProblem] = field(default_factory=list)


class FeedbackQueue:
    """A feedback queue at `db_path` with its images under `images_dir`; safe to share across processes."""

    def __init__(self, db_path: Path, images_dir: Path, lease_seconds: float = 3600):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
        self.db_path = Path(db_path)
        self.images_dir = Path(images_dir)
        self.lease_seconds = float(lease_seconds)
        self._local = threading.local()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._create_schema()

    # -- images ---------------------------------------------------------------------------------

    def store_image(self, image_bytes: bytes) -> str:
        """Store the bytes under their sha256 and return it; storing the same bytes twice is a no-op.

        The file is written beside its final name and renamed into place, so a crash leaves either
        the whole image or none of it, never a truncated file under a valid hash.
        """
        sha = hashlib.sha256(image_bytes).hexdigest()
        target = self._shard(sha) / f"{sha}.{image_extension(image_bytes)}"
        if target.exists():
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{sha}.{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "wb") as handle:
                handle.write(image_bytes)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        return sha

    def image_path(self, sha: str) -> Path:
        """The stored file of an image; KeyError when the queue has never stored it."""
        sha = _checked_sha(sha)
        for ext in EXTENSIONS:
            path = self._shard(sha) / f"{sha}.{ext}"
            if path.exists():
                return path
        raise KeyError(f"image {sha} is not stored under {self.images_dir}; send its bytes with add() or store_image() first")

    # -- adding ---------------------------------------------------------------------------------

    def add(self, image_bytes: bytes, labels: Iterable[str], model_version: str | None = None, note: str | None = None) -> AddResult:
        """Store the image and queue its corrected labels; an open identical item is merged, not doubled."""
        return self._enqueue(self.store_image(image_bytes), labels, model_version, note)

    def add_by_sha(self, image_sha256: str, labels: Iterable[str], model_version: str | None = None, note: str | None = None) -> AddResult:
        """Queue labels for an image stored earlier (e.g. by /predict) without sending its bytes again."""
        return self._enqueue(self.image_path(image_sha256).stem, labels, model_version, note)

    def import_dir(self, directory: Path, labels_csv: Path | None = None) -> ImportReport:
        """Queue a folder of images listed in a CSV (`filename,labels`, labels separated by '|').

        The CSV defaults to `directory/labels.csv`. Every row ends up in the report: added, merged
        into an open item, or an error with its line number (missing or unreadable file, content
        that is no known image format, a row that is not UTF-8 or has no labels column).
        """
        directory = Path(directory)
        csv_path = Path(labels_csv) if labels_csv is not None else directory / "labels.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path} not found: an import needs {IMPORT_CSV_LAYOUT}")
        report = ImportReport()
        for row in _csv_rows(csv_path):
            if isinstance(row, ImportProblem):
                report.errors.append(row)
                continue
            line, filename, labels = row
            try:
                image_bytes = _read_image(directory, filename)
            except ValueError as err:
                report.errors.append(ImportProblem(line, filename, str(err)))
                continue
            result = self.add(image_bytes, labels, note=f"imported from {csv_path.name}:{line}")
            (report.merged if result.merged else report.added).append(result)
        return report

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

        return self._write(work)

    def ack(self, run_id: str, ids: Iterable[int]) -> int:
        """Mark the run's claimed items consumed; items claimed by another run or not claimed are untouched."""
        return self._update(
            "UPDATE feedback SET state = 'consumed', consumed_by = ?1, lease_expires_at = NULL, updated_at = ?2 "
            "WHERE state = 'claimed' AND claimed_by = ?1 AND id IN (SELECT value FROM json_each(?3))",
            (run_id, time.time(), _json_ids(ids)),
        )

    def release(self, run_id: str) -> int:
        """Give all of the run's claimed items back to pending (the retraining failed or was cancelled)."""
        return self._update(
            "UPDATE feedback SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, updated_at = ?2 "
            "WHERE state = 'claimed' AND claimed_by = ?1",
            (run_id, time.time()),
        )

    def release_expired(self) -> int:
        """Return items whose lease ran out (their run died or hung) to pending."""
        return self._write(lambda conn: _return_expired(conn, time.time()))

    # -- curation -------------------------------------------------------------------------------

    def reject(self, ids: Iterable[int], reason: str) -> int:
        """Reject open (pending or claimed) items so they never train; consumed history stays as it is."""
        if not reason or not reason.strip():
            raise ValueError("reject needs a reason, so that whoever requeues the item later knows why")
        return self._update(
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

        return self._write(work)

    def requeue(self, ids: Iterable[int] | None = None, state: Literal["rejected", "consumed"] = "rejected") -> int:
        """Put items in `state` back to pending: the given ids, or every item in that state when ids is None.

        Use it to undo a rejection, or to train again on consumed feedback (a run whose model was
        thrown away). The item keeps its id and received_at; claim, consumer and reason are cleared.
        One open item per image and label set still holds: among chosen twins only the newest comes
        back, and none does when an open item already carries that feedback. Items not in `state`
        are left alone. Leakage is not re-checked here: the retraining flow runs reject_leaked
        before every claim.
        """
        if state not in ("rejected", "consumed"):
            raise ValueError(
                f"requeue takes items that are 'rejected' or 'consumed', not {state!r}; "
                "claimed items go back with release() or release_expired()"
            )
        return self._update(
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

    def pending_count(self) -> int:
        return self._read(lambda conn: conn.execute("SELECT COUNT(*) FROM feedback WHERE state = 'pending'").fetchone()[0])

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

        return self._read(work)

    def list_items(self, state: State | None = None, limit: int = 100) -> list[FeedbackItem]:
        """The newest `limit` items (all states, or one), newest first, as an admin page shows them."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; use one of {', '.join(STATES)}")
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT * FROM feedback WHERE ?1 IS NULL OR state = ?1 ORDER BY id DESC LIMIT ?2", (state, limit)
            ).fetchall()
        )
        return [_item(row) for row in rows]

    # -- plumbing -------------------------------------------------------------------------------

    def _shard(self, sha: str) -> Path:
        return self.images_dir / sha[:2]

    def _enqueue(self, sha: str, labels: Iterable[str], model_version: str | None, note: str | None) -> AddResult:
        """Insert an item unless an open one has the same image and label set (checked in the same transaction)."""
        labels_json = json.dumps(normalize_labels(labels))

        def work(conn: sqlite3.Connection) -> AddResult:
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

        return self._write(work)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened on first use and then kept.

        Never shared across threads, and never used after a fork (keyed by pid; the parent's is left
        alone, closing it in the child could disturb the parent's locks). Kept open because closing
        the last connection to a WAL database checkpoints and deletes the WAL: ~10 ms per call.
        """
        by_pid = vars(self._local).setdefault("by_pid", {})
        if (conn := by_pid.get(os.getpid())) is None:
            conn = by_pid[os.getpid()] = sqlite3.connect(self.db_path, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _create_schema(self) -> None:
        """WAL lets readers run beside the writer; the mode is stored in the file, so setting it once suffices."""

        def work(conn: sqlite3.Connection) -> None:
            for statement in _SCHEMA.split(";"):  # executescript would COMMIT the IMMEDIATE transaction
                if statement.strip():
                    conn.execute(statement)

        _retry_locked(lambda: self._connection().execute("PRAGMA journal_mode = WAL"))
        self._write(work)

    def _transaction(self, begin: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` between `begin` and COMMIT; on any error roll back, so the kept connection stays clean."""
        conn = self._connection()
        conn.execute(begin)
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Reads share one snapshot (WAL: they never wait for the writer)."""
        return self._transaction("BEGIN", work)

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work` in one BEGIN IMMEDIATE transaction, retried as a whole while the database is locked.

        IMMEDIATE takes the write lock up front, so a read-then-write (merge check, claim) cannot be
        overtaken by another writer between its read and its write.
        """
        return _retry_locked(lambda: self._transaction("BEGIN IMMEDIATE", work))

    def _update(self, sql: str, args: tuple) -> int:
        return self._write(lambda conn: conn.execute(sql, args).rowcount)


def normalize_labels(labels: Iterable[str]) -> list[str]:
    """Strip, drop empties, deduplicate and sort, so equal label sets compare equal as JSON."""
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of class names, not the string {labels!r}")
    return sorted({label.strip() for label in labels if label.strip()})


def image_extension(image_bytes: bytes) -> str:
    """The file extension from the magic bytes; 'bin' when the content is no known image format."""
    for ext, signature in _MAGIC:
        if all(image_bytes[offset : offset + len(part)] == part for offset, part in signature):
            return ext
    return "bin"


def _checked_sha(sha: str) -> str:
    sha = sha.strip().lower()
    if not _SHA256.fullmatch(sha):
        raise ValueError(f"{sha!r} is not a sha256 hex digest (64 hexadecimal characters)")
    return sha


def _retry_locked(call: Callable[[], T]) -> T:
    """Retry `call` a bounded number of times on 'database is locked' / 'busy', with jittered backoff.

    busy_timeout already waits for most locks; this covers the cases where SQLite reports busy
    at once (e.g. while another connection recovers or checkpoints the WAL).
    """
    for attempt in range(WRITE_ATTEMPTS - 1):
        try:
            return call()
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))
    return call()


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


def _csv_rows(csv_path: Path) -> Iterable[tuple[int, str, list[str]] | ImportProblem]:
    """Yield (line, filename, labels) per data row, or the problem of a row that cannot be read.

    Rows are decoded one by one, so one bad row is reported instead of failing the whole file.
    """
    lines = csv_path.read_bytes().splitlines()
    header = lines[0].decode("utf-8-sig", errors="replace").strip().lower() if lines else ""
    if not header.startswith("filename"):
        raise ValueError(
            f"{csv_path}: the first line must be the header 'filename,labels', got {header!r}; an import needs {IMPORT_CSV_LAYOUT}"
        )
    for line, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            fields = next(csv.reader(io.StringIO(raw.decode("utf-8"))))
        except (UnicodeDecodeError, csv.Error) as err:
            yield ImportProblem(line, raw.split(b",")[0].decode("utf-8", "replace"), f"bad_csv_row: {err}")
            continue
        if len(fields) < 2 or not fields[0].strip():
            yield ImportProblem(line, fields[0] if fields else "", "bad_csv_row: expected 'filename,labels'")
            continue
        yield line, fields[0].strip(), fields[1].split("|")


def _read_image(directory: Path, filename: str) -> bytes:
    """The bytes of `directory/filename`; ValueError naming the reason when it cannot be imported."""
    path = directory / filename
    if not path.resolve().is_relative_to(directory.resolve()):
        raise ValueError("outside_directory: the path leaves the import directory")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"missing_file: {path} does not exist") from None
    except OSError as err:
        raise ValueError(f"unreadable_file: {err.strerror or err}") from None
    if image_extension(data) == "bin":
        raise ValueError("not_an_image: the content is no jpg, png, webp, bmp or gif")
    return data
