"""The queue's database plumbing on SQLAlchemy Core: one implementation for SQLite (the embedded
default) and PostgreSQL (when several hosts share the queue).

- SQLite runs in WAL mode, and every write is one `BEGIN IMMEDIATE` transaction retried while
  another writer holds the lock, so any number of API workers, CLI calls and retraining runs can
  share one file.
- PostgreSQL runs at READ COMMITTED; callers lock rows where they must (a claim uses
  `FOR UPDATE SKIP LOCKED`), and `lock_images` takes a transaction-level advisory lock where
  SQLite's single writer already serialises.
- The schema is versioned in a table of its own (`multitag_schema`), so a queue written by an
  older multitag opens safely (its migrations run once, under a lock) and one written by a newer
  multitag is refused instead of misread.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, create_engine, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from multitag.errors import MultitagError

BUSY_TIMEOUT_S = 10.0
IN_LIST_SIZE = 500  # ids or hashes per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
WRITE_ATTEMPTS = 5
_ADVISORY_KEYS = {"schema": 0x6D74_0001, "images": 0x6D74_0002}  # PostgreSQL advisory locks this module takes

T = TypeVar("T")
Work = Callable[[Connection], T]
Migration = Callable[[Connection], None]

_versions = Table(
    "multitag_schema",
    MetaData(),
    Column("component", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
)


class SchemaTooNew(MultitagError, RuntimeError):
    """The database was written by a newer multitag: reading it with this one could lose data."""


class Database:
    """A SQLAlchemy engine at `url` whose `component` schema is brought to the latest version on open.

    `migrations[i]` takes the schema from version i to i + 1; each runs once, in order, in one
    transaction with the version it reaches.
    """

    def __init__(self, url: str, component: str, migrations: Sequence[Migration]):
        self.url = url
        self.engine = _engine(url)
        self.dialect = self.engine.dialect.name
        self.known: dict[str, int] = {}  # component: the schema version this multitag writes
        self.migrate(component, migrations)

    def read(self, work: Work[T]) -> T:
        """Run `work` in one read transaction (SQLite WAL: never waits for the writer)."""
        try:
            with self.engine.connect() as conn, conn.begin():
                return work(conn)
        except DBAPIError as err:
            self.refuse_if_upgraded(err)
            raise

    def write(self, work: Work[T]) -> T:
        """Run `work` in one write transaction, retried as a whole while SQLite is locked.

        On SQLite the transaction takes the write lock up front (BEGIN IMMEDIATE), so a
        read-then-write (merge check, claim) cannot be overtaken by another writer between its
        read and its write; on PostgreSQL the statements lock the rows they need.
        """

        def attempt() -> T:
            with self.engine.connect().execution_options(multitag_write=True) as conn, conn.begin():
                return work(conn)

        try:
            return retry_locked(attempt)
        except DBAPIError as err:
            self.refuse_if_upgraded(err)
            raise

    def refuse_if_upgraded(self, err: DBAPIError) -> None:
        """SchemaTooNew when a statement failed because a newer multitag upgraded the schema since
        this process opened it (a rolling upgrade: the other replicas still run the old code),
        instead of the bare database error (an ON CONFLICT naming an index that was rebuilt)."""
        try:
            with self.engine.connect() as conn:
                stored = dict(conn.execute(select(_versions.c.component, _versions.c.version)).tuples().all())
        except DBAPIError:
            return  # the database itself is unreachable: the original error says so
        for component, known in self.known.items():
            if stored.get(component, 0) > known:
                raise SchemaTooNew(_too_new(self.engine, component, stored[component], known)) from err

    def lock_images(self, conn: Connection, exclusive: bool) -> None:
        """Order this transaction against the image sweep: shared for writers that name an image,
        exclusive for the sweep that deletes unreferenced ones; held until the transaction ends.

        SQLite needs nothing: its writers are serialised already.
        """
        if self.dialect == "postgresql":
            function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            conn.exec_driver_sql(f"SELECT {function}({_ADVISORY_KEYS['images']})")

    def dispose(self) -> None:
        """Close the pooled connections (tests, and processes that are done with the queue)."""
        self.engine.dispose()

    def migrate(self, component: str, migrations: Sequence[Migration]) -> None:
        """Bring `component`'s schema to len(migrations), once, even with several processes opening it
        at once; components (the queue, the prediction log) share the database and version separately."""

        def work(conn: Connection) -> None:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_KEYS['schema']})")
            _versions.create(conn, checkfirst=True)
            version = conn.scalar(select(_versions.c.version).where(_versions.c.component == component))
            if version is not None and version > len(migrations):
                raise SchemaTooNew(_too_new(self.engine, component, version, len(migrations)))
            for step in migrations[version or 0 :]:
                step(conn)
            if version is None:
                conn.execute(insert(_versions).values(component=component, version=len(migrations)))
            elif version < len(migrations):
                conn.execute(update(_versions).where(_versions.c.component == component).values(version=len(migrations)))

        self.write(work)
        self.known[component] = len(migrations)


def _too_new(engine: Engine, component: str, version: int, known: int) -> str:
    return (
        f"the {component} schema at {engine.url.render_as_string(hide_password=True)} is version {version}, newer than this "
        f"multitag knows ({known}): another host upgraded it; upgrade this one's multitag (and restart it) instead of using it"
    )


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (its folder is created: the embedded default needs no setup)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _engine(url: str) -> Engine:
    """An engine per queue; after a fork the child drops (without closing) the parent's pooled connections."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connected)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    alive = weakref.ref(engine)  # the hook must not keep every engine ever made alive
    os.register_at_fork(after_in_child=lambda: (child := alive()) and child.dispose(close=False))
    return engine


def _sqlite_connected(dbapi_connection, _record) -> None:
    """WAL lets readers run beside the writer; the driver's own transaction handling is switched
    off so that `_sqlite_begin` decides how each transaction begins."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    retry_locked(lambda: cursor.execute("PRAGMA journal_mode = WAL"))
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("multitag_write") else "BEGIN")


def retry_locked(call: Callable[[], T]) -> T:
    """Retry `call` a bounded number of times on SQLite's 'database is locked' / 'busy', with jittered backoff.

    The busy timeout already waits for most locks; this covers the cases where SQLite reports busy
    at once (e.g. while another connection recovers or checkpoints the WAL).
    """
    for attempt in range(WRITE_ATTEMPTS - 1):
        try:
            return call()
        except (DBAPIError, sqlite3.OperationalError) as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            time.sleep(0.05 * 2**attempt * (1 + random.random()))
    return call()
