"""The feedback queue's table, its states and the steps that brought every older queue to it.

The schema lives apart from the queue's state machine (queue.py) because it changes on its own
schedule: a schema change appends a step to MIGRATIONS (database.py runs the missing ones, and
refuses a replica older than the database it meets), and the queue's modules (queue.py,
curation.py, queries.py) only read and write rows.
"""

from __future__ import annotations

from typing import Literal, get_args

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    text,
    update,
)
from sqlalchemy.schema import CreateTable

State = Literal["pending", "claimed", "consumed", "rejected", "held"]
STATES: tuple[State, ...] = get_args(State)
RequeueState = Literal["rejected", "consumed", "held"]
Origin = Literal["upload", "review", "import"]  # where a correction came from: a user's upload, the review list, a folder import
ORIGINS: tuple[Origin, ...] = get_args(Origin)
OPEN_STATES: tuple[State, ...] = ("pending", "claimed", "held")  # not decided yet: a held item awaits an admin
RELEASED = "released after review"  # the reason a held item returns to pending with: the screen does not hold it again

metadata = MetaData()
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_sha256", String(64), nullable=False),
    Column("labels", Text, nullable=False),  # a sorted JSON list: equal label sets are equal strings
    Column("model_version", Text),
    Column("note", Text),
    Column("received_at", Float, nullable=False),
    Column("state", String(16), CheckConstraint(f"state IN {STATES!r}", name="feedback_state"), nullable=False, server_default="pending"),
    Column("claimed_by", Text),
    Column("lease_expires_at", Float),
    Column("consumed_by", Text),
    Column("reason", Text),
    Column("updated_at", Float, nullable=False),
    Column("origin", String(16), nullable=False, server_default="upload"),
    Column("client", String(32)),  # a keyed hash of the sender's address (serving/routes.py): the screen's flood rule counts per client
    # Partial labels: JSON `null` (every class not in labels is absent) or a sorted JSON list of the
    # classes confirmed absent (every other class not in labels is unknown). Text, not SQL NULL, so
    # that the unique index below can compare it: NULLs never collide in a unique index.
    Column("absent", Text, nullable=False, server_default="null"),
    Column("task", Text),  # the registered model this correction is for; NULL: unassigned (written before tasks were recorded)
    sqlite_autoincrement=True,
)
IS_OPEN = feedback.c.state.in_(OPEN_STATES)
# Literal SQL, not parameters: PostgreSQL matches an ON CONFLICT target to a partial index only by its written predicate.
OPEN_PREDICATE = text(f"state IN {OPEN_STATES!r}")
# At most one open item per (image, label set, absent set): the database itself refuses doubles.
# Across tasks too: replicas of older multitag name this index in their ON CONFLICT, so it is not
# rebuilt with `task` (a second open twin of one image in another task is refused: OpenInAnotherTask).
OPEN_ONCE = Index(
    "feedback_open_once",
    feedback.c.image_sha256,
    feedback.c.labels,
    feedback.c.absent,
    unique=True,
    sqlite_where=OPEN_PREDICATE,
    postgresql_where=OPEN_PREDICATE,
)
Index("feedback_by_state", feedback.c.state, feedback.c.id)
BY_TASK = Index("feedback_by_task", feedback.c.task, feedback.c.state, feedback.c.id)
Index(
    "feedback_by_claim", feedback.c.claimed_by, sqlite_where=feedback.c.state == "claimed", postgresql_where=feedback.c.state == "claimed"
)


def of_task(table: Table, task: str | None):
    """The rows of `table` (the feedback table or an alias of it) that belong to `task` (None: unassigned)."""
    return table.c.task.is_(None) if task is None else table.c.task == task


def _create_v1(conn: Connection) -> None:
    """Version 1: the feedback table and its indexes; a queue from before the version table has them already."""
    metadata.create_all(conn, checkfirst=True)


def _add_origin_v2(conn: Connection) -> None:
    """Version 2: `origin`, so corrections asked for by the review list can be told from the others.
    A queue created by version 1 gets the column; its rows came from uploads, except those the
    importer wrote (its notes say `imported from ...`)."""
    if "origin" not in {column["name"] for column in inspect(conn).get_columns("feedback")}:
        conn.execute(text("ALTER TABLE feedback ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'upload'"))
        conn.execute(update(feedback).where(feedback.c.note.like("imported from %")).values(origin="import"))


