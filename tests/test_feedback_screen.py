"""Code tests of the screen before each claim (multitag/feedback/screen.py): each rule flags what it
should and leaves clean corrections alone, held items never reach training, and a version-1 or
version-2 queue gains the `held` state and the `client` column with its rows and ids intact."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from queue_shapes import version_1_table
from sqlalchemy import MetaData, create_engine, text

from multitag.config import RetrainParams
from multitag.data.images import difference_hash
from multitag.feedback import retraining
from multitag.feedback.predictions import Answer, PredictionLog
from multitag.feedback.queue import MIGRATIONS, RELEASED, FeedbackQueue
from multitag.feedback.screen import (
    Correction,
    client_hash,
    contradictions,
    flooding,
    label_issues,
    relabels,
    screen_queue,
    verdicts,
)

CLASSES = ["cat", "dog", "person"]
SETTINGS = RetrainParams(screen_min_batch=50, screen_confidence=0.9, flood_max_items=5, flood_max_share=0.25, near_duplicate_bits=6)


def photo(seed: int, size: int = 64) -> bytes:
    """A distinct real PNG per seed (smooth random blobs, so that a resized copy keeps its difference hash)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scores(cat: float, dog: float, person: float) -> np.ndarray:
    return np.array([cat, dog, person])


def item(item_id: int, labels: set[str], p: np.ndarray | None = None, client: str | None = None, sha: str = "", fp: int | None = None):
    return Correction(item_id, sha or f"{item_id:064x}", frozenset(labels), client, p, fp)


# -- the rules ------------------------------------------------------------------------------------


def test_a_client_flooding_the_queue_is_held_and_busy_clients_among_many_are_not():
    flood = [item(i, {"dog"}, client="bot") for i in range(15)]
    crowd = [item(100 + i, {"cat"}, client=f"user{i % 10}") for i in range(30)]  # 3 each
    operator = [item(200 + i, {"cat"}) for i in range(20)]  # imports and admin uploads: no client
    reasons = flooding(flood + crowd + operator, SETTINGS)
    assert set(reasons) == set(range(15))
    assert "client bot sent 15 of the 45 pending corrections from users" in reasons[0]
    # the same 15 items are no flood where they are a small share of a busy queue
    many = [item(300 + i, {"cat"}, client=f"u{i}") for i in range(60)]
    assert flooding(flood + many, SETTINGS) == {}
    assert flooding(flood[:5] + crowd[:5], SETTINGS) == {}, "a keen user of a quiet deployment"


def test_a_few_equally_busy_clients_are_a_team_not_a_flood():
    team = [item(100 * c + i, {"dog"}, client=f"user-{c}") for c in range(3) for i in range(12)]  # each over 5 items and 25 %
    assert flooding(team, SETTINGS) == {}, "no client stands out from the others"
    bot = [item(1000 + i, {"dog"}, client="bot") for i in range(40)]
    assert set(flooding(team + bot, SETTINGS)) == {item.id for item in bot}, "40 is over 3x the others' median of 12"


def test_one_user_or_a_small_team_is_never_held_for_volume_alone_with_the_default_settings():
    defaults = RetrainParams()
    photographer = [item(i, {"dog"}, client="me") for i in range(288)]  # a library corrected from one browser
    assert flooding(photographer, defaults) == {}
    team = photographer + [item(1000 + i, {"cat"}, client=f"colleague{c}") for c in range(2) for i in range(3)]
    assert flooding(team, defaults) == {}, "two colleagues sending a few are no crowd to stand out from"
    crowd = team + [item(2000 + i, {"cat"}, client="colleague2") for i in range(3)]
    assert set(flooding(crowd, defaults)) == set(range(288)), "among three other clients, 288 against their 3 each is a flood"


def test_a_label_contradicting_a_confident_model_and_every_other_correction_is_held():
    cat_photo = scores(0.97, 0.02, 0.05)
    others = [item(1, {"cat"}, client="a", sha="s" * 64), item(2, {"cat"}, client="b", sha="s" * 64)]
    wrong = item(10, {"dog"}, cat_photo, client="c", sha="s" * 64)
    right = item(11, {"cat"}, cat_photo, client="d", sha="s" * 64)
    reasons = contradictions([wrong, right], others, CLASSES, SETTINGS)
    assert set(reasons) == {10}
    assert "'cat' missing but the model scored it 0.97" in reasons[10] and "all 3 other correction(s)" in reasons[10]


