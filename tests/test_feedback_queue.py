"""Code tests of the feedback queue: merge semantics, concurrency, leases, crash recovery, imports."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pytest

from multitag.feedback.database import SchemaTooNew
from multitag.feedback.importer import import_dir
from multitag.feedback.queue import MIGRATIONS, ClaimLost, FeedbackQueue
from multitag.feedback.retention import GRACE_S, ImageRetention
from multitag.feedback.store import image_extension

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_png(number: int) -> bytes:
    """Distinct bytes per number that the queue stores as png (the queue never decodes pixels)."""
    return PNG_MAGIC + number.to_bytes(8, "big")


@pytest.fixture
def new_queue(queue_db: str, tmp_path: Path) -> Callable[..., FeedbackQueue]:
    """Opens this test's queue (a new handle on the same database and images each call)."""
    return lambda lease_seconds=3600: FeedbackQueue(queue_db, tmp_path / "images", lease_seconds=lease_seconds)


def add_many(db_url: str, images_dir: Path, numbers: list[int]) -> list[tuple[int, int, bool]]:
    """(number, id, merged) per add; module level so that spawned processes can run it."""
    queue = FeedbackQueue(db_url, images_dir)
    results = [queue.add(fake_png(n), ["cat", f"n{n % 7}"]) for n in numbers]
    return [(n, result.id, result.merged) for n, result in zip(numbers, results)]


def concurrent_jobs() -> list[int]:
    """1,000 distinct images plus 100 deliberate repeats (every tenth image again), shuffled."""
    jobs = list(range(1000)) + list(range(0, 1000, 10))
    random.Random(0).shuffle(jobs)
    return jobs


def check_none_lost_none_doubled(queue: FeedbackQueue, results: list[tuple[int, int, bool]]) -> None:
    assert len(results) == 1100
    assert queue.stats()["pending"] == 1000
    id_of: dict[int, set[int]] = {}
    for number, item_id, _ in results:
        id_of.setdefault(number, set()).add(item_id)
    assert all(len(ids) == 1 for ids in id_of.values()), "a repeated image got a second item"
    assert len({next(iter(ids)) for ids in id_of.values()}) == 1000
    assert sum(merged for _, _, merged in results) == 100


# -- adding and merging -------------------------------------------------------------------------


def test_add_stores_the_image_content_addressed(new_queue, tmp_path):
    queue = new_queue()
    data = fake_png(1)
    result = queue.add(data, ["dog"], model_version="3", note="was cat")
    sha = hashlib.sha256(data).hexdigest()
    assert result.image_sha256 == sha and not result.merged
    path = queue.images.path(sha)
    assert path == tmp_path / "images" / sha[:2] / f"{sha}.png"
    assert path.read_bytes() == data
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    (item,) = queue.list_items()
    assert asdict(item) | {"received_at": 0, "updated_at": 0} == {
        "id": result.id,
        "image_sha256": sha,
        "labels": ("dog",),
        "model_version": "3",
        "note": "was cat",
        "received_at": 0,
        "state": "pending",
        "claimed_by": None,
        "lease_expires_at": None,
        "consumed_by": None,
        "reason": None,
        "updated_at": 0,
        "origin": "upload",
        "client": None,
        "absent": None,
        "task": None,  # a handle opened for no task writes unassigned items
    }


def test_same_image_and_label_set_is_merged_while_open(new_queue, tmp_path):
    queue = new_queue()
    first = queue.add(fake_png(1), ["dog", "cat"])
    again = queue.add(fake_png(1), [" cat", "dog", "dog", ""])
    other_labels = queue.add(fake_png(1), ["cat"])
    assert again.id == first.id and again.merged
    assert other_labels.id != first.id and not other_labels.merged
    assert queue.list_items(limit=10)[-1].labels == ("cat", "dog")

    queue.claim("run-1")
    assert queue.add(fake_png(1), ["cat", "dog"]).id == first.id, "claimed items still merge"
    queue.ack("run-1", [first.id])
    after_consumed = queue.add(fake_png(1), ["cat", "dog"])
    assert after_consumed.id != first.id and not after_consumed.merged


