"""Difference hashes of stored images, computed once: the screen compares every pending correction
with every other correction of a near-identical photo, and re-reading every image ever received
before each retraining grew without bound. An image's content never changes under its sha256, so
its hash is stored with it in the queue's database (its own schema component) and read back.

Near-identical lookups use bands: 64 bits in `BANDS` slices, so two hashes at most `BANDS - 1`
bits apart agree exactly on at least one slice (pigeonhole) and only photos sharing a slice are
compared, not every pair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from sqlalchemy import Column, Connection, MetaData, String, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from multitag.data.images import difference_hash, hash_distance
from multitag.data.parallel import chunks
from multitag.feedback.database import IN_LIST_SIZE, Database

metadata = MetaData()
fingerprints = Table(
    "image_fingerprints",
    metadata,
    Column("image_sha256", String(64), primary_key=True),
    Column("dhash", String(16), nullable=False),  # 64 bits as hex: portable across SQLite and PostgreSQL
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS = (_create_v1,)


class FingerprintStore:
    """Each stored image's difference hash, computed on first need and kept beside the queue."""

    def __init__(self, database: Database):
        self.database = database
        database.migrate("fingerprints", MIGRATIONS)

    def of(self, shas: Iterable[str], image_path: Callable[[str], Path]) -> dict[str, int | None]:
        """{sha: hash} of the images, computing and storing only those never hashed; None for an
        image that is gone or unreadable (validation rejects it later, with its reason)."""
        wanted = sorted(set(shas))
        known = self._read(wanted)
        new = {sha: _hash(image_path, sha) for sha in wanted if sha not in known}
        self._write({sha: value for sha, value in new.items() if value is not None})
        return {**new, **known}

    def _read(self, shas: list[str]) -> dict[str, int]:
        def work(conn: Connection) -> dict[str, int]:
            query = select(fingerprints.c.image_sha256, fingerprints.c.dhash)
            rows = (
                row for chunk in chunks(shas, IN_LIST_SIZE) for row in conn.execute(query.where(fingerprints.c.image_sha256.in_(chunk)))
            )
            return {sha: int(value, 16) for sha, value in rows}

        return self.database.read(work)

    def _write(self, hashes: Mapping[str, int]) -> None:
        if not hashes:
            return
        dialect = postgresql if self.database.dialect == "postgresql" else sqlite
        rows = [{"image_sha256": sha, "dhash": f"{value:016x}"} for sha, value in hashes.items()]

        def work(conn: Connection) -> None:
            for chunk in chunks(rows, IN_LIST_SIZE):
                conn.execute(dialect.insert(fingerprints).values(chunk).on_conflict_do_nothing())

        self.database.write(work)


def _hash(image_path: Callable[[str], Path], sha: str) -> int | None:
    try:
        return difference_hash(image_path(sha))
    except (KeyError, OSError):
        return None


BANDS = 8  # 8 slices of 8 bits: any two hashes at most 7 bits apart share a slice


def near_pairs(hashes: Mapping[int, int | None], max_bits: int) -> dict[int, set[int]]:
    """{key: the other keys whose hash is at most `max_bits` apart} over `hashes` ({key: hash},
    None: unknown), comparing only keys that share a band (all pairs when `max_bits` is too wide
    for the bands to guarantee a shared one)."""
    known = {key: value for key, value in hashes.items() if value is not None}
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for key, value in known.items():
        for band in range(BANDS) if max_bits < BANDS else [0]:
            buckets[band, (value >> (8 * band)) & 0xFF if max_bits < BANDS else 0].append(key)
    near: dict[int, set[int]] = defaultdict(set)
    for keys in buckets.values():
        for a in keys:
            near[a].update(b for b in keys if b != a and hash_distance(known[a], known[b]) <= max_bits)
    return {key: others for key, others in near.items() if others}