def test_no_contradiction_without_both_a_confident_model_and_unanimous_other_corrections():
    sha = "s" * 64
    agreeing_peer = [item(1, {"cat"}, client="a", sha=sha), item(2, {"dog"}, client="b", sha=sha)]
    assert contradictions([item(10, {"dog"}, scores(0.97, 0.02, 0.05), "c", sha)], agreeing_peer, CLASSES, SETTINGS) == {}
    unsure_model = item(10, {"dog"}, scores(0.7, 0.3, 0.05), "c", sha)
    assert contradictions([unsure_model], [item(1, {"cat"}, client="a", sha=sha)], CLASSES, SETTINGS) == {}
    alone = item(10, {"dog"}, scores(0.97, 0.02, 0.05), "c", sha)
    assert contradictions([alone], [], CLASSES, SETTINGS) == {}, "no other correction: nothing to contradict"
    own_echo = [item(1, {"dog"}, client="c", sha=sha), item(2, {"cat"}, client="a", sha=sha)]
    assert set(contradictions([alone], own_echo, CLASSES, SETTINGS)) == {10}, "a client's own twin does not vouch for it"


def test_blank_boxes_of_partial_corrections_neither_contradict_nor_vouch():
    from dataclasses import replace

    sha = "s" * 64
    cat_photo = scores(0.97, 0.02, 0.05)
    # peers that ticked dog and left cat blank say nothing about cat: not a unanimous "no cat"
    blank_peers = [replace(item(1, {"dog"}, client="a", sha=sha), absent=frozenset()), item(2, {"cat"}, client="b", sha=sha)]
    assert contradictions([item(10, {"cat"}, cat_photo, "c", sha)], blank_peers, CLASSES, SETTINGS) == {}
    # an item that left cat blank itself is not held for "missing" cat
    cat_and_dog, peer = scores(0.97, 0.5, 0.05), [item(1, {"cat", "dog"}, client="a", sha=sha)]
    blank_item = replace(item(10, {"dog"}, cat_and_dog, "c", sha), absent=frozenset())
    assert contradictions([blank_item], peer, CLASSES, SETTINGS) == {}
    labelled_in_full = item(10, {"dog"}, cat_and_dog, "c", sha)
    assert set(contradictions([labelled_in_full], peer, CLASSES, SETTINGS)) == {10}, "in full, no cat is a claim"


def test_near_identical_photos_count_as_the_same_image_and_different_ones_do_not(tmp_path):
    paths = {}
    for name, data in {"original": photo(1), "resized": photo(1, size=48), "other": photo(2)}.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(data)
    original, resized, other = (difference_hash(paths[name]) for name in ("original", "resized", "other"))
    assert (original ^ resized).bit_count() <= SETTINGS.near_duplicate_bits < (original ^ other).bit_count()
    peer = item(1, {"cat"}, client="a", fp=resized)
    stranger = item(2, {"cat"}, client="b", fp=other)
    wrong = item(10, {"dog"}, scores(0.97, 0.02, 0.05), "c", fp=original)
    assert set(contradictions([wrong], [peer], CLASSES, SETTINGS)) == {10}
    assert contradictions([wrong], [stranger], CLASSES, SETTINGS) == {}


def test_a_small_batch_holds_confident_disagreements_only():
    batch = [
        item(1, {"cat"}, scores(0.95, 0.05, 0.1)),  # agrees
        item(2, {"cat", "person"}, scores(0.9, 0.1, 0.4)),  # the model missed a person: an ordinary correction
        item(3, {"dog"}, scores(0.03, 0.004, 0.1)),  # a dog the model is all but sure is absent
        item(4, {"cat"}, scores(0.9, 0.05, 0.996)),  # a person it is all but sure of, dropped
        item(6, {"cat"}, scores(0.9, 0.05, 0.96)),  # a person it is fairly sure of: users correct such mistakes
        item(5, {"dog"}),  # no out-of-sample score: not judged here
    ]
    reasons = label_issues(batch, CLASSES, SETTINGS)
    assert set(reasons) == {3, 4}
    assert reasons[3].startswith("label issue (confident model disagrees): 'dog' given but the model scored it 0.00")
    assert "'person' missing but the model scored it 1.00" in reasons[4]


