"""The feedback table as older multitag versions wrote it, for the tests that open such a queue
with today's code (its migrations must bring it up to date and keep its rows)."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, Float, Integer, MetaData, String, Table, Text


def version_1_table(metadata: MetaData) -> Table:
    """The feedback table as schema version 1 wrote it (no origin, no client, no `held`)."""
    return Table(
        "feedback",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("image_sha256", String(64), nullable=False),
        Column("labels", Text, nullable=False),
        Column("model_version", Text),
        Column("note", Text),
        Column("received_at", Float, nullable=False),
        Column(
            "state",
            String(16),
            CheckConstraint("state IN ('pending', 'claimed', 'consumed', 'rejected')", name="feedback_state"),
            nullable=False,
            server_default="pending",
        ),
        Column("claimed_by", Text),
        Column("lease_expires_at", Float),
        Column("consumed_by", Text),
        Column("reason", Text),
        Column("updated_at", Float, nullable=False),
        sqlite_autoincrement=True,
    )