def test_add_by_sha_needs_a_stored_image(new_queue, tmp_path):
    queue = new_queue()
    with pytest.raises(KeyError, match=r"images\.store"):
        queue.add_by_sha("ab" * 32, ["dog"])
    with pytest.raises(ValueError, match="sha256"):
        queue.add_by_sha("../../etc/passwd", ["dog"])
    sha = queue.images.store(b"\xff\xd8\xff\xe0jpeg bytes")
    assert queue.images.path(sha).suffix == ".jpg"
    result = queue.add_by_sha(sha.upper(), ["dog"])
    assert result.image_sha256 == sha and queue.pending_count() == 1


def test_labels_must_be_a_list_not_a_string(new_queue, tmp_path):
    with pytest.raises(TypeError, match="list of class names"):
        new_queue().add(fake_png(1), "dog")


@pytest.mark.parametrize(
    "data, ext",
    [
        (b"\xff\xd8\xff\xdb", "jpg"),
        (fake_png(0), "png"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "webp"),
        (b"BM\0\0", "bmp"),
        (b"GIF89a", "gif"),
        (b"RIFF\0\0\0\0WAVE", "bin"),
        (b"", "bin"),
    ],
)
def test_extension_comes_from_magic_bytes(data, ext):
    assert image_extension(data) == ext


# -- concurrent writers ---------------------------------------------------------------------------


def test_concurrent_threads_lose_nothing_and_double_nothing(new_queue, tmp_path):
    queue = new_queue()
    jobs = concurrent_jobs()
    with ThreadPoolExecutor(8) as pool:
        chunks = pool.map(lambda part: add_many(queue.url, queue.images.root, part), [jobs[i::8] for i in range(8)])
        results = [row for chunk in chunks for row in chunk]
    check_none_lost_none_doubled(queue, results)


def test_concurrent_processes_lose_nothing_and_double_nothing(new_queue, tmp_path):
    queue = new_queue()
    jobs = concurrent_jobs()
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pending = pool.starmap_async(add_many, [(queue.url, queue.images.root, jobs[i::4]) for i in range(4)])
        results = [row for chunk in pending.get(timeout=60) for row in chunk]
    check_none_lost_none_doubled(queue, results)


def test_concurrent_claimers_get_disjoint_sets_covering_all(new_queue, tmp_path):
    queue = new_queue()
    ids = {queue.add(fake_png(n), ["cat"]).id for n in range(200)}
    start = threading.Barrier(4)

    def claim_until_empty(run_id: str) -> list[int]:
        start.wait()
        claimed: list[int] = []
        while batch := queue.claim(run_id, limit=7):
            assert all(item.claimed_by == run_id and item.state == "claimed" for item in batch)
            claimed += [item.id for item in batch]
        return claimed

    with ThreadPoolExecutor(4) as pool:
        per_run = list(pool.map(claim_until_empty, [f"run-{i}" for i in range(4)]))
    everything = [item_id for claimed in per_run for item_id in claimed]
    assert len(everything) == len(set(everything)) == 200
    assert set(everything) == ids
    assert queue.stats()["claimed"] == 200


# -- leases, ack, release ---------------------------------------------------------------------------


def test_expired_leases_return_to_pending(new_queue, tmp_path):
    hasty = new_queue(lease_seconds=0.2)
    patient = new_queue()  # the same queue, claiming with an hour's lease: no timing race
    for n in range(5):
        hasty.add(fake_png(n), ["cat"])
    assert [item.id for item in hasty.claim("run-1", limit=3)] == [1, 2, 3]
    assert [item.id for item in patient.claim("run-2")] == [4, 5]
    time.sleep(0.3)
    assert hasty.release_expired() == 3, "only the expired leases go back"
    assert hasty.stats()["pending"] == 3 and hasty.stats()["claimed"] == 2

    hasty.claim("run-1", limit=2)
    time.sleep(0.3)
    retaken = patient.claim("run-3")
    assert [item.id for item in retaken] == [1, 2, 3], "claim first returns expired leases"
    with pytest.raises(ClaimLost, match=r"items \[1, 2\]"):
        hasty.ack("run-1", [1, 2])  # its lease was taken over
    assert {item.id for item in patient.claimed("run-3")} == {1, 2, 3}, "a failed ack leaves the new holder's items alone"