def test_a_large_batch_finds_flipped_labels_by_confident_learning():
    rng = np.random.default_rng(0)
    truth = rng.random((300, 3)) < [0.4, 0.3, 0.5]
    truth[~truth.any(axis=1), 0] = True
    probs = np.clip(np.where(truth, rng.normal(0.8, 0.12, truth.shape), rng.normal(0.15, 0.1, truth.shape)), 0.01, 0.99)
    given = truth.copy()
    flipped = set(rng.choice(300, 30, replace=False).tolist())
    for row in flipped:
        given[row, rng.integers(3)] ^= True
    batch = [item(i, {c for c, on in zip(CLASSES, row) if on}, probs[i]) for i, row in enumerate(given)]
    every_issue = SETTINGS.model_copy(update={"screen_noise_fraction": 1.0})
    reasons = label_issues(batch, CLASSES, every_issue)
    found = set(reasons)
    assert all(reasons[i].startswith("label issue (confident learning)") for i in found)
    # cleanlab's default (prune by the estimated noise rate) favours precision: measured 22-26 of 30 found, 0-4 false alarms
    assert len(found & flipped) >= 0.7 * len(flipped), "recall"
    assert len(found & flipped) >= 0.9 * len(found), "precision"
    likeliest = set(label_issues(batch, CLASSES, SETTINGS.model_copy(update={"screen_noise_fraction": 0.3})))
    assert likeliest < found and len(likeliest & flipped) == len(likeliest), "a smaller fraction holds the likeliest issues only"


def test_verdicts_join_every_rule_and_leave_clean_items_out():
    sha = "s" * 64
    batch = [item(i, {"dog"}, scores(0.997, 0.002, 0.05), "bot", sha if i == 0 else "") for i in range(6)]
    batch += [item(50 + i, {"cat"}, scores(0.997, 0.002, 0.05), f"user{i}") for i in range(5)]
    reasons = verdicts(batch, [item(1000, {"cat"}, client="a", sha=sha)], CLASSES, SETTINGS)
    assert set(reasons) == set(range(6))
    assert reasons[0].split("; ")[0].startswith("flood") and "contradiction" in reasons[0] and "label issue" in reasons[0]


def test_relabelling_another_clients_trained_photo_is_held_unless_the_model_or_a_third_client_agrees():
    sha = "ab" * 32
    trained = {sha: item(1, {"cat"}, client="alice", sha=sha)}  # consumed: the model learned 'cat'
    hostile = item(10, {"dog"}, client="mallory", sha=sha)
    held = relabels([hostile], trained, [], CLASSES, {})
    assert "relabels a photo already trained on ('cat' removed, 'dog' added)" in held[10]
    assert relabels([hostile], trained, [], CLASSES, {sha: scores(0.2, 0.8, 0.1)}) == {}, "the model agrees with the change"
    third = item(11, {"dog"}, client="carol", sha=sha)
    assert relabels([hostile], trained, [third], CLASSES, {}) == {}, "another client says the same"
    assert relabels([hostile], trained, [item(12, {"dog"}, client="mallory", sha=sha)], CLASSES, {}) != {}, "not the same client twice"
    assert relabels([item(13, {"dog"}, client="alice", sha=sha)], trained, [], CLASSES, {}) == {}, "alice fixing her own label"
    assert relabels([item(14, {"cat"}, client="mallory", sha=sha)], trained, [], CLASSES, {}) == {}, "the same labels: no change"


def test_client_hashes_are_stable_keyed_and_hide_the_address(monkeypatch):
    assert client_hash(None) is None
    plain = client_hash("203.0.113.7")
    assert plain == client_hash("203.0.113.7") != client_hash("203.0.113.8") and "203" not in plain and len(plain) == 32
    monkeypatch.setenv("MULTITAG_CLIENT_SALT", "a secret every replica shares")
    assert client_hash("203.0.113.7") != plain


