"""Asking for the right labels (issue 13, part 2): the review list ranks logged answers so a person
labels first what teaches the next model most (champion/challenger disagreements, then scores near a
threshold), without images labelled already or gone from the store, one per image, no near-duplicates;
served by GET /review and `multitag feedback suggest`, and corrections made from it are marked origin=review.
A newly served version re-scores the stored photos that other versions answered (issue 21), so a
promotion does not empty the list; those answers are logged as `rescored`, which drift leaves out."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import yaml
from corpus import encode, solid
from sqlalchemy import text
from typer.testing import CliRunner

from multitag.config import Params
from multitag.feedback import review
from multitag.feedback.predictions import CHALLENGER, RESCORED, Answer, LoggedPrediction, PredictionLog
from multitag.feedback.queue import MIGRATIONS, FeedbackQueue
from multitag.feedback.retraining import open_queue
from multitag.lifecycle import registry
from multitag.lifecycle.predictor import Predictor
from multitag.serving.limits import decode_budget
from multitag.serving.rescore import Rescorer
from multitag.serving.watcher import ServedModel

THRESHOLDS = {"cat": 0.5, "dog": 0.5, "person": 0.7}
_ids = iter(range(1, 1_000_000))


def answer(sha: str, cat: float, dog: float = 0.1, person: float = 0.05, at: float = 1_000.0, role: str = "champion") -> LoggedPrediction:
    """A logged answer with these scores; its labels are the classes at or above THRESHOLDS."""
    scores = {"cat": cat, "dog": dog, "person": person}
    labels = tuple(name for name, score in scores.items() if score >= THRESHOLDS[name])
    return LoggedPrediction(next(_ids), sha, "m", "1", labels, scores, at, role)


def order(items: list[review.ReviewItem]) -> list[str]:
    return [item.image_sha256 for item in items]


def test_the_image_nearest_a_threshold_comes_first():
    sure, unsure, torn = answer("sure", cat=0.97), answer("unsure", cat=0.8, dog=0.3), answer("torn", cat=0.1, dog=0.52)
    items = review.review_list([review.Candidate(a) for a in (sure, unsure, torn)], THRESHOLDS, n=10)
    assert order(items) == ["torn", "unsure", "sure"]
    assert items[0].closest_class == "dog" and items[0].margin == pytest.approx(abs(review.logit(0.52)))
    assert items[0].reason == "least sure about dog: 0.52 against its threshold 0.50"


def test_disagreement_between_champion_and_challenger_beats_mild_uncertainty():
    unsure = review.Candidate(answer("unsure", cat=0.55))
    disputed = review.Candidate(answer("disputed", cat=0.95, dog=0.9), answer("disputed", cat=0.9, dog=0.2, role=CHALLENGER))
    agreed = review.Candidate(answer("agreed", cat=0.1, dog=0.8), answer("agreed", cat=0.2, dog=0.7, role=CHALLENGER))
    items = review.review_list([unsure, agreed, disputed], THRESHOLDS, n=10)
    assert order(items) == ["disputed", "unsure", "agreed"], "a challenger that agrees is no reason of its own"
    assert items[0].disagreement and items[0].challenger_labels == ("cat",)
    assert items[0].reason == "champion and challenger (v1) disagree on dog"


def test_near_identical_answers_collapse_into_the_most_uncertain_one():
    burst = [answer(f"burst{i}", cat=0.52 + i * 0.01, dog=0.2) for i in range(5)]  # five shots of one scene
    other = answer("other", cat=0.3, dog=0.75)
    items = review.review_list([review.Candidate(a) for a in (*burst, other)], THRESHOLDS, n=10)
    assert order(items) == ["burst0", "other"]
    assert order(review.review_list([review.Candidate(a) for a in burst], THRESHOLDS, n=10, min_distance=0.005)) == [
        f"burst{i}" for i in range(5)
    ], "answers further apart than min_distance all stay"


def test_labelled_and_unstored_images_are_left_out_and_n_is_kept():
    candidates = [review.Candidate(answer(name, cat=cat)) for name, cat in (("labelled", 0.5), ("gone", 0.51), ("a", 0.6), ("b", 0.9))]
    items = review.review_list(candidates, THRESHOLDS, n=1, labelled={"labelled"}, stored=lambda sha: sha != "gone")
    assert order(items) == ["a"]


def test_an_image_sent_again_is_judged_by_its_newest_answer():
    older, newer = answer("same", cat=0.5, at=1.0), answer("same", cat=0.99, at=2.0)
    assert review.newest_per_image([newer, older]) == [newer]


def test_degenerate_thresholds_of_0_or_1_still_rank():
    """Thresholds tuned on a handful of positives can be 0 (DESIGN.md): their logits are clipped, not infinite."""
    (item,) = review.review_list([review.Candidate(answer("x", cat=0.4))], {"cat": 0.0, "dog": 1.0}, n=5)
    assert math.isfinite(item.margin) and item.closest_class == "cat"


def png(name: str) -> bytes:
    return encode(solid(name, (24, 20)), "PNG")


def test_suggest_ranks_the_logged_answers_of_the_served_version(queue_db, tmp_path):
    queue = FeedbackQueue(queue_db, tmp_path / "images")
    log = PredictionLog(queue.database, 3600)
    sha = {name: queue.images.store(png(name)) for name in ("torn", "disputed", "labelled", "gone", "old", "other-version")}
    now = time.time()
    log.record("m", "2", [Answer(sha["torn"], ["cat"], {"cat": 0.51, "dog": 0.1})], now=now)
    log.record("m", "2", [Answer(sha["disputed"], ["cat"], {"cat": 0.9, "dog": 0.3})], now=now)
    log.record("m", "3", [Answer(sha["disputed"], ["cat", "dog"], {"cat": 0.9, "dog": 0.8})], now=now, role=CHALLENGER)
    log.record("m", "2", [Answer(sha["labelled"], ["cat"], {"cat": 0.5, "dog": 0.6})], now=now)
    log.record("m", "2", [Answer(sha["gone"], ["cat"], {"cat": 0.5, "dog": 0.7})], now=now)
    log.record("m", "2", [Answer(sha["old"], ["cat"], {"cat": 0.5, "dog": 0.05})], now=now - 7200)
    log.record("m", "1", [Answer(sha["other-version"], ["cat"], {"cat": 0.5, "dog": 0.9})], now=now)
    queue.add_by_sha(sha["labelled"], ["cat"])
    queue.images.path(sha["gone"]).unlink()

    items = review.suggest(log, queue, "m", "2", {"cat": 0.5, "dog": 0.5}, n=10, max_age_s=3600, now=now)
    assert order(items) == [sha["disputed"], sha["torn"]], "older than the retention, another version, labelled or gone: left out"
    assert items[0].challenger_version == "3" and items[0].challenger_labels == ("cat", "dog")
    assert items[1].challenger_labels is None


def test_a_version_1_queue_gains_the_origin_column_and_keeps_its_rows(queue_db, tmp_path):
    queue = FeedbackQueue(queue_db, tmp_path / "images")
    uploaded = queue.add(png("uploaded"), ["cat"]).id
    imported = queue.add(png("imported"), ["dog"], note="imported from labels.csv:2").id
    with queue.database.engine.begin() as conn:  # back to version 1, which had no origin column
        conn.execute(text("ALTER TABLE feedback DROP COLUMN origin"))
        conn.execute(text("UPDATE multitag_schema SET version = 1 WHERE component = 'feedback'"))
    queue.database.dispose()

    reopened = FeedbackQueue(queue_db, tmp_path / "images")
    assert {item.id: item.origin for item in reopened.list_items()} == {uploaded: "upload", imported: "import"}
    reviewed = reopened.add(png("reviewed"), ["cat"], origin="review").id
    assert reopened.list_items()[0].id == reviewed and reopened.list_items()[0].origin == "review"
    with reopened.database.engine.connect() as conn:
        assert conn.scalar(text("SELECT version FROM multitag_schema WHERE component = 'feedback'")) == len(MIGRATIONS)
    with pytest.raises(ValueError, match="unknown origin"):
        reopened.add(png("odd"), ["cat"], origin="email")


def predict(url: str, *images: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)], timeout=30)


def correct(url: str, sha: str, labels: list[str], **fields: str) -> httpx.Response:
    return httpx.post(f"{url}/feedback", data={"image_sha256": sha, "labels": json.dumps(labels), **fields}, timeout=30)


def test_a_predicted_image_is_offered_for_review_until_someone_corrects_it(registry_env, live_server, serve_params):
    params = serve_params(registry_env.name)
    server = live_server(params)
    image = png("review-me")
    (prediction,) = predict(server.url, image).json()["predictions"]

    listed = httpx.get(f"{server.url}/review").json()
    assert listed["model_version"] == registry_env.version
    (item,) = listed["items"]
    assert (item["image_sha256"], item["labels"], item["probabilities"]) == (
        prediction["image_sha256"],
        prediction["labels"],
        prediction["probabilities"],
    )
    assert item["reason"].startswith(f"least sure about {item['closest_class']}: ") and not item["disagreement"]
    shown = httpx.get(f"{server.url}{item['image_url']}")
    assert (shown.status_code, shown.headers["content-type"], shown.content) == (200, "image/png", image)

    sent = correct(server.url, item["image_sha256"], ["dog"], origin="review", model_version=item["model_version"])
    assert sent.status_code == 202, sent.text
    assert httpx.get(f"{server.url}/review").json()["items"] == [], "a labelled image is not asked for again"
    (queued,) = open_queue(params).list_items()
    assert (queued.image_sha256, queued.labels, queued.origin) == (item["image_sha256"], ("dog",), "review")


def test_review_ranks_disagreements_then_uncertainty_on_the_live_api(registry_env, live_server, serve_params):
    params = serve_params(registry_env.name)
    server = live_server(params)
    queue = open_queue(params)
    log = PredictionLog(queue.database, 3600)
    sha = {name: queue.images.store(png(name)) for name in ("sure", "unsure", "disputed")}
    version, name = registry_env.version, registry_env.name  # tiny thresholds: cat 0.3, dog 0.5, person 0.7
    log.record(name, version, [Answer(sha["sure"], ["person"], {"cat": 0.01, "dog": 0.02, "person": 0.99})])
    log.record(name, version, [Answer(sha["unsure"], ["cat"], {"cat": 0.31, "dog": 0.02, "person": 0.1})])
    log.record(name, version, [Answer(sha["disputed"], ["dog"], {"cat": 0.01, "dog": 0.97, "person": 0.2})])
    log.record(name, "99", [Answer(sha["disputed"], [], {"cat": 0.01, "dog": 0.2, "person": 0.2})], role=CHALLENGER)

    listed = httpx.get(f"{server.url}/review", params={"n": 2}).json()["items"]
    assert [item["image_sha256"] for item in listed] == [sha["disputed"], sha["unsure"]]
    assert listed[0]["reason"] == "champion and challenger (v99) disagree on dog" and listed[0]["challenger_labels"] == []
    assert listed[1]["closest_class"] == "cat"
    assert httpx.get(f"{server.url}/review", params={"n": 0}).status_code == 422
    assert correct(server.url, sha["sure"], ["person"], origin="email").status_code == 422, "origin is upload, review or import"


def test_stored_images_are_served_by_hash_only(registry_env, live_server, serve_params):
    server = live_server(serve_params(registry_env.name))
    assert httpx.get(f"{server.url}/images/{'0' * 64}").json()["detail"]["reason"] == "unknown_image"
    assert httpx.get(f"{server.url}/images/{'g' * 64}").json()["detail"]["reason"] == "bad_sha256"
    assert httpx.get(f"{server.url}/images/..%2F..%2Fparams.yaml").status_code in (404, 422)  # the router may refuse it first
    dots = httpx.get(f"{server.url}/images/%2E%2E")  # one segment, `..` once decoded: it reaches the handler
    assert dots.status_code == 422 and dots.json()["detail"]["reason"] == "bad_sha256", dots.text


def test_no_review_without_a_prediction_log(registry_env, live_server, serve_params):
    server = live_server(serve_params(registry_env.name, prediction_log_hours=0))
    answered = httpx.get(f"{server.url}/review")
    assert (answered.status_code, answered.json()["detail"]["reason"]) == (503, "no_prediction_log")


def test_the_cli_suggests_the_same_images_and_lists_the_origin(registry_env, tmp_path, monkeypatch):
    from multitag.cli import app

    monkeypatch.setenv("COLUMNS", "250")
    params_path = tmp_path / "params.yaml"
    feedback = {"db_path": str(tmp_path / "queue.db"), "images_dir": str(tmp_path / "images")}
    params_path.write_text(yaml.safe_dump({"registry": {"model_name": registry_env.name}, "feedback": feedback}))
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images", task=registry_env.name)  # the task these params name
    unsure, sure = queue.images.store(png("cli-unsure")), queue.images.store(png("cli-sure"))
    answers = [
        Answer(sure, ["dog"], {"cat": 0.01, "dog": 0.99, "person": 0.01}),
        Answer(unsure, ["dog"], {"cat": 0.29, "dog": 0.6, "person": 0.01}),
    ]
    PredictionLog(queue.database, 3600).record(registry_env.name, registry_env.version, answers)

    suggested = CliRunner().invoke(app, ["feedback", "suggest", "--n", "50", "--json", "--params", str(params_path)])
    assert suggested.exit_code == 0, suggested.output
    assert [item["image_sha256"] for item in json.loads(suggested.output)] == [unsure, sure]
    table = CliRunner().invoke(app, ["feedback", "suggest", "--params", str(params_path)])
    # rich wraps the reason at the console's width (80 columns when not a terminal): its first words stay on one line
    assert table.exit_code == 0 and "least sure about cat: 0.29" in table.output, table.output

    queue.add_by_sha(unsure, ["cat", "dog"], origin="review")
    listed = CliRunner().invoke(app, ["feedback", "list", "--params", str(params_path)])
    assert listed.exit_code == 0 and "origin" in listed.output and "review" in listed.output, listed.output


# -- after a promotion: the new version re-scores the stored photos (issue 21) ---------------------


def test_a_new_version_rescores_the_stored_photos_other_versions_answered_and_nobody_labelled(queue_db, tmp_path):
    queue = FeedbackQueue(queue_db, tmp_path / "images")
    log = PredictionLog(queue.database, 24 * 3600)
    names = ("older", "newer", "shadowed", "rescored-by-1", "labelled", "gone", "expired", "answered", "other-task")
    sha = {name: queue.images.store(png(name)) for name in names}
    now = time.time()
    scores = {"cat": 0.4, "dog": 0.6}
    for name in names:
        at = now - 7200 if name == "expired" else now - (1 if name == "older" else 0)
        role = RESCORED if name == "rescored-by-1" else "champion"
        log.record("other" if name == "other-task" else "m", "1", [Answer(sha[name], ["dog"], scores)], now=at, role=role)
    log.record("m", "2", [Answer(sha["answered"], ["dog"], scores)], now=now)
    log.record("m", "2", [Answer(sha["shadowed"], ["dog"], scores)], now=now, role=CHALLENGER)  # no answer of the served version
    queue.add_by_sha(sha["labelled"], ["cat"])
    queue.images.path(sha["gone"]).unlink()

    found = review.to_rescore(log, queue, "m", "2", max_age_s=3600, now=now)
    assert set(found) == {sha["older"], sha["newer"], sha["shadowed"], sha["rescored-by-1"]}
    assert found[sha["newer"]] == queue.images.path(sha["newer"])
    assert sha["older"] not in review.to_rescore(log, queue, "m", "2", max_age_s=3600, limit=3, now=now), "the newest first"


def tiny_predictor(model) -> Predictor:
    return Predictor(model, ["cat", "dog"], np.array([0.5, 0.5]), input_size=8)


def served(predictor: Predictor, version: str) -> ServedModel:
    return ServedModel(predictor, "m", "champion", registry.VersionInfo(version, ["champion"], {}, "", None), 0.0)


def test_rescoring_goes_on_past_failures_and_stops_when_another_version_serves(tmp_path):
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    log = PredictionLog(queue.database, 3600)
    photos = [queue.images.store(png(f"photo{i}")) for i in range(4)]
    broken = queue.images.store(b"GIF89a but no image")  # stored, yet undecodable: skipped
    log.record("m", "1", [Answer(sha, [], {"cat": 0.1, "dog": 0.1}) for sha in [*photos, broken]])
    calls = []

    class Model:
        def predict_on_batch(self, images):
            calls.append(len(images))
            if len(calls) == 1:
                raise RuntimeError("a failing model call")
            return np.full((len(images), 2), 0.7)

    watcher = SimpleNamespace(current=served(tiny_predictor(Model()), "2"), interval_s=0.1)
    rescorer = Rescorer(watcher, log, queue, 3600, decode_budget(Params()))
    rescorer.batch_size = 1
    assert rescorer.rescore(watcher.current) == 3, "the failed batch is logged and skipped, the others are logged"
    assert calls == [1, 1, 1, 1]
    logged = log.recent(role=RESCORED)
    assert len(logged) == 3 and {row.model_version for row in logged} == {"2"} and logged[0].labels == ("cat", "dog")
    assert len(log.answered_since("m", "2", 0, 100)) == 0, "no user got a re-scored answer"

    class Promoting(Model):
        def predict_on_batch(self, images):
            watcher.current = served(tiny_predictor(Model()), "4")  # a promotion while version 3 re-scores
            return np.full((len(images), 2), 0.7)

    watcher.current = served(tiny_predictor(Promoting()), "3")
    assert rescorer.rescore(watcher.current) == 1, "stopped at the next batch once version 4 serves"

    calls.clear()
    watcher.current = served(tiny_predictor(Model()), "5")  # how the server starts it: a check per poll, once per version
    rescorer.check()
    rescorer.check()
    assert len(calls) == 4 and len(log.answered_since("m", "5", 0, 100, roles=[RESCORED])) == 3


def test_a_promotion_leaves_the_unlabelled_photos_to_review_but_not_to_drift(registry_env, fresh_model_name, live_server, serve_params):
    first = registry.register(registry_env.model_uri, fresh_model_name, {})
    registry.promote(fresh_model_name, first)
    server = live_server(serve_params(fresh_model_name))
    answered = predict(server.url, png("keep-a"), png("keep-b"), png("corrected")).json()["predictions"]
    hashes = [p["image_sha256"] for p in answered]
    assert {p["model_version"] for p in answered} == {first}
    assert correct(server.url, hashes[2], ["dog"]).status_code == 202

    second = registry.register(registry_env.model_uri, fresh_model_name, {})
    registry.promote(fresh_model_name, second)  # the nightly promotes: the server hot-reloads it

    log = PredictionLog(open_queue(serve_params(fresh_model_name)).database, 3600)
    deadline = time.monotonic() + 30
    while len(rescored := log.recent(role=RESCORED)) < 2:
        assert time.monotonic() < deadline, f"in 30 s, version {second} re-scored only {rescored}"
        time.sleep(0.1)
    assert sorted(row.image_sha256 for row in rescored) == sorted(hashes[:2]), "the corrected photo is not re-scored"
    assert {row.model_version for row in rescored} == {second}
    listed = httpx.get(f"{server.url}/review", timeout=30).json()
    # the untrained model scores these photos alike: the diversity rule lists one of them, the other after it is corrected
    assert listed["model_version"] == second and len(listed["items"]) >= 1
    assert {item["model_version"] for item in listed["items"]} == {second}
    (first_listed, *_) = [item["image_sha256"] for item in listed["items"]]
    assert first_listed in hashes[:2] and correct(server.url, first_listed, ["cat"], origin="review").status_code == 202
    (other,) = set(hashes[:2]) - {first_listed}
    assert [item["image_sha256"] for item in httpx.get(f"{server.url}/review", timeout=30).json()["items"]] == [other]
    assert httpx.get(f"{server.url}/drift", timeout=30).json()["predictions"] == 0, "re-scored photos are no user traffic"