def test_killed_claimer_leaves_items_claimed_until_the_lease_ends(new_queue, tmp_path):
    queue = new_queue()
    for n in range(10):
        queue.add(fake_png(n), ["cat"])
    script = textwrap.dedent(f"""
        import sys, time
        from multitag.feedback.queue import FeedbackQueue
        items = FeedbackQueue({queue.url!r}, {str(queue.images.root)!r}, lease_seconds=0.5).claim("doomed")
        print(len(items), flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "10"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    stats = queue.stats()
    assert stats["claimed"] == 10 and stats["pending"] == 0
    leftovers = queue.list_items()
    assert all(item.claimed_by == "doomed" for item in leftovers)
    time.sleep(max(0.0, max(item.lease_expires_at for item in leftovers) - time.time()) + 0.05)
    assert sorted(item.id for item in queue.claim("survivor")) == list(range(1, 11))


def test_ack_touches_only_the_runs_own_items_and_release_returns_them(new_queue, tmp_path):
    queue = new_queue()
    for n in range(6):
        queue.add(fake_png(n), ["cat"])
    mine = [item.id for item in queue.claim("run-a", limit=3)]
    theirs = [item.id for item in queue.claim("run-b", limit=2)]
    with pytest.raises(ClaimLost, match=rf"items \[{theirs[0]}, {theirs[1]}, 6, 999\] \(2 others are consumed\)"):
        queue.ack("run-a", mine[:2] + theirs + [6, 999])
    assert queue.ack("run-a", mine[:2]) == 2, "acking again is harmless"
    consumed = queue.list_items("consumed")
    assert sorted(item.id for item in consumed) == mine[:2]
    assert all(item.consumed_by == "run-a" and item.lease_expires_at is None for item in consumed)
    assert queue.stats() | {"pending_labels": None} == {
        "pending": 1,
        "claimed": 3,
        "consumed": 2,
        "rejected": 0,
        "held": 0,
        "total": 6,
        "pending_labels": None,
    }

    assert queue.release("run-a") == 1
    assert queue.release("run-b") == 2
    assert queue.pending_count() == 4 and queue.stats()["claimed"] == 0
    assert all(item.claimed_by is None for item in queue.list_items("pending"))


def test_renew_extends_only_the_runs_own_leases(new_queue, tmp_path):
    queue = new_queue(lease_seconds=100)
    for n in range(3):
        queue.add(fake_png(n), ["cat"])
    queue.claim("run-a", limit=2)
    queue.claim("run-b")
    before = {item.id: item.lease_expires_at for item in queue.list_items("claimed")}
    time.sleep(0.05)
    assert queue.renew("run-a") == 2
    after = {item.id: item.lease_expires_at for item in queue.list_items("claimed")}
    assert after[1] > before[1] and after[2] > before[2] and after[3] == before[3]
    assert queue.renew("run-z") == 0


# -- curation -------------------------------------------------------------------------------------


def test_reject_leaked_marks_open_items_whose_image_is_in_the_test_split(new_queue, tmp_path):
    queue = new_queue()
    leaked = queue.add(fake_png(1), ["cat"])
    leaked_claimed = queue.add(fake_png(2), ["dog"])
    clean = queue.add(fake_png(3), ["cat"])
    queue.claim("run-1", limit=2)
    assert queue.reject_leaked({leaked.image_sha256, leaked_claimed.image_sha256.upper(), "f" * 64}) == [leaked.id, leaked_claimed.id]
    rejected = queue.list_items("rejected")
    assert {item.reason for item in rejected} == {"leakage"}
    assert all(item.claimed_by is None for item in rejected)
    with pytest.raises(ClaimLost):
        queue.ack("run-1", [leaked.id])  # a leaked item cannot be consumed
    assert [item.id for item in queue.claim("run-2")] == [clean.id]
    assert queue.reject_leaked(set()) == []


def test_a_correction_the_test_split_took_is_no_leak_when_it_is_pending_again(new_queue, tmp_path):
    """A run that froze a correction in test and then failed gives it back; the next run's leakage
    guard must not throw it away (it goes to test again), while a correction of a dataset's own test
    photo, or a partial labelling, is still rejected."""
    import pandas as pd

    from multitag.data.splits import frozen_from_corrections, write_frozen_test

    queue = new_queue()
    from_a_user = queue.add(fake_png(1), ["cat"])
    partial = queue.add(fake_png(2), ["cat"], absent=[])
    of_a_dataset_photo = queue.add(fake_png(3), ["dog"])
    frozen = pd.DataFrame(
        {
            "split": ["test"] * 3,
            "sha256": [from_a_user.image_sha256, partial.image_sha256, of_a_dataset_photo.image_sha256],
            "image_id": [f"feedback-{from_a_user.id}", f"feedback-{partial.id}", "2008_000123"],
        }
    )
    write_frozen_test(frozen, tmp_path / "frozen_test.json", "voc:photos")
    by_users = frozen_from_corrections(tmp_path / "frozen_test.json")
    assert by_users == {from_a_user.image_sha256, partial.image_sha256}
    assert queue.reject_leaked(set(frozen["sha256"]), by_users) == [partial.id, of_a_dataset_photo.id]
    assert [item.id for item in queue.list_items("pending")] == [from_a_user.id]


def test_retention_expires_stale_held_items_and_deletes_only_what_no_run_needs(new_queue, tmp_path):
    """Held items nobody released turn rejected, then rejected items and consumed ones a newer
    consumed correction replaced are deleted; the newest consumed correction of an image is training
    data and stays, as do open items; the images of deleted items then go with the image sweep."""
    queue = new_queue()
    held = queue.add(fake_png(1), ["cat"]).id
    queue.hold({held: "flood"})
    rejected = queue.add(fake_png(2), ["cat"]).id
    queue.reject([rejected], "wrong photo")
    consumed = []
    for labels in (["cat"], ["dog"]):  # the image corrected twice, each consumed by a run
        consumed.append(queue.add(fake_png(3), labels).id)
        queue.claim(f"run-{labels[0]}")
        queue.ack(f"run-{labels[0]}", consumed[-1:])
    pending = queue.add(fake_png(4), ["cat"]).id
    later = time.time() + 1

    assert queue.expire(held_before=None, decided_before=None) == {"held_expired": 0, "deleted": 0}, "None keeps everything"
    assert queue.expire(held_before=later, decided_before=None) == {"held_expired": 1, "deleted": 0}
    assert {i.id: i.reason for i in queue.list_items("rejected")} == {held: "held_expired", rejected: "wrong photo"}
    assert queue.expire(held_before=None, decided_before=later + 1) == {"held_expired": 0, "deleted": 3}
    assert {i.id: i.state for i in queue.list_items()} == {consumed[1]: "consumed", pending: "pending"}

    swept = ImageRetention(queue, max_age_s=0).sweep(now=later + GRACE_S + 1)
    assert sorted(swept) == sorted(hashlib.sha256(fake_png(n)).hexdigest() for n in (1, 2)), "unnamed images go, named ones stay"


def test_reject_requeue_stats_and_list(new_queue, tmp_path):
    queue = new_queue()
    ids = [queue.add(fake_png(n), labels).id for n, labels in enumerate([["cat"], ["cat", "dog"], ["dog"], ["cat"]])]
    with pytest.raises(ValueError, match="reason"):
        queue.reject(ids[:1], " ")
    assert queue.reject(ids[:2], "blurry") == 2
    assert queue.reject(ids[:2], "again") == 0, "only open items are rejected"
    assert queue.stats() == {
        "pending": 2,
        "claimed": 0,
        "consumed": 0,
        "rejected": 2,
        "held": 0,
        "total": 4,
        "pending_labels": {"cat": 1, "dog": 1},
    }
    assert [item.id for item in queue.list_items()] == ids[::-1]
    assert [item.reason for item in queue.list_items("rejected", limit=1)] == ["blurry"]
    with pytest.raises(ValueError, match="unknown state"):
        queue.list_items("done")

    duplicate = queue.add(fake_png(0), ["cat"])
    assert queue.requeue([ids[0]]) == 0, "an open item already carries that image and label set"
    assert queue.requeue() == 1 and queue.pending_count() == 4
    assert queue.list_items()[-2].reason is None
    queue.claim("run-1")
    queue.ack("run-1", [ids[1], duplicate.id])
    assert queue.requeue([ids[1]], state="consumed") == 1
    assert queue.list_items()[-2].consumed_by is None
    with pytest.raises(ValueError, match="release"):
        queue.requeue(state="claimed")


def test_requeue_brings_back_only_the_newest_of_twins(new_queue, tmp_path):
    queue = new_queue()
    older = queue.add(fake_png(1), ["cat"])
    queue.reject([older.id], "first look")
    newer = queue.add(fake_png(1), ["cat"])
    queue.reject([newer.id], "second look")
    assert queue.requeue() == 1
    assert [item.id for item in queue.list_items("pending")] == [newer.id]


def test_a_forked_child_opens_its_own_connection(queue_db, new_queue, tmp_path):
    """Forked in a fresh interpreter: a fork of the test process itself could inherit locks held
    by other tests' threads (a Prefect client's), which is not what this checks."""
    script = textwrap.dedent(f"""
        import multiprocessing, sys
        from multitag.feedback.queue import FeedbackQueue
        queue = FeedbackQueue({queue_db!r}, {str(tmp_path / "images")!r})
        queue.add({fake_png(0)!r}, ["cat"])  # this thread now holds a connection
        child = multiprocessing.get_context("fork").Process(target=queue.add, args=({fake_png(1)!r}, ["dog"]))
        child.start()
        child.join(timeout=30)
        sys.exit(child.exitcode)
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=60).returncode == 0
    assert new_queue().stats()["pending_labels"] == {"cat": 1, "dog": 1}