# -- the queue: held items never train ------------------------------------------------------------


@pytest.fixture
def queue(queue_db: str, tmp_path: Path) -> FeedbackQueue:
    return FeedbackQueue(queue_db, tmp_path / "images")


def test_held_items_are_never_claimed_nor_exported_until_released(queue, tmp_path):
    log = PredictionLog(queue.database, max_age_s=1e9)
    cat_photo = {"cat": 0.997, "dog": 0.002, "person": 0.05}
    added = [queue.add(photo(i), ["cat"], client=f"user{i}") for i in range(4)]
    slipped = queue.add(photo(10), ["dog"], client="user10")  # a cat photo labelled dog
    log.record("m", "1", [Answer(a.image_sha256, ["cat"], cat_photo) for a in [*added, slipped]])
    unlogged = queue.add(photo(11), ["person"], client="user11")  # no logged answer: the champion scores the stored image
    scored = []

    def champion(paths):
        scored.extend(paths)
        return {sha: {"cat": 0.01, "dog": 0.01, "person": 0.99} for sha in paths}

    held = screen_queue(queue, CLASSES, SETTINGS, log, "m", champion)
    assert set(held) == {slipped.id} and "'dog' given but the model scored it 0.00" in held[slipped.id]
    assert scored == [unlogged.image_sha256], "only the image without a logged answer is scored again"
    (listed,) = queue.list_items("held")
    assert (listed.id, listed.reason) == (slipped.id, held[slipped.id])

    claimed = queue.claim("run-1")
    assert slipped.id not in {i.id for i in claimed} and len(claimed) == 5
    export = tmp_path / "export"
    written = retraining.export_feedback(queue, claimed, export, owner="run-1")
    assert slipped.id not in {i.id for i in written}
    assert "fb" + str(slipped.id) + "." not in (export / "labels.csv").read_text()
    queue.ack("run-1", [i.id for i in claimed])
    assert queue.claim("run-2") == [] and queue.list_items("held")[0].id == slipped.id
    assert slipped.id not in {i.id for i in retraining.export_feedback(queue, [], export)}
    assert queue.add(photo(10), ["dog"]).merged, "the same correction again joins the held item (held is open)"

    assert queue.requeue([slipped.id], "held") == 1  # an admin looked and releases it
    (released,) = queue.list_items("pending")
    assert released.reason == RELEASED
    assert screen_queue(queue, CLASSES, SETTINGS, log, "m", champion) == {}, "a released item is not held again"
    assert [i.id for i in queue.claim("run-3")] == [slipped.id]


def test_the_screen_holds_a_relabelling_of_a_photo_the_model_trained_on(queue):
    """Through the queue: alice's 'cat' was consumed (trained); mallory's 'dog' for the same photo
    would replace it in every later export. The champion, scoring the stored image, still says cat."""
    trained = queue.add(photo(1), ["cat"], client="alice")
    queue.claim("run-1")
    queue.ack("run-1", [trained.id])
    hostile = queue.add(photo(1), ["dog"], client="mallory")
    fixed = queue.add(photo(2), ["dog"], client="bob")  # an ordinary new correction

    def champion(paths):
        return {sha: {"cat": 0.9, "dog": 0.1, "person": 0.1} for sha in paths}

    held = screen_queue(queue, CLASSES, SETTINGS, None, "m", champion)
    assert list(held) == [hostile.id] and "relabels a photo already trained on" in held[hostile.id]
    assert fixed.id not in held


def test_an_admin_can_reject_a_held_item(queue):
    result = queue.add(photo(1), ["dog"])
    assert queue.hold({result.id: "flood: test"}) == 1
    assert queue.hold({result.id: "again"}) == 0, "only pending items are held"
    assert queue.reject([result.id], "wrong label") == 1
    (rejected,) = queue.list_items("rejected")
    assert rejected.reason == "wrong label" and queue.claim("run") == []


