"""Shadow mode (issue 13, part 5): while a `challenger` alias exists, the API scores every /predict
image with it too, off the response path, and logs both answers; GET /shadow and
`multitag registry shadow-report` compare them per class (and against corrections), and the gate
can refuse to promote a challenger on that record. Shadow scoring never slows or fails a request."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml
from corpus import encode, solid

from multitag.feedback.predictions import CHALLENGER, CHAMPION, Answer, PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.retraining import open_queue
from multitag.feedback.shadow import ClassShadow, report_from_log
from multitag.lifecycle import registry

SLOW_S = 2.0  # how long the patched challenger takes per call; a user request must take far less


def png(name: str) -> bytes:
    return encode(solid(name, (24, 20)), "PNG")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def predict(url: str, *images: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=[("files", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)], timeout=30)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 60) -> object:
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def shadow_state(url: str) -> dict:
    response = httpx.get(f"{url}/shadow", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def champion_and_challenger(registry_env, name: str) -> tuple[str, str]:
    """Two versions of the tiny model under `name`: the first champion, the second challenger."""
    champion, challenger = (registry.register(registry_env.model_uri, name, {}) for _ in range(2))
    registry.promote(name, champion)
    registry.mark_challenger(name, challenger)
    return champion, challenger


# -- the live API ---------------------------------------------------------------------------------


def test_the_challenger_scores_each_request_in_shadow_and_both_answers_are_logged(
    registry_env, fresh_model_name, live_server, serve_params
):
    champion, challenger = champion_and_challenger(registry_env, fresh_model_name)
    params = serve_params(fresh_model_name)
    server = live_server(params)
    wait_for(lambda: shadow_state(server.url)["challenger_version"] == challenger, "the challenger to load")

    images = [png("shadow-a"), png("shadow-b")]
    answered = predict(server.url, *images)
    assert answered.status_code == 200, answered.text
    served = answered.json()["predictions"]
    assert {(p["model_version"], p["model_alias"]) for p in served} == {(champion, "champion")}, "users get the champion's answer only"

    state = wait_for(lambda: (s := shadow_state(server.url))["scoring"]["scored"] == 2 and s, "both images to be shadow-scored")
    assert state["scoring"] | {"last_error": None} == {"scored": 2, "dropped": 0, "failed": 0, "queued": 0, "last_error": None}
    log = PredictionLog(open_queue(params).database, 3600)
    shadowed = {row.image_sha256: row for row in log.recent(role=CHALLENGER)}
    assert set(shadowed) == {sha(image) for image in images} == {p["image_sha256"] for p in served}
    assert {row.model_version for row in shadowed.values()} == {challenger}
    for p in served:  # the same model weights: the challenger's answer equals the user's
        assert list(shadowed[p["image_sha256"]].labels) == p["labels"]
        assert shadowed[p["image_sha256"]].scores == pytest.approx(p["probabilities"])
    assert [row.model_version for row in log.recent(role=CHAMPION)] == [champion, champion]

    report = state["report"]
    assert (report["champion_version"], report["challenger_version"], report["images"]) == (champion, challenger, 2)
    assert report["agreement"] == report["exact_agreement"] == 1.0
    assert [c["name"] for c in report["classes"]] == registry_env.classes

    registry.client().delete_registered_model_alias(fresh_model_name, registry.CHALLENGER)
    wait_for(lambda: shadow_state(server.url)["challenger_version"] is None, "the challenger to unload once its alias is gone")
    assert predict(server.url, png("after-the-challenger")).status_code == 200
    time.sleep(0.5)
    assert shadow_state(server.url)["scoring"]["scored"] == 2, "no challenger, no shadow scoring"


def test_a_slow_or_failing_challenger_never_slows_or_fails_a_request(registry_env, fresh_model_name, live_server, serve_params):
    _, challenger = champion_and_challenger(registry_env, fresh_model_name)
    server = live_server(serve_params(fresh_model_name, shadow_queue_size=1))
    wait_for(lambda: shadow_state(server.url)["challenger_version"] == challenger, "the challenger to load")
    predictor = server.app.state.services.shadow.watcher.current.predictor
    real_predict = predictor.predict_arrays

    def slow(images):
        time.sleep(SLOW_S)
        return real_predict(images)

    predictor.predict_arrays = slow
    timings = []
    for i in range(5):  # the first occupies the worker, the second waits in the queue (size 1), the rest are dropped
        started = time.monotonic()
        assert predict(server.url, png(f"slow-{i}")).status_code == 200
        timings.append(time.monotonic() - started)
    assert max(timings) < SLOW_S / 2, f"requests waited for the challenger: {timings}"
    counts = wait_for(lambda: (c := shadow_state(server.url)["scoring"])["queued"] == 0 and c["scored"] == 2 and c, "the queue to drain")
    assert counts["dropped"] == 3 and counts["failed"] == 0, counts

    def broken(images):
        raise RuntimeError("the challenger's model fell over")

    predictor.predict_arrays = broken
    answered = predict(server.url, png("broken"))
    assert answered.status_code == 200 and answered.json()["predictions"][0]["model_alias"] == "champion"
    counts = wait_for(lambda: (c := shadow_state(server.url)["scoring"])["failed"] == 1 and c, "the failure to be counted")
    assert "the challenger's model fell over" in counts["last_error"]


def test_shadow_off_scores_nothing(registry_env, fresh_model_name, live_server, serve_params):
    champion_and_challenger(registry_env, fresh_model_name)
    params = serve_params(fresh_model_name, shadow=False)
    server = live_server(params)
    assert predict(server.url, png("unshadowed")).status_code == 200
    assert shadow_state(server.url) == {
        "enabled": False,
        "challenger_version": None,
        "challenger_error": None,
        "scoring": None,
        "report": None,
    }
    assert server.app.state.services.shadow is None, "shadow off: no scorer, no thread, nothing queued"
    assert PredictionLog(open_queue(params).database, 3600).recent(role=CHALLENGER) == []


# -- the report -----------------------------------------------------------------------------------

CHAMPION_SCORES = {"cat": 0.1, "dog": 0.1, "person": 0.1}  # the champion knows person, the challenger bird
CHALLENGER_SCORES = {"cat": 0.1, "dog": 0.1, "bird": 0.1}


def test_the_report_pairs_each_image_once_and_counts_per_shared_class(tmp_path):
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    log = PredictionLog(queue.database, 3600)
    a, b, c, d = (png(name) for name in "abcd")

    def served(image: bytes, labels: list[str], version: str = "1") -> None:
        log.record("m", version, [Answer(sha(image), labels, CHAMPION_SCORES)])

    def shadowed(image: bytes, labels: list[str], version: str = "2") -> None:
        log.record("m", version, [Answer(sha(image), labels, CHALLENGER_SCORES)], role=CHALLENGER)

    served(a, ["dog"])  # superseded: the newer request below is the one paired
    served(a, ["cat", "person"])
    shadowed(a, ["cat", "bird"])  # agrees on cat and dog
    served(b, ["cat"])
    shadowed(b, ["dog"])  # disagrees on both
    served(b, ["dog"])  # a later request of b with no shadow answer yet: not paired with the earlier one
    served(c, [])
    shadowed(c, ["dog"])  # disagrees on dog
    shadowed(c, ["dog"], version="3")  # another challenger version: not in this report
    served(c, ["cat"], version="0")  # another champion version: not in this report
    served(d, ["cat"])  # never shadowed: not paired
    for image, labels in ((b, ["dog"]), (c, ["cat"])):  # the corrections: b is a dog, c a cat
        queue.add(image, labels)
    rejected = queue.add(a, ["dog"])
    queue.reject([rejected.id], "an admin's decision")  # a rejected item is no correction

    report = report_from_log(log, queue, "m", "2", champion_version="1")

    assert (report.images, report.feedback_images) == (3, 2)
    assert report.classes == [
        # answers: a cat both, dog neither; b cat champion, dog challenger; c dog challenger. Right on b (dog) and c (cat):
        # cat: champion neither (cat on b, not on c), challenger b; dog: champion c, challenger b
        ClassShadow("cat", 3, 2 / 3, 2 / 3, 1 / 3, feedback_images=2, champion_correct=0, challenger_correct=1),
        ClassShadow("dog", 3, 1 / 3, 0.0, 2 / 3, feedback_images=2, champion_correct=1, challenger_correct=1),
    ]
    assert report.agreement == pytest.approx(3 / 6) and report.exact_agreement == pytest.approx(1 / 3)
    assert (report.champion_correct, report.challenger_correct) == (1, 2), (
        "b: the challenger right twice; c: each once, on a different class"
    )
    assert (report.champion_only_classes, report.challenger_only_classes) == (["person"], ["bird"])
    assert report_from_log(log, queue, "m", "2").images == 3, "any champion version: c pairs with its version-1 answer, logged before"
    assert report_from_log(log, queue, "m", "9").images == 0 and report_from_log(log, queue, "m", "9").agreement is None


# -- the gate -------------------------------------------------------------------------------------


def write_params(root: Path, model_name: str, **gate: object) -> Path:
    path = root / "params.yaml"
    feedback = {"db_path": str(root / "queue.db"), "images_dir": str(root / "images")}
    path.write_text(yaml.safe_dump({"registry": {"model_name": model_name}, "feedback": feedback, "gate": gate}))
    return path


def run_cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from multitag.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_promoting_the_challenger_below_the_minimum_agreement_is_refused(registry_env, fresh_model_name, tmp_path):
    champion, challenger = champion_and_challenger(registry_env, fresh_model_name)
    params_path = write_params(tmp_path, fresh_model_name, shadow_min_agreement=0.9)
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    log = PredictionLog(queue.database, 3600)
    for i, (said, shadow_said) in enumerate([(["cat"], ["cat"]), (["cat"], ["dog"])]):  # agreement 4 of 6 (image, class) answers
        image = sha(png(f"gate-{i}"))
        log.record(fresh_model_name, champion, [Answer(image, said, {"cat": 0.5, "dog": 0.5, "person": 0.1})])
        log.record(fresh_model_name, challenger, [Answer(image, shadow_said, {"cat": 0.5, "dog": 0.5, "person": 0.1})], role=CHALLENGER)

    code, report = run_cli("registry", "shadow-report", "--params", str(params_path))
    assert code == 0, report
    assert f"challenger {challenger} vs champion {champion}, 2 image(s), agreement 0.667" in report
    assert "the gate would refuse to promote it" in report

    code, output = run_cli("registry", "promote", challenger, "--params", str(params_path))
    assert code == 1 and "ShadowGateError" in output
    assert "agreement with the champion 0.667 over 2 image(s) is below gate.shadow_min_agreement 0.900" in output
    assert "--ignore-shadow" in output
    assert registry.alias_version(fresh_model_name, registry.CHAMPION).version == champion, "nothing moved"

    code, output = run_cli("registry", "promote", challenger, "--ignore-shadow", "--params", str(params_path))
    assert code == 0, output
    assert registry.alias_version(fresh_model_name, registry.CHAMPION).version == challenger


def test_a_required_feedback_win_needs_corrections_the_challenger_gets_more_right(registry_env, fresh_model_name, tmp_path):
    champion, challenger = champion_and_challenger(registry_env, fresh_model_name)
    params_path = write_params(tmp_path, fresh_model_name, shadow_require_feedback_win=True)
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images", task=fresh_model_name)  # the task these params name
    log = PredictionLog(queue.database, 3600)
    image = png("win")
    log.record(fresh_model_name, champion, [Answer(sha(image), ["cat"], {"cat": 0.9, "dog": 0.1})])
    log.record(fresh_model_name, challenger, [Answer(sha(image), ["dog"], {"cat": 0.1, "dog": 0.9})], role=CHALLENGER)

    code, output = run_cli("registry", "promote", challenger, "--params", str(params_path))
    assert code == 1 and "no shadowed image has a correction yet" in output

    queue.add(image, ["dog"])  # the challenger was right on both classes, the champion on neither
    code, output = run_cli("registry", "promote", challenger, "--params", str(params_path))
    assert code == 0, output
    assert registry.alias_version(fresh_model_name, registry.CHAMPION).version == challenger


def test_a_partial_correction_judges_only_the_classes_it_marked():
    from multitag.feedback.predictions import LoggedPrediction
    from multitag.feedback.queue import Truth
    from multitag.feedback.shadow import build_report

    scores = {"cat": 0.6, "dog": 0.6}
    champion = LoggedPrediction(1, "e" * 64, "m", "1", ("cat",), scores, 1.0)
    challenger = LoggedPrediction(2, "e" * 64, "m", "2", ("cat", "dog"), scores, 2.0, role=CHALLENGER)
    partial = Truth(frozenset({"cat"}), absent=frozenset())  # cat ticked, dog left blank: unknown

    report = build_report([(champion, challenger)], {"e" * 64: partial}, "m", "2")
    by_class = {c.name: c for c in report.classes}
    assert (by_class["cat"].feedback_images, by_class["cat"].champion_correct, by_class["cat"].challenger_correct) == (1, 1, 1)
    assert by_class["dog"].feedback_images == 0, "a blank box is no verdict on the challenger's dog"
    full = build_report([(champion, challenger)], {"e" * 64: Truth(frozenset({"cat"}))}, "m", "2")
    assert {c.name: c.challenger_correct for c in full.classes} == {"cat": 1, "dog": 0}, "labelled in full, dog is absent"