# -- import ---------------------------------------------------------------------------------------


def test_import_dir_reports_missing_files_and_bad_rows(new_queue, tmp_path):
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "a.png").write_bytes(fake_png(1))
    (folder / "b.png").write_bytes(fake_png(2))
    (folder / "notes.txt").write_text("not an image")
    (folder / "labels.csv").write_bytes(
        b"filename,labels\n"
        b"a.png,cat|dog\n"
        b"missing.png,cat\n"
        b"b.png\n"
        b"\xff\xfe.png,cat\n"
        b"\n"
        b"notes.txt,cat\n"
        b"../outside.png,cat\n"
        b"a.png,dog| cat\n"
        b"b.png,bird\n"
        b"b.png,\n"
        b"b.png, | \n"
    )
    (tmp_path / "outside.png").write_bytes(fake_png(3))
    queue = new_queue()
    report = import_dir(queue, folder)
    assert [(p.line, p.reason.split(":")[0]) for p in report.errors] == [
        (3, "missing_file"),
        (4, "bad_csv_row"),
        (5, "bad_csv_row"),
        (7, "not_an_image"),
        (8, "outside_directory"),
        (11, "no_labels"),
        (12, "no_labels"),
    ]
    assert [r.id for r in report.added] == [1, 2] and [r.id for r in report.merged] == [1]
    assert [item.labels for item in queue.list_items()] == [("bird",), ("cat", "dog")]