# -- the migration --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_queue_gains_the_held_state_and_client_column_with_its_rows(queue_db, tmp_path, version):
    images = tmp_path / "images"
    shas = [FeedbackQueue(f"sqlite:///{tmp_path / 'scratch.db'}", images).images.store(photo(i)) for i in range(3)]
    engine = create_engine(queue_db)
    metadata = MetaData()
    table = version_1_table(metadata)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(text("CREATE TABLE multitag_schema (component VARCHAR(64) PRIMARY KEY, version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO multitag_schema VALUES ('feedback', :v)"), {"v": version})
        if version == 2:
            conn.execute(text("ALTER TABLE feedback ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'upload'"))
        conn.execute(
            text("CREATE UNIQUE INDEX feedback_open_once ON feedback (image_sha256, labels) WHERE state IN ('pending', 'claimed')")
        )
        rows = [("pending", '["cat"]'), ("consumed", '["dog"]'), ("rejected", '["cat"]')]
        for sha, (state, labels) in zip(shas, rows):
            conn.execute(table.insert().values(image_sha256=sha, labels=labels, state=state, received_at=1.0, updated_at=1.0))
        conn.execute(table.insert().values(image_sha256="f" * 64, labels="[]", state="rejected", received_at=1.0, updated_at=1.0))
        conn.execute(text("DELETE FROM feedback WHERE image_sha256 = :sha"), {"sha": "f" * 64})  # the highest id is gone ...
    engine.dispose()

    queue = FeedbackQueue(queue_db, images)
    assert [(i.id, i.state, i.labels, i.client) for i in sorted(queue.list_items(), key=lambda i: i.id)] == [
        (1, "pending", ("cat",), None),
        (2, "consumed", ("dog",), None),
        (3, "rejected", ("cat",), None),
    ]
    assert queue.add(photo(9), ["cat"], client="c1").id == 5, "... and its id is not reused"
    assert queue.hold({1: "label issue: test"}) == 1 and queue.list_items("held")[0].id == 1
    assert queue.add(photo(0), ["cat"]).merged, "the rebuilt unique index counts a held item as open"
    with queue.database.engine.connect() as conn:
        assert conn.scalar(text("SELECT version FROM multitag_schema WHERE component = 'feedback'")) == len(MIGRATIONS)
    FeedbackQueue(queue_db, images)  # opening again changes nothing
    assert len(queue.list_items()) == 4


def test_a_pre_versioned_sqlite_queue_is_rebuilt_too(tmp_path):
    db = tmp_path / "queue.db"
    with sqlite3.connect(db) as old:
        old.executescript(
            """CREATE TABLE feedback (
                id INTEGER PRIMARY KEY AUTOINCREMENT, image_sha256 TEXT NOT NULL, labels TEXT NOT NULL, model_version TEXT,
                note TEXT, received_at REAL NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'claimed', 'consumed', 'rejected')),
                claimed_by TEXT, lease_expires_at REAL, consumed_by TEXT, reason TEXT, updated_at REAL NOT NULL);
            INSERT INTO feedback (image_sha256, labels, received_at, updated_at) VALUES ('x', '["cat"]', 1.0, 1.0);"""
        )
    queue = FeedbackQueue(db, tmp_path / "images")
    assert queue.hold({1: "test"}) == 1
    assert [(i.id, i.state, i.origin) for i in queue.list_items()] == [(1, "held", "upload")]


# -- the nightly flow's task ----------------------------------------------------------------------


def project_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A params file whose dataset names CLASSES and whose queue and registry live under tmp_path."""
    import yaml

    data = tmp_path / "data" / "own"
    data.mkdir(parents=True)
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (data / "labels.csv").write_text("filename,labels\nmissing.png,cat\n")
    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    settings["data"].update(source="csv", path=str(data))
    settings["registry"]["model_name"] = "screened"
    settings["feedback"].update(db_path=str(tmp_path / "queue.db"), images_dir=str(tmp_path / "images"))
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return params_path


def test_the_nightly_screen_task_holds_what_the_rules_flag_and_can_be_switched_off(tmp_path, monkeypatch):
    """tasks.feedback.screen as the flow calls it: the project's params, queue and prediction log."""
    import yaml

    from multitag.config import load_params
    from tasks.context import RunContext
    from tasks.feedback import screen as screen_task

    params_path = project_params(tmp_path, monkeypatch)
    queue = retraining.open_queue(load_params(params_path))
    log = PredictionLog(queue.database, max_age_s=1e9)
    added = [queue.add(photo(i), ["cat"], client=f"user{i}") for i in range(3)] + [queue.add(photo(9), ["dog"], client="user9")]
    log.record("screened", "1", [Answer(a.image_sha256, ["cat"], {"cat": 0.998, "dog": 0.002, "person": 0.1}) for a in added])

    off = yaml.safe_load(params_path.read_text())
    off["retrain"]["screen"] = False
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(off))
    assert screen_task.fn(RunContext(tmp_path / "off.yaml")) == {}
    held = screen_task.fn(RunContext(params_path))
    assert list(held) == [added[-1].id] and [i.id for i in queue.list_items("held")] == [added[-1].id]


