"""The queue's SQLite plumbing: one kept connection per thread and process, WAL mode, and write
transactions taken up front (`BEGIN IMMEDIATE`) and retried while another writer holds the lock,
so any number of API workers, CLI calls and retraining runs can share one file."""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

BUSY_TIMEOUT_MS = 10_000
WRITE_ATTEMPTS = 5

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]


class Database:
    """A SQLite file at `path` whose schema is created (idempotently) on open."""

    def __init__(self, path: Path, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._create(schema)

    def read(self, work: Work[T]) -> T:
        """Reads share one snapshot (WAL: they never wait for the writer)."""
        return self._transaction("BEGIN", work)

    def write(self, work: Work[T]) -> T:
        """Run `work` in one BEGIN IMMEDIATE transaction, retried as a whole while the database is locked.

        IMMEDIATE takes the write lock up front, so a read-then-write (merge check, claim) cannot be
        overtaken by another writer between its read and its write.
        """
        return retry_locked(lambda: self._transaction("BEGIN IMMEDIATE", work))

    def update(self, sql: str, args: tuple) -> int:
        """One write statement; the number of rows it changed."""
        return self.write(lambda conn: conn.execute(sql, args).rowcount)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened on first use and then kept.

        Never shared across threads, and never used after a fork (keyed by pid; the parent's is left
        alone, closing it in the child could disturb the parent's locks). Kept open because closing
        the last connection to a WAL database checkpoints and deletes the WAL: ~10 ms per call.
        """
        by_pid = vars(self._local).setdefault("by_pid", {})
        if (conn := by_pid.get(os.getpid())) is None:
            conn = by_pid[os.getpid()] = sqlite3.connect(self.path, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _create(self, schema: str) -> None:
        """WAL lets readers run beside the writer; the mode is stored in the file, so setting it once suffices."""

        def work(conn: sqlite3.Connection) -> None:
            for statement in schema.split(";"):  # executescript would COMMIT the IMMEDIATE transaction
                if statement.strip():
                    conn.execute(statement)

        retry_locked(lambda: self._connection().execute("PRAGMA journal_mode = WAL"))
        self.write(work)

    def _transaction(self, begin: str, work: Work[T]) -> T:
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


def retry_locked(call: Callable[[], T]) -> T:
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