def test_import_dir_needs_its_csv(new_queue, tmp_path):
    queue = new_queue()
    with pytest.raises(FileNotFoundError, match="filename,labels"):
        import_dir(queue, tmp_path)
    (tmp_path / "other.csv").write_text("name,tags\nx.png,cat\n")
    with pytest.raises(ValueError, match="header"):
        import_dir(queue, tmp_path, tmp_path / "other.csv")


def test_a_correction_by_hash_never_names_an_image_the_sweep_deleted_meanwhile(new_queue):
    """The retention sweep deletes files inside a transaction holding the image lock exclusively; a
    by-hash correction that checked the file before waiting for that lock would then name a deleted image."""
    queue = new_queue()
    sha = queue.images.store(fake_png(7))
    sweep_holds_the_lock, deleted = threading.Event(), threading.Event()

    def sweep(conn) -> None:
        queue.database.lock_images(conn, exclusive=True)
        sweep_holds_the_lock.set()
        time.sleep(0.5)  # ... while the correction arrives and waits for it
        queue.images.path(sha).unlink()  # the sweep deletes the expired, unreferenced image
        deleted.set()

    sweeper = threading.Thread(target=queue.database.write, args=(sweep,))
    sweeper.start()
    assert sweep_holds_the_lock.wait(timeout=30)
    outcome = _try(lambda: queue.add_by_sha(sha, ["cat"]))
    sweeper.join(timeout=30)
    assert deleted.is_set() and isinstance(outcome, KeyError), outcome
    assert queue.stats()["total"] == 0