def test_the_cli_lists_held_items_with_their_reason_and_releases_or_rejects_them(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from multitag import cli as cli_module
    from multitag.cli import app
    from multitag.config import load_params

    monkeypatch.setattr(cli_module.out, "width", 300)  # a row per item, however wide
    params_path = project_params(tmp_path, monkeypatch)
    queue = retraining.open_queue(load_params(params_path))
    first, second = (queue.add(photo(n), ["dog"]).id for n in (1, 2))
    queue.hold({first: "flood: client abc", second: "contradiction: test"})

    def cli(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--params", str(params_path)], terminal_width=200)
        assert result.exit_code == 0, result.output
        return result.output

    listed = cli("feedback", "list", "--state", "held")
    assert "flood: client abc" in listed and "contradiction: test" in listed
    assert "1 items back to pending" in cli("feedback", "requeue", str(first), "--state", "held")
    assert "1 items rejected" in cli("feedback", "reject", str(second), "--reason", "a reviewer found it wrong")
    assert [(i.id, i.state, i.reason) for i in queue.list_items()] == [
        (second, "rejected", "a reviewer found it wrong"),
        (first, "pending", RELEASED),
    ]


def test_the_api_records_a_keyed_hash_of_the_sender_never_its_address(tiny_server):
    import httpx

    response = httpx.post(f"{tiny_server.url}/feedback", data={"labels": "person"}, files={"file": ("p.png", photo(77), "image/png")})
    assert response.status_code == 202, response.text
    queue = tiny_server.app.state.services.queue
    (item,) = [i for i in queue.list_items() if i.id == response.json()["id"]]
    assert item.client == client_hash("127.0.0.1") and "127.0.0.1" not in item.client
    queue.hold({item.id: "test"})
    assert httpx.get(f"{tiny_server.url}/feedback/stats").json()["held"] == 1


def test_fingerprints_are_computed_once_per_image_and_kept_in_the_queue(queue, tmp_path):
    """Each retraining once re-read every image ever received to hash it again."""
    from multitag.feedback.fingerprints import FingerprintStore

    added = [queue.add(photo(i), ["cat"]) for i in range(3)]
    opened: list[str] = []

    def image_path(sha: str) -> Path:
        opened.append(sha)
        return queue.images.path(sha)

    shas = [a.image_sha256 for a in added]
    first = FingerprintStore(queue.database).of(shas, image_path)
    assert sorted(opened) == sorted(shas) and all(first[sha] is not None for sha in shas)
    again = FingerprintStore(queue.database).of([*shas, "ff" * 32], image_path)  # a new handle: read from the database
    assert again == {**first, "ff" * 32: None} and sorted(opened) == sorted([*shas, "ff" * 32]), "only the unknown image is opened"


def test_banded_near_pairs_find_exactly_what_comparing_every_pair_finds():
    import random

    from multitag.feedback.fingerprints import near_pairs

    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(300)]
    hashes = {i: value for i, value in enumerate(base)}
    hashes.update({1000 + i: value ^ sum(1 << rng.randrange(64) for _ in range(rng.randrange(8))) for i, value in enumerate(base[:100])})
    hashes[5000] = None
    for max_bits in (0, 3, 6, 12):
        brute = {
            a: {b for b in hashes if b != a and hashes[b] is not None and (hashes[a] ^ hashes[b]).bit_count() <= max_bits}
            for a in hashes
            if hashes[a] is not None
        }
        assert near_pairs(hashes, max_bits) == {a: near for a, near in brute.items() if near}, max_bits
