"""The prediction log (issue 13, part 1): every /predict answer is recorded with the version that
gave it and every score, in the queue's database, for serve.prediction_log_hours; recording never
costs a user their answer."""

from __future__ import annotations

import logging
import sqlite3

import httpx
from corpus import encode, solid

from multitag.feedback.predictions import CHALLENGER, CHAMPION, Answer, PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.retraining import open_queue


def png(name: str) -> bytes:
    return encode(solid(name, (24, 20)), "PNG")


def predict(url: str, *images: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)], timeout=30)


def test_every_answer_is_logged_with_its_version_labels_and_scores(registry_env, live_server, serve_params):
    params = serve_params(registry_env.name)
    server = live_server(params)
    answered = predict(server.url, png("first"), png("second"))
    assert answered.status_code == 200, answered.text
    assert predict(server.url, b"not an image").status_code == 415

    logged = PredictionLog(open_queue(params).database, 3600).recent()
    assert [(row.image_sha256, row.model_name, row.model_version, list(row.labels), row.scores) for row in reversed(logged)] == [
        (p["image_sha256"], registry_env.name, p["model_version"], p["labels"], p["probabilities"]) for p in answered.json()["predictions"]
    ], "one row per answered image, as answered; a refused upload logs nothing"


def test_no_log_when_prediction_log_hours_is_0(registry_env, live_server, serve_params):
    params = serve_params(registry_env.name, prediction_log_hours=0)
    server = live_server(params)
    assert predict(server.url, png("unlogged")).status_code == 200
    assert PredictionLog(open_queue(params).database, 3600).recent() == []


def test_a_failing_log_write_costs_the_entry_not_the_answer(registry_env, live_server, serve_params, caplog):
    params = serve_params(registry_env.name)
    server = live_server(params)
    assert predict(server.url, png("before")).status_code == 200
    with open_queue(params).database.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE predictions")  # every later insert fails
    with caplog.at_level(logging.ERROR, logger="multitag.feedback.predictions"):
        answered = predict(server.url, png("after"))
    assert answered.status_code == 200 and answered.json()["predictions"][0]["labels"] is not None
    assert "recording a prediction" in caplog.text and "the answer was sent anyway" in caplog.text


def test_expire_deletes_only_answers_older_than_the_limit(queue_db, tmp_path):
    log = PredictionLog(FeedbackQueue(queue_db, tmp_path / "images").database, max_age_s=3600)
    answer = Answer("ab" * 32, ["cat"], {"cat": 0.9, "dog": 0.1})
    log.record("m", "1", [answer], now=1_000.0)
    log.record("m", "2", [answer, answer], now=5_000.0)
    assert log.expire(now=4_700.0) == 1, "1,000 is older than 4,700 - 3,600; 5,000 is not"
    assert [row.model_version for row in log.recent()] == ["2", "2"]
    assert log.recent()[0].scores == {"cat": 0.9, "dog": 0.1} and log.recent()[0].labels == ("cat",)


def test_shadow_answers_sit_beside_the_champions_under_their_role(queue_db, tmp_path):
    log = PredictionLog(FeedbackQueue(queue_db, tmp_path / "images").database, max_age_s=3600)
    answer = Answer("cd" * 32, ["dog"], {"cat": 0.2, "dog": 0.7})
    log.record("m", "1", [answer])
    log.record("m", "2", [answer], role=CHALLENGER)
    assert [row.model_version for row in log.recent()] == ["1"], "by default only what users were answered"
    assert [row.model_version for row in log.recent(role=CHALLENGER)] == ["2"]
    assert [row.role for row in log.recent(role=None)] == [CHALLENGER, CHAMPION]


def test_a_version_1_log_gains_the_role_column_and_keeps_its_rows(tmp_path):
    db_file = tmp_path / "queue.db"
    v1 = sqlite3.connect(db_file)  # the shape version 1 wrote (before `role`), with one answer
    v1.executescript(
        """CREATE TABLE multitag_schema (component VARCHAR(64) PRIMARY KEY, version INTEGER NOT NULL);
        INSERT INTO multitag_schema VALUES ('predictions', 1);
        CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, image_sha256 VARCHAR(64) NOT NULL,
          model_name TEXT NOT NULL, model_version TEXT NOT NULL, labels TEXT NOT NULL, scores TEXT NOT NULL,
          predicted_at FLOAT NOT NULL);
        INSERT INTO predictions (image_sha256, model_name, model_version, labels, scores, predicted_at)
          VALUES ('old', 'm', '1', '["cat"]', '{"cat": 0.9}', 1.0);"""
    )
    v1.close()
    log = PredictionLog(FeedbackQueue(db_file, tmp_path / "images").database, max_age_s=1e12)
    (old,) = log.recent()
    assert (old.image_sha256, old.role) == ("old", CHAMPION)
    assert sqlite3.connect(db_file).execute("SELECT version FROM multitag_schema WHERE component = 'predictions'").fetchone() == (2,)