# -- schema versions ------------------------------------------------------------------------------

PRE_VERSIONED_SCHEMA = """
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image_sha256 TEXT NOT NULL, labels TEXT NOT NULL, model_version TEXT,
    note TEXT, received_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'consumed', 'rejected')),
    claimed_by TEXT, lease_expires_at REAL, consumed_by TEXT, reason TEXT, updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX feedback_open_once ON feedback (image_sha256, labels) WHERE state IN ('pending', 'claimed');
CREATE INDEX feedback_by_state ON feedback (state, id);
INSERT INTO feedback (image_sha256, labels, received_at, updated_at) VALUES ('{sha}', '["cat"]', 1.0, 1.0);
"""


def test_a_queue_written_before_schema_versions_opens_with_its_items(tmp_path):
    """The hand-written sqlite3 queue of earlier multitag releases: same table, no version table."""
    images = tmp_path / "images"
    sha = FeedbackQueue(tmp_path / "scratch.db", images).images.store(fake_png(1))
    with sqlite3.connect(tmp_path / "queue.db") as old:
        old.executescript(PRE_VERSIONED_SCHEMA.format(sha=sha))
    queue = FeedbackQueue(tmp_path / "queue.db", images)
    assert [(item.id, item.image_sha256, item.labels) for item in queue.claim("run-1")] == [(1, sha, ("cat",))]
    assert queue.add(fake_png(1), ["cat"]).merged, "the old file's unique index still merges"
    with sqlite3.connect(tmp_path / "queue.db") as conn:
        assert conn.execute("SELECT version FROM multitag_schema WHERE component = 'feedback'").fetchone() == (len(MIGRATIONS),)


def test_a_queue_from_a_newer_multitag_is_refused_not_misread(new_queue, queue_db):
    queue = new_queue()
    queue.add(fake_png(1), ["cat"])
    with queue.database.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE multitag_schema SET version = 99 WHERE component = 'feedback'")
    with pytest.raises(SchemaTooNew, match="version 99, newer than this multitag knows"):
        new_queue()


def test_a_replica_left_behind_by_a_rolling_upgrade_is_told_to_upgrade_not_a_database_error(new_queue, queue_db):
    """Another host's newer multitag migrated the queue while this one runs (its migration v4
    rebuilt the unique index this code's ON CONFLICT names): the failed write is re-checked
    against the schema version and refused with what to do, not a bare database error."""
    queue = new_queue()
    queue.add(fake_png(1), ["cat"])
    with queue.database.engine.begin() as conn:  # what a newer multitag's migration could do
        conn.exec_driver_sql("DROP INDEX feedback_open_once")
        conn.exec_driver_sql("UPDATE multitag_schema SET version = version + 1 WHERE component = 'feedback'")
    with pytest.raises(SchemaTooNew, match="another host upgraded it; upgrade this one's multitag"):
        queue.add(fake_png(2), ["cat"])


def _try(call):
    try:
        return call()
    except Exception as err:
        return err
