"""The API's behaviour over real HTTP on loopback: predictions, feedback, admin auth, hot reload
of the champion, and a corpus of malformed uploads that must each get a 4xx with a reason."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from corpus import bomb_png, encode, noise, solid, truncated

from multitag.lifecycle import registry
from multitag.lifecycle.predictor import Predictor
from multitag.serving import retrain_trigger

TOKEN = "test-admin-token"


def png(name: str, size: tuple[int, int] = (40, 30)) -> bytes:
    return encode(solid(name, size), "PNG")


def as_files(*items: tuple[str, bytes], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (name, data, "application/octet-stream")) for name, data in items]


def predict(url: str, *items: tuple[str, bytes]) -> httpx.Response:
    return httpx.post(f"{url}/predict", files=as_files(*items), timeout=30)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s"
        time.sleep(0.1)


def served_version(url: str) -> str | None:
    return httpx.get(f"{url}/health").json()["model_version"]


def new_version(champion, name: str) -> str:
    """Register the tiny model once more under `name` and make it the champion."""
    version = registry.register(champion.model_uri, name, {"architecture": "small_cnn"})
    registry.promote(name, version)
    return version


# -- predictions --------------------------------------------------------------------------------


def test_predict_one_image(tiny_server, tiny_champion):
    image = png("one")
    response = predict(tiny_server.url, ("one.png", image))
    assert response.status_code == 200, response.text
    (result,) = response.json()["predictions"]
    assert set(result) == {"filename", "labels", "probabilities", "model_version", "model_alias", "image_sha256"}
    assert result["filename"] == "one.png"
    assert result["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert (result["model_version"], result["model_alias"]) == (tiny_champion.version, "champion")
    assert list(result["probabilities"]) == tiny_champion.classes
    assert all(0 <= p <= 1 for p in result["probabilities"].values())
    above = [c for c, t in zip(tiny_champion.classes, tiny_champion.thresholds) if result["probabilities"][c] >= t]
    assert result["labels"] == above


def test_predict_batch_in_one_model_call(tiny_server, tiny_champion, monkeypatch):
    calls: list[tuple[int, ...]] = []
    original = Predictor.predict_arrays

    def spy(self, batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return original(self, batch)

    monkeypatch.setattr(Predictor, "predict_arrays", spy)
    items = [(f"img{i}.png", png(f"batch{i}", (20 + i, 30))) for i in range(3)]
    response = predict(tiny_server.url, *items)
    assert response.status_code == 200, response.text
    results = response.json()["predictions"]
    assert [r["filename"] for r in results] == [name for name, _ in items]
    assert [r["image_sha256"] for r in results] == [hashlib.sha256(data).hexdigest() for _, data in items]
    assert all(list(r["probabilities"]) == tiny_champion.classes for r in results)
    assert calls == [(3, tiny_champion.input_size, tiny_champion.input_size, 3)]


# -- feedback -----------------------------------------------------------------------------------


def test_feedback_by_sha_after_predict_merges_repeats(tiny_server):
    image = png("by-sha")
    sha = predict(tiny_server.url, ("a.png", image)).json()["predictions"][0]["image_sha256"]
    before = httpx.get(f"{tiny_server.url}/feedback/stats").json()
    form = {"image_sha256": sha, "labels": '["dog", "cat"]', "model_version": "1", "note": "two pets"}
    first = httpx.post(f"{tiny_server.url}/feedback", data=form)
    again = httpx.post(f"{tiny_server.url}/feedback", data={**form, "labels": "cat|dog"})
    assert first.status_code == again.status_code == 202, first.text
    assert first.json()["merged"] is False and again.json() == {**first.json(), "merged": True}
    after = httpx.get(f"{tiny_server.url}/feedback/stats").json()
    assert after["total"] == before["total"] + 1


def test_feedback_by_file(tiny_server):
    image = png("by-file")
    response = httpx.post(f"{tiny_server.url}/feedback", data={"labels": "person"}, files={"file": ("p.png", image, "image/png")})
    assert response.status_code == 202, response.text
    assert response.json()["image_sha256"] == hashlib.sha256(image).hexdigest()
    assert httpx.get(f"{tiny_server.url}/feedback/stats").json()["pending_labels"]["person"] >= 1


@pytest.mark.parametrize("labels", ["[]", '[" "]', " | "])
def test_feedback_without_any_label_is_refused_with_a_reason(tiny_server, labels):
    """Validation quarantines an image with fewer than validate.min_labels labels, so the API refuses it up front."""
    before = httpx.get(f"{tiny_server.url}/feedback/stats").json()["total"]
    response = httpx.post(f"{tiny_server.url}/feedback", data={"labels": labels}, files={"file": ("n.png", png("nothing"), "image/png")})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["reason"] == "no_labels" and "at least 1" in detail["message"]
    assert httpx.get(f"{tiny_server.url}/feedback/stats").json()["total"] == before, "nothing was queued"


@pytest.mark.parametrize(
    ("form", "status", "reason"),
    [
        ({"labels": '["cat", "unicorn", "yeti"]'}, 422, "unknown_classes"),
        ({"labels": "cat|unicorn"}, 422, "unknown_classes"),
        ({"labels": '["cat"'}, 422, "bad_labels"),
        ({"labels": "[1, 2]"}, 422, "bad_labels"),
    ],
)
def test_feedback_bad_labels(tiny_server, form, status, reason):
    response = httpx.post(f"{tiny_server.url}/feedback", data={"image_sha256": "0" * 64, **form})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["reason"] == reason
    if reason == "unknown_classes":
        assert "unicorn" in detail["message"] and "cat" not in detail["unknown"]


@pytest.mark.parametrize(
    ("form", "files", "status", "reason"),
    [
        ({"image_sha256": "f" * 64, "labels": "cat"}, None, 404, "unknown_image"),
        ({"image_sha256": "not-a-hash", "labels": "cat"}, None, 422, "bad_sha256"),
        ({"labels": "cat"}, None, 422, "image_missing"),
        ({"image_sha256": "f" * 64, "labels": "cat"}, {"file": ("x.png", png("both"), "image/png")}, 422, "image_missing"),
        ({"labels": "cat"}, {"file": ("x.jpg", b"plain text", "image/jpeg")}, 415, "not_an_image"),
        ({"labels": "cat"}, {"file": ("x.png", truncated(noise("PNG")), "image/png")}, 422, "truncated"),
    ],
)
def test_feedback_bad_image_reference(tiny_server, form, files, status, reason):
    response = httpx.post(f"{tiny_server.url}/feedback", data=form, files=files)
    assert response.status_code == status, response.text
    assert response.json()["detail"]["reason"] == reason


def test_feedback_without_labels_is_422(tiny_server):
    assert httpx.post(f"{tiny_server.url}/feedback", data={"image_sha256": "f" * 64}).status_code == 422


# -- model information, UI ----------------------------------------------------------------------


def test_health_model_stats_and_ui(tiny_server, tiny_champion):
    health = httpx.get(f"{tiny_server.url}/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert health["model_version"] == tiny_champion.version and health["limits"]["max_files"] == 4
    model = httpx.get(f"{tiny_server.url}/model").json()
    assert model["classes"] == tiny_champion.classes
    assert model["thresholds"] == pytest.approx(dict(zip(tiny_champion.classes, tiny_champion.thresholds)))
    assert (model["architecture"], model["alias"], model["metrics"]) == ("small_cnn", "champion", {"test_mAP": 0.5})
    stats = httpx.get(f"{tiny_server.url}/feedback/stats").json()
    assert {"pending", "claimed", "consumed", "rejected", "total", "pending_labels"} <= set(stats)
    page = httpx.get(f"{tiny_server.url}/")
    assert page.status_code == 200 and 'id="file-input"' in page.text
    assert httpx.get(f"{tiny_server.url}/static/app.js").status_code == 200


# -- admin --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/admin/reload", "/retrain"])
def test_admin_disabled_without_configured_token(tiny_server, monkeypatch, path):
    monkeypatch.delenv("MULTITAG_ADMIN_TOKEN", raising=False)
    response = httpx.post(f"{tiny_server.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 403
    assert response.json()["detail"]["reason"] == "disabled"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}])
def test_admin_rejects_wrong_token(tiny_server, monkeypatch, headers):
    monkeypatch.setenv("MULTITAG_ADMIN_TOKEN", TOKEN)
    response = httpx.post(f"{tiny_server.url}/admin/reload", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_admin_reload_with_token(tiny_server, tiny_champion, monkeypatch):
    monkeypatch.setenv("MULTITAG_ADMIN_TOKEN", TOKEN)
    response = httpx.post(f"{tiny_server.url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"changed": False, "model_loaded": True, "model_version": tiny_champion.version}


def test_retrain_queues_images_and_triggers_a_run(registry_env, live_server, serve_params, monkeypatch):
    monkeypatch.setenv("MULTITAG_ADMIN_TOKEN", TOKEN)
    triggered: list[int] = []

    def fake_trigger() -> dict[str, str]:
        triggered.append(1)
        return {"via": "test"}

    server = live_server(serve_params(registry_env.name), retrain_trigger=fake_trigger)

    def retrain(labels: str | list[str], *names: str) -> httpx.Response:
        """POST /retrain as the admin: these label fields, one photo per name."""
        files = as_files(*((f"{name}.png", png(f"retrain-{name}")) for name in names))
        return httpx.post(
            f"{server.url}/retrain", headers={"Authorization": f"Bearer {TOKEN}"}, data={"labels": labels}, files=files, timeout=30
        )

    response = retrain("cat|dog", "a", "b")
    assert response.status_code == 202, response.text
    body = response.json()
    assert [item["merged"] for item in body["queued"]] == [False, False]
    assert body["triggered"] == {"via": "test"} and triggered == [1]
    assert httpx.get(f"{server.url}/feedback/stats").json()["pending_labels"] == {"cat": 2, "dog": 2}
    mismatch = retrain(["cat", "dog", "person"], "a", "b")
    assert mismatch.status_code == 422 and mismatch.json()["detail"]["reason"] == "labels_mismatch"
    nested = retrain('[["person", "cat"], ["dog"]]', "c", "d")  # the original API's form: one label list per file
    assert nested.status_code == 202, nested.text
    assert httpx.get(f"{server.url}/feedback/stats").json()["pending_labels"] == {"cat": 3, "dog": 3, "person": 1}
    one_short = retrain('[["dog"]]', "e", "f")
    assert one_short.status_code == 202, "a single nested set is one label set for every file, as a flat one is"


def test_retrain_trigger_follows_the_environment(monkeypatch, tmp_path):
    """The run reads the server's own params file, through Prefect or as a local process."""
    monkeypatch.setattr(
        retrain_trigger, "run_prefect_deployment", lambda name, params_path: {"via": "prefect", "deployment": name, "params": params_path}
    )
    monkeypatch.setattr(
        retrain_trigger, "start_flow_process", lambda command, log_path: {"via": "subprocess", "command": " ".join(command)}
    )
    monkeypatch.setenv(retrain_trigger.RETRAIN_DEPLOYMENT_ENV, "nightly-retraining/nightly")
    assert retrain_trigger.retrain_trigger_from_env(tmp_path / "log", "site.yaml")() == {
        "via": "prefect",
        "deployment": "nightly-retraining/nightly",
        "params": "site.yaml",
    }
    monkeypatch.delenv(retrain_trigger.RETRAIN_DEPLOYMENT_ENV)
    command = retrain_trigger.retrain_trigger_from_env(tmp_path / "log", "site.yaml")()["command"]
    assert command == f"{sys.executable} -m flows.nightly_retraining site.yaml"