def _add_held_and_client_v3(conn: Connection) -> None:
    """Version 3: the `held` state (the CHECK constraint `feedback_state` allows it, and a held item
    counts as open in `feedback_open_once`) and `client`, which the screen's flood rule counts.

    PostgreSQL drops and re-adds the named constraint and the index; SQLite cannot alter a CHECK
    constraint, so the table is rebuilt: a copy in today's shape takes every row (ids kept), replaces
    the old table, gets the indexes back, and the AUTOINCREMENT counter keeps its value so that no
    id is ever reused. Idempotent: a queue already in this shape (a fresh one) is left alone.
    """
    columns = {column["name"] for column in inspect(conn).get_columns("feedback")}
    checks = [check["sqltext"] for check in inspect(conn).get_check_constraints("feedback")]
    if "client" in columns and any("'held'" in check for check in checks):
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE feedback ADD COLUMN IF NOT EXISTS client VARCHAR(32)"))
        conn.execute(text("ALTER TABLE feedback DROP CONSTRAINT IF EXISTS feedback_state"))
        conn.execute(text(f"ALTER TABLE feedback ADD CONSTRAINT feedback_state CHECK (state IN {STATES!r})"))
        conn.execute(text("DROP INDEX IF EXISTS feedback_open_once"))
        conn.execute(text(f"CREATE UNIQUE INDEX feedback_open_once ON feedback (image_sha256, labels) WHERE {OPEN_PREDICATE}"))
        return
    counter = conn.scalar(text("SELECT max(seq) FROM sqlite_sequence WHERE name = 'feedback'")) or 0
    for index in feedback.indexes:
        conn.execute(text(f"DROP INDEX IF EXISTS {index.name}"))
    conn.execute(CreateTable(feedback.to_metadata(MetaData(), name="feedback_rebuilt")))
    kept = ", ".join(column.name for column in feedback.c if column.name in columns)
    conn.execute(text(f"INSERT INTO feedback_rebuilt ({kept}) SELECT {kept} FROM feedback"))
    conn.execute(text("DROP TABLE feedback"))
    conn.execute(text("ALTER TABLE feedback_rebuilt RENAME TO feedback"))
    counter = max(counter, conn.scalar(text("SELECT coalesce(max(id), 0) FROM feedback")))
    conn.execute(text("DELETE FROM sqlite_sequence WHERE name = 'feedback'"))
    conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('feedback', :counter)"), {"counter": counter})
    for index in feedback.indexes:
        index.create(conn)


def _add_absent(conn: Connection) -> None:
    """Partial labels: `absent` (JSON `null` on every existing row: it was labelled in full, every
    class not in its labels absent), and `feedback_open_once` with it, so that the same present
    labels with another absent set is another correction. Idempotent: SQLite's rebuild in version 3
    creates today's shape already."""
    if "absent" not in {column["name"] for column in inspect(conn).get_columns("feedback")}:
        conn.execute(text("ALTER TABLE feedback ADD COLUMN absent TEXT NOT NULL DEFAULT 'null'"))
    indexes = {index["name"]: index["column_names"] for index in inspect(conn).get_indexes("feedback")}
    if "absent" not in indexes.get(OPEN_ONCE.name, []):
        conn.execute(text(f"DROP INDEX IF EXISTS {OPEN_ONCE.name}"))
        OPEN_ONCE.create(conn)


def _add_task(conn: Connection) -> None:
    """Corrections belong to their task: `task` (NULL on every existing row: unassigned, since the
    queue cannot know which dataset an old correction was made for; an admin adopts them) and an
    index to read one task's items by state. Only added, never rebuilt: a replica still running the
    previous version keeps inserting (its rows are unassigned too) and its ON CONFLICT still finds
    `feedback_open_once`. Idempotent: SQLite's rebuild in version 3 creates today's shape already."""
    if "task" not in {column["name"] for column in inspect(conn).get_columns("feedback")}:
        conn.execute(text("ALTER TABLE feedback ADD COLUMN task TEXT"))
    if BY_TASK.name not in {index["name"] for index in inspect(conn).get_indexes("feedback")}:
        BY_TASK.create(conn)


# A schema change appends a step here (and freezes the earlier steps' DDL).
MIGRATIONS = (_create_v1, _add_origin_v2, _add_held_and_client_v3, _add_absent, _add_task)
