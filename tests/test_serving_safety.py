"""What the server does against cross-site posts, with prediction images nobody corrects, and on a
full disk: refuse the post, delete the images after the retention period, answer predictions
anyway and say 507 where feedback cannot be saved."""

from __future__ import annotations

import builtins
import errno
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import server_params, start_live_server
from corpus import encode, solid
from fastapi import FastAPI
from fastapi.testclient import TestClient

from multitag.feedback import store as store_module
from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.retention import GRACE_S, ImageRetention
from multitag.serving.origin import SameOriginPosts
from multitag.serving.problems import disk_full

LISTED_ORIGIN = "http://tagger.example:3000"
HOUR = 3600


def png(name: str) -> bytes:
    return encode(solid(name, (24, 20)), "PNG")


@pytest.fixture(scope="module")
def safety_server(tiny_champion, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The tiny champion served with a listed origin, 1 h retention and a sweep every 0.2 s."""
    from multitag.serving.app import create_app

    with pytest.MonkeyPatch.context() as patch:
        for key, value in tiny_champion.env.items():
            patch.setenv(key, value)
        params = server_params(
            tmp_path_factory.mktemp("safety-server"),
            tiny_champion.name,
            allowed_origins=[LISTED_ORIGIN],
            prediction_retention_hours=1,
            prediction_sweep_interval_s=0.2,
        )
        server = start_live_server(create_app(params))
        server.params = params
        try:
            yield server
        finally:
            server.stop()


def predict(url: str, image: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"files": ("x.png", image, "image/png")}, headers=headers or {}, timeout=30)


def stored_shas(images_dir: Path) -> set[str]:
    return {path.name.split(".")[0] for path in images_dir.glob("??/*") if not path.name.startswith(".")}


# -- cross-site posts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "allowed"),
    [
        ("POST", {}, True),  # curl, scripts: no page named
        ("POST", {"Origin": "http://testserver"}, True),  # the page this server served
        ("POST", {"Referer": "http://testserver/index.html"}, True),
        ("POST", {"Origin": "HTTP://Tagger.Example:3000/"}, True),  # listed, however spelled
        ("POST", {"Origin": "http://evil.example"}, False),
        ("POST", {"Origin": "http://testserver:8001"}, False),  # another port is another origin
        ("POST", {"Origin": "null"}, False),  # a sandboxed or file:// page
        ("POST", {"Referer": "http://evil.example/attack.html"}, False),
        ("POST", {"Origin": "http://evil.example", "Referer": "http://testserver/"}, False),  # Origin decides
        ("DELETE", {"Origin": "http://evil.example"}, False),
        ("GET", {"Origin": "http://evil.example"}, True),  # reading changes nothing
    ],
)
def test_only_pages_of_other_origins_are_refused(method, headers, allowed):
    app = FastAPI()
    app.add_api_route("/thing", lambda: {"ok": True}, methods=["GET", "POST", "DELETE"])
    client = TestClient(SameOriginPosts(app, allowed_origins=[LISTED_ORIGIN]))
    response = client.request(method, "/thing", headers=headers)
    if allowed:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 403
        assert response.json()["detail"]["reason"] == "cross_origin"
        assert "serve.allowed_origins" in response.json()["detail"]["message"]


def test_the_server_refuses_cross_site_posts_before_touching_anything(safety_server):
    url = safety_server.url
    stats = lambda: httpx.get(f"{url}/feedback/stats").json()  # noqa: E731
    before = stats()
    evil = {"Origin": "http://evil.example"}
    image = png("cross-site")

    refused = [
        predict(url, image, evil),
        httpx.post(f"{url}/feedback", data={"labels": "cat"}, files={"file": ("x.png", image, "image/png")}, headers=evil),
        httpx.post(f"{url}/feedback", data={"labels": "cat"}, files={"file": ("x.png", image, "image/png")}, headers={"Origin": "null"}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert {r.json()["detail"]["reason"] for r in refused} == {"cross_origin"}
    assert stats() == before
    assert hashlib.sha256(image).hexdigest() not in stored_shas(safety_server.params.feedback.images_dir)

    for headers in ({}, {"Origin": url}, {"Origin": LISTED_ORIGIN}):
        assert predict(url, image, headers).status_code == 200, headers


# -- retention of prediction images -------------------------------------------------------------


def test_the_sweep_deletes_expired_images_that_no_feedback_names(tmp_path):
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    named = [queue.add(png(f"named-{i}"), ["cat"]).image_sha256 for i in range(4)]
    queue.claim("run-a")
    queue.ack("run-a", [1])  # 1 consumed
    queue.release("run-a")
    queue.claim("run-b", limit=1)  # 2 claimed
    queue.reject([4], "admin")  # 4 rejected, 3 still pending
    assert sorted(item.state for item in queue.list_items()) == ["claimed", "consumed", "pending", "rejected"]
    orphan = queue.images.store(png("predicted only"))
    stored_again = queue.images.store(png("predicted twice"))
    retention = ImageRetention(queue, max_age_s=HOUR)
    assert retention.sweep() == []  # nothing is an hour old yet

    two_hours_ago = time.time() - 2 * HOUR
    for _, path in queue.images.stored():
        os.utime(path, (two_hours_ago, two_hours_ago))
    queue.images.store(png("predicted twice"))  # stored again: its hour starts over
    assert retention.sweep() == [orphan]
    assert stored_shas(queue.images.root) == {*named, stored_again}


def test_retention_zero_still_spares_images_on_their_way_into_the_queue(tmp_path):
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    fresh = queue.images.store(png("being queued"))
    retention = ImageRetention(queue, max_age_s=0)
    assert retention.sweep() == []
    assert retention.sweep(now=time.time() + GRACE_S + 1) == [fresh]


def test_the_server_sweeps_expired_prediction_images_but_keeps_corrected_ones(safety_server):
    url, images_dir = safety_server.url, safety_server.params.feedback.images_dir
    corrected, ignored = (predict(url, png(name)).json()["predictions"][0]["image_sha256"] for name in ("corrected", "ignored"))
    assert httpx.post(f"{url}/feedback", data={"image_sha256": corrected, "labels": "dog"}).status_code == 202
    store = store_module.ImageStore(images_dir)
    two_hours_ago = time.time() - 2 * HOUR
    for sha in (corrected, ignored):
        os.utime(store.path(sha), (two_hours_ago, two_hours_ago))

    deadline = time.monotonic() + 10
    while ignored in stored_shas(images_dir):
        assert time.monotonic() < deadline, "the server did not sweep an expired prediction image within 10 s"
        time.sleep(0.1)
    assert corrected in stored_shas(images_dir)
    gone = httpx.post(f"{url}/feedback", data={"image_sha256": ignored, "labels": "dog"})
    assert gone.status_code == 404 and "send the image itself" in gone.json()["detail"]["message"]


def test_retention_zero_keeps_no_prediction_image(registry_env, live_server, serve_params):
    params = serve_params(registry_env.name, prediction_retention_hours=0)
    server = live_server(params)
    response = predict(server.url, png("not kept"))
    assert response.status_code == 200, response.text
    assert stored_shas(params.feedback.images_dir) == set()


# -- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def full_disk(safety_server, monkeypatch) -> Path:
    """The store's file writes go to /dev/full, where the kernel answers every write with ENOSPC.

    Only the store's `open` is redirected (in this process, where the test server runs): the OS
    says the disk is full, the code under test is untouched.
    """
    images_dir = Path(safety_server.params.feedback.images_dir)

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).is_relative_to(images_dir):
            return builtins.open("/dev/full", mode, *args, **kwargs)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", open_on_a_full_disk, raising=False)
    return images_dir


def test_a_full_disk_costs_the_stored_copy_not_the_prediction(safety_server, full_disk, caplog):
    image = png("full disk predict")
    with caplog.at_level(logging.WARNING, logger="multitag.serving.routes"):
        response = predict(safety_server.url, image)
    assert response.status_code == 200, response.text
    sha = response.json()["predictions"][0]["image_sha256"]
    assert sha == hashlib.sha256(image).hexdigest() and sha not in stored_shas(full_disk)
    assert any("disk full" in record.getMessage() for record in caplog.records)
    assert not list(full_disk.glob("??/.*.tmp")), "a failed write left its temp file behind"


def test_feedback_on_a_full_disk_is_a_507_that_says_what_to_do(safety_server, full_disk):
    before = httpx.get(f"{safety_server.url}/feedback/stats").json()
    response = httpx.post(
        f"{safety_server.url}/feedback", data={"labels": "cat"}, files={"file": ("f.png", png("full disk feedback"), "image/png")}
    )
    assert response.status_code == 507, response.text
    detail = response.json()["detail"]
    assert detail["reason"] == "insufficient_storage"
    assert "send it again later" in detail["message"] and "prediction_retention_hours" in detail["message"]
    assert httpx.get(f"{safety_server.url}/feedback/stats").json() == before


def test_disk_full_knows_the_os_and_sqlite_errors_for_it(tmp_path):
    device = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(OSError) as no_space:
        os.write(device, b"x")
    os.close(device)
    conn = sqlite3.connect(tmp_path / "tiny.db")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.Error) as sqlite_full:
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert disk_full(no_space.value) and disk_full(sqlite_full.value)
    assert not disk_full(PermissionError(errno.EACCES, "denied")) and not disk_full(sqlite3.OperationalError("locked"))


def test_a_replica_left_behind_by_a_rolling_upgrade_answers_503_upgrade_required(app_for, registry_env):
    """Every /feedback of an old replica once returned 500 after a newer one migrated the queue."""
    from conftest import LOCAL_CLIENT

    client = app_for(LOCAL_CLIENT)
    with client.app.state.services.queue.database.engine.begin() as conn:  # a newer multitag's migration, elsewhere
        conn.exec_driver_sql("DROP INDEX feedback_open_once")
        conn.exec_driver_sql("UPDATE multitag_schema SET version = version + 1 WHERE component = 'feedback'")
    answer = client.post(
        "/feedback", data={"labels": registry_env.classes[0]}, files={"file": ("a.png", png("after the upgrade"), "image/png")}
    )
    assert answer.status_code == 503 and answer.json()["detail"]["reason"] == "upgrade_required", answer.text
    assert "upgrade this one's multitag" in answer.json()["detail"]["message"] and answer.headers["Retry-After"]