def test_flow_process_runs_detached_and_logs(tmp_path):
    started = retrain_trigger.start_flow_process([sys.executable, "-c", "print('retraining ran')"], tmp_path / "logs" / "retrain.log")
    assert started["via"] == "subprocess" and int(started["pid"]) > 0
    wait_for(lambda: "retraining ran" in (tmp_path / "logs" / "retrain.log").read_text(), timeout_s=20)


# -- the champion appears and moves -------------------------------------------------------------


def test_503_until_a_champion_exists_then_served_without_restart(registry_env, fresh_model_name, live_server, serve_params, monkeypatch):
    monkeypatch.setenv("MULTITAG_ADMIN_TOKEN", TOKEN)
    server = live_server(serve_params(fresh_model_name, reload_interval_s=3600))  # only /admin/reload can pick it up
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["model_loaded"] is False
    response = predict(server.url, ("early.png", png("early")))
    assert response.status_code == 503
    assert f"no model yet: no champion of {fresh_model_name}; run `make demo`" in response.json()["detail"]["message"]
    assert httpx.get(f"{server.url}/model").status_code == 503

    version = new_version(registry_env, fresh_model_name)
    reload = httpx.post(f"{server.url}/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert reload.json() == {"changed": True, "model_loaded": True, "model_version": version}
    response = predict(server.url, ("later.png", png("later")))
    assert response.status_code == 200 and response.json()["predictions"][0]["model_version"] == version


def test_hot_reload_follows_the_champion_alias(registry_env, fresh_model_name, live_server, serve_params):
    first = new_version(registry_env, fresh_model_name)
    server = live_server(serve_params(fresh_model_name))
    assert predict(server.url, ("a.png", png("hot"))).json()["predictions"][0]["model_version"] == first
    second = new_version(registry_env, fresh_model_name)
    wait_for(lambda: served_version(server.url) == second)
    assert predict(server.url, ("a.png", png("hot"))).json()["predictions"][0]["model_version"] == second


# -- malformed uploads: every one a 4xx with a reason, never a 5xx -------------------------------


def _chunked_body() -> dict:
    """A valid multipart start, then 1.2 MB streamed without Content-Length: the server must count."""
    head = b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="stream.jpg"\r\n\r\n'
    return {"content": iter([head, *[b"x" * 100_000] * 12]), "headers": {"content-type": "multipart/form-data; boundary=zzz"}}


MALFORMED = {
    "truncated_jpeg": ({"files": as_files(("cut.jpg", truncated(noise("JPEG"))))}, 422, "truncated"),
    "truncated_png": ({"files": as_files(("cut.png", truncated(noise("PNG"))))}, 422, "truncated"),
    "zero_bytes": ({"files": as_files(("empty.jpg", b""))}, 422, "empty_file"),
    "text_as_jpg": ({"files": as_files(("notes.jpg", b"this is not a picture\n" * 20))}, 415, "not_an_image"),
    "huge_dimensions_png": ({"files": as_files(("bomb.png", bomb_png()))}, 422, "decompression_bomb"),
    "one_bad_file_in_batch": ({"files": as_files(("ok.png", png("fine")), ("bad.jpg", b"nope"))}, 415, "not_an_image"),
    "wrong_field_name": ({"files": as_files(("ok.png", png("fine")), field="image")}, 422, None),
    "plain_form_field": ({"data": {"files": "not a file"}}, 422, None),
    "json_body": ({"json": {"files": ["a.png"]}}, 422, None),
    "no_body": ({}, 422, None),
    "too_many_files": ({"files": as_files(*[(f"{i}.png", png(f"many{i}")) for i in range(5)])}, 413, "too_many_files"),
    "file_too_large": ({"files": as_files(("big.jpg", b"\xff\xd8\xff" + b"0" * 250_000))}, 413, "file_too_large"),
    "request_too_large": ({"files": as_files(("huge.jpg", b"\xff\xd8\xff" + b"0" * 1_000_000))}, 413, "request_too_large"),
    "chunked_request_too_large": (_chunked_body(), 413, "request_too_large"),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_upload_gets_4xx_with_reason(tiny_server, case):
    request, status, reason = MALFORMED[case]
    response = httpx.post(f"{tiny_server.url}/predict", timeout=30, **request)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    if reason is None:  # FastAPI's own validation error names the missing or wrong field
        assert detail and all("loc" in item and "msg" in item for item in detail)
    else:
        assert detail["reason"] == reason and detail["message"]
    assert httpx.get(f"{tiny_server.url}/health").json()["model_loaded"]


def test_openapi_documents_the_bodies_the_web_page_reads(tiny_server):
    """Response models, not bare dicts: /openapi.json names every field the page and clients use."""
    schema = httpx.get(f"{tiny_server.url}/openapi.json").json()
    components = schema["components"]["schemas"]
    assert {"image_sha256", "labels", "probabilities", "model_version"} <= set(components["Prediction"]["properties"])
    assert {"model_loaded", "limits", "last_error"} <= set(components["Health"]["properties"])
    predict_ok = schema["paths"]["/predict"]["post"]["responses"]
    assert predict_ok["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Predictions")
    assert predict_ok["415"]["content"]["application/json"]["schema"]["$ref"].endswith("/ProblemResponse")


def test_importing_the_app_module_builds_no_app():
    """uvicorn --factory: importing reads no params and opens no queue or registry."""
    import multitag.serving.app as app_module

    assert not hasattr(app_module, "app") and callable(app_module.create_app)
