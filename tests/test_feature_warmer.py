"""The server computes corrected photos' member outputs while the user corrects (serving/feature_warmer.py),
under the keys the quick refit and the evaluation read (issue 21: the 2-minute quick path)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from corpus import encode, noise, solid

from multitag.lifecycle.predictor import Predictor
from multitag.modeling.ensemble import members
from multitag.modeling.feature_cache import cached_features, member_file, row_hashes


def send_and_correct(url: str, photo: bytes, labels: list[str]) -> str:
    """What a user does on the page: ask, then send the right labels for the photo by its hash."""
    answer = httpx.post(f"{url}/predict", files=[("files", ("photo.png", photo, "image/png"))], timeout=30)
    sha = answer.json()["predictions"][0]["image_sha256"]
    sent = httpx.post(f"{url}/feedback", data={"image_sha256": sha, "labels": json.dumps(labels)}, timeout=30)
    assert sent.status_code == 202, sent.text
    return sha


def uncomputed(path: Path, x: np.ndarray) -> int:
    """How many of these photos `path` has no outputs for (computing nothing)."""
    if not path.exists():
        return len(x)
    with np.load(path) as stored:
        known = set(stored["hashes"].tolist())
    return sum(key not in known for key in row_hashes(x))


@pytest.mark.parametrize("warm", [True, False])
def test_corrected_photos_are_in_the_feature_cache_before_any_retraining_asks(
    registry_env, live_server, serve_params, tmp_path, monkeypatch, warm
):
    monkeypatch.chdir(tmp_path)  # the server's project folder: its .multitag/features is the retraining's
    server = live_server(serve_params(registry_env.name, warm_features=warm))
    photos = [encode(solid("cat"), "PNG"), noise("PNG", seed=1), noise("PNG", seed=2)]
    for photo in photos:
        send_and_correct(server.url, photo, ["cat"])

    served = Predictor.from_uri(registry_env.model_uri, runtime="keras")
    network = members(served.model).network
    path = member_file(tmp_path / ".multitag" / "features", network, served.input_size, members(served.model).flip)
    pixels = np.stack([served.decode(photo) for photo in photos])  # as preprocessing decodes the exported photos
    deadline = time.monotonic() + 30
    while warm and uncomputed(path, pixels) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not warm:
        time.sleep(1.0)  # several polls of the server (reload_interval_s 0.2)
        assert not path.exists(), "serve.warm_features: false computes nothing"
        return
    assert uncomputed(path, pixels) == 0, "every corrected photo's network outputs were cached by the server"
    stored, _ = cached_features(path, pixels, lambda rows: np.zeros((len(rows), 1)))
    expected = network.predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose(stored, expected, atol=1e-5)  # the member's own outputs, not just any rows
