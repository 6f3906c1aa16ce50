"""The prediction log: every /predict answer (image hash, model version, labels, every score, time),
kept in the feedback queue's database for `serve.prediction_log_hours`.

It is what the learning loop reads (issue 13): which logged images are worth a human look, how a
challenger would have answered, and whether the served predictions drift. Recording an answer
never fails or delays a prediction beyond one insert: a failed write is logged and the answer
goes out anyway (serving/uploads.answer_uploads).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from sqlalchemy import Column, Connection, Float, Index, Integer, MetaData, String, Table, Text, delete, func, insert, inspect, select, text

from multitag.data.parallel import chunks
from multitag.feedback.database import IN_LIST_SIZE, Database

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER = "champion", "challenger"  # the `role` of a logged answer
# A stored photo re-scored by a newly served version, off the request path (serving/rescore.py): no
# user got it, so drift and the shadow report leave it out, but the review list ranks it.
RESCORED = "rescored"
SERVED_ROLES = (CHAMPION, RESCORED)  # a served version's own answers: to users, and re-scored photos

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_sha256", String(64), nullable=False),
    Column("model_name", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("labels", Text, nullable=False),  # JSON list: the classes at or above their thresholds
    Column("scores", Text, nullable=False),  # JSON object: every class's probability
    Column("predicted_at", Float, nullable=False),
    # Which alias answered: the champion (what the user got), the challenger scoring the same
    # image in shadow mode, off the response path, or the champion re-scoring a stored image (RESCORED).
    Column("role", String(16), nullable=False, server_default=CHAMPION),
    sqlite_autoincrement=True,
)
Index("predictions_by_time", predictions.c.predicted_at)
Index("predictions_by_image", predictions.c.image_sha256)


def _create_v1(conn: Connection) -> None:
    """Version 1: the predictions table and its indexes (today's shape: a fresh log gets `role` here)."""
    metadata.create_all(conn, checkfirst=True)


def _add_role_v2(conn: Connection) -> None:
    """Version 2: `role`, so shadow answers of the challenger sit beside the champion's. A log
    created by version 1 gets the column (every row it holds was a champion's answer)."""
    if "role" not in {column["name"] for column in inspect(conn).get_columns("predictions")}:
        conn.execute(text(f"ALTER TABLE predictions ADD COLUMN role VARCHAR(16) NOT NULL DEFAULT '{CHAMPION}'"))


MIGRATIONS = (_create_v1, _add_role_v2)


@dataclass(frozen=True)
class Answer:
    """One image's answer as the API gave it."""

    image_sha256: str
    labels: list[str]
    scores: dict[str, float]


@dataclass(frozen=True)
class LoggedPrediction:
    id: int
    image_sha256: str
    model_name: str
    model_version: str
    labels: tuple[str, ...]
    scores: dict[str, float]
    predicted_at: float
    role: str = CHAMPION


class PredictionLog:
    """Answers recorded in `database` (the queue's), each kept for `max_age_s` seconds."""

    def __init__(self, database: Database, max_age_s: float):
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive (a log that keeps nothing is no log), got {max_age_s}")
        self.database, self.max_age_s = database, float(max_age_s)
        database.migrate("predictions", MIGRATIONS)

    def record(self, model_name: str, model_version: str, answers: Iterable[Answer], now: float | None = None, role: str = CHAMPION) -> int:
        """Record one request's answers in one insert; how many rows it wrote."""
        at = time.time() if now is None else now
        rows = [
            {
                "image_sha256": answer.image_sha256,
                "model_name": model_name,
                "model_version": str(model_version),
                "labels": json.dumps(list(answer.labels)),
                "scores": json.dumps(answer.scores),
                "predicted_at": at,
                "role": role,
            }
            for answer in answers
        ]
        if rows:
            self.database.write(lambda conn: conn.execute(insert(predictions), rows))
        return len(rows)

    def record_logged(self, model_name: str, model_version: str, answers: Iterable[Answer], role: str = CHAMPION) -> None:
        """`record`, with a failure logged instead of raised: the user's prediction matters more than its log."""
        try:
            self.record(model_name, model_version, answers, role=role)
        except Exception:
            log.exception("recording a prediction of %s version %s failed; the answer was sent anyway", model_name, model_version)

    def recent(self, limit: int = 100, role: str | None = CHAMPION) -> list[LoggedPrediction]:
        """The newest `limit` logged answers of `role` (None: every role), newest first."""
        query = select(predictions).order_by(predictions.c.id.desc()).limit(limit)
        if role is not None:
            query = query.where(predictions.c.role == role)
        return [_logged(row) for row in self.database.read(lambda conn: conn.execute(query).all())]

    def shadow_pairs(
        self, model_name: str, challenger_version: str, champion_version: str | None = None, limit: int = 10_000
    ) -> list[tuple[LoggedPrediction, LoggedPrediction]]:
        """(champion, challenger) answers for the same image, one pair per image (an image sent often
        weighs once): for each of the newest `limit` images the challenger version scored in shadow
        mode, its newest answer and the newest answer of the champion (of `champion_version`; None:
        any version) logged before it, i.e. what the user was answered for that request."""
        of_model = predictions.c.model_name == model_name
        shadow = select(predictions).where(
            of_model, predictions.c.role == CHALLENGER, predictions.c.model_version == str(challenger_version)
        )
        served = select(predictions).where(of_model, predictions.c.role == CHAMPION)
        if champion_version is not None:
            served = served.where(predictions.c.model_version == str(champion_version))

        def work(conn: Connection) -> list[tuple[LoggedPrediction, LoggedPrediction]]:
            newest: dict[str, object] = {}
            for row in conn.execute(shadow.order_by(predictions.c.id.desc())):
                newest.setdefault(row.image_sha256, row)
                if len(newest) >= limit:
                    break
            hashes, answered = list(newest), {}
            for chunk in chunks(hashes, IN_LIST_SIZE):
                for row in conn.execute(served.where(predictions.c.image_sha256.in_(chunk)).order_by(predictions.c.id)):
                    if row.id < newest[row.image_sha256].id:  # ascending ids: the last one kept is the newest before
                        answered[row.image_sha256] = row
            return [(_logged(answered[sha]), _logged(newest[sha])) for sha in hashes if sha in answered]

        return self.database.read(work)

    def answered_since(
        self, model_name: str, model_version: str, since: float, limit: int, roles: Collection[str] = (CHAMPION,)
    ) -> list[LoggedPrediction]:
        """The newest `limit` answers of `roles` of one model version given at or after `since`, newest
        first: what users got (drift judges those) or, with SERVED_ROLES, re-scored photos too (what the
        review list ranks; thresholds belong to a version; images older than their retention are gone)."""
        query = (
            select(predictions)
            .where(
                predictions.c.role.in_(list(roles)),
                predictions.c.model_name == model_name,
                predictions.c.model_version == str(model_version),
                predictions.c.predicted_at >= since,
            )
            .order_by(predictions.c.id.desc())
            .limit(limit)
        )
        return [_logged(row) for row in self.database.read(lambda conn: conn.execute(query).all())]

    def unanswered_by(self, model_name: str, model_version: str, since: float, limit: int) -> list[str]:
        """Hashes of the images other versions of `model_name` answered (SERVED_ROLES) at or after
        `since` that `model_version` has not answered since then, newest first, at most `limit`:
        what a newly served version has to re-score for the review list (serving/rescore.py)."""
        served = (predictions.c.model_name == model_name, predictions.c.role.in_(SERVED_ROLES), predictions.c.predicted_at >= since)
        answered = select(predictions.c.image_sha256).where(*served, predictions.c.model_version == str(model_version))
        newest = func.max(predictions.c.id)
        query = (
            select(predictions.c.image_sha256)
            .where(*served, predictions.c.model_version != str(model_version), predictions.c.image_sha256.not_in(answered))
            .group_by(predictions.c.image_sha256)
            .order_by(newest.desc())
            .limit(limit)
        )
        return list(self.database.read(lambda conn: conn.scalars(query).all()))

    def latest_by_image(self, model_name: str, hashes: Iterable[str], role: str = CHALLENGER) -> dict[str, LoggedPrediction]:
        """The newest answer of `role` for each of `hashes` that has one (how the challenger saw those images)."""
        wanted = sorted(set(hashes))

        def work(conn: Connection) -> dict[str, LoggedPrediction]:
            latest: dict[str, LoggedPrediction] = {}
            for chunk in chunks(wanted, IN_LIST_SIZE):
                query = select(predictions).where(
                    predictions.c.model_name == model_name, predictions.c.role == role, predictions.c.image_sha256.in_(chunk)
                )
                latest.update((row.image_sha256, _logged(row)) for row in conn.execute(query.order_by(predictions.c.id)))
            return latest

        return self.database.read(work)

    def expire(self, now: float | None = None) -> int:
        """Delete the answers older than max_age_s; how many."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        return self.database.write(lambda conn: conn.execute(delete(predictions).where(predictions.c.predicted_at < cutoff)).rowcount)

    def expire_logged(self) -> None:
        """`expire`, with a failure logged instead of raised: the next sweep tries again."""
        try:
            if deleted := self.expire():
                log.info("deleted %d logged prediction(s) older than %g h", deleted, self.max_age_s / 3600)
        except Exception:
            log.exception("expiring logged predictions failed")


def _logged(row) -> LoggedPrediction:
    return LoggedPrediction(**{**row._asdict(), "labels": tuple(json.loads(row.labels)), "scores": json.loads(row.scores)})
