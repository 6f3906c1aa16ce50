"""What a request may cost the server (issue 22, part 2): an image whose decoded pixels would need
more than `serve.max_decode_mb` is refused before decoding (a 158 KB 16-bit PNG once took a replica
from 1 to 8 GB), high bit depths are converted without float64 copies, decodes take turns
(`serve.decode_slots`), and uploads beyond `serve.max_requests_in_flight` or `serve.max_upload_mb_in_flight`
get 503 with Retry-After.
"""

from __future__ import annotations

import io
import socket
import threading
import time
import tracemalloc
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from corpus import encode, solid
from PIL import Image

from multitag.config import Params
from multitag.data import images
from multitag.serving.limits import DecodeBudget, decode_budget

BOMB_SIDE = 8900  # 79 MP, under the 80 MP pixel cap: 158 MB as 16-bit grey, once 1.3 GB through float64


@pytest.fixture(scope="module")
def grey16_bomb() -> bytes:
    """A 16-bit greyscale PNG of 8,900 x 8,900 pixels that compresses to about 150 KB."""
    pixels = np.zeros((BOMB_SIDE, BOMB_SIDE), dtype=np.uint16)
    pixels[::7] = 60000
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 300_000
    return buffer.getvalue()


def test_a_16_bit_bomb_is_refused_by_predict_and_feedback_before_it_is_decoded(registry_env, live_server, serve_params, grey16_bomb):
    server = live_server(serve_params(registry_env.name))
    answer = httpx.post(f"{server.url}/predict", files={"files": ("bomb.png", grey16_bomb, "image/png")}, timeout=60)
    assert answer.status_code == 422, answer.text
    (problem,) = answer.json()["detail"]["files"]
    assert problem["reason"] == "too_large_to_decode" and "serve.max_decode_mb" in problem["detail"]
    queued = httpx.post(
        f"{server.url}/feedback",
        data={"labels": registry_env.classes[0]},
        files={"file": ("bomb.png", grey16_bomb, "image/png")},
        timeout=60,
    )
    assert queued.status_code == 422 and queued.json()["detail"]["reason"] == "too_large_to_decode", queued.text
    photo = encode(solid("an ordinary photo", (640, 480)), "JPEG")
    assert httpx.post(f"{server.url}/predict", files={"files": ("ok.jpg", photo, "image/jpeg")}, timeout=60).status_code == 200


def test_a_large_jpeg_is_judged_at_the_scale_it_is_decoded_at():
    """A 40 MP JPEG decodes in draft mode to twice the model's size: it fits any budget."""
    photo = encode(solid("a big camera photo", (7744, 5184)), "JPEG")
    assert images.decode(photo, 224, max_bytes=8_000_000).shape == (224, 224, 3)
    assert images.inspect(photo, max_bytes=64_000_000).width == 7744


def test_16_bit_and_32_bit_grey_are_converted_without_float64_copies():
    side = 2000
    for image in (Image.fromarray(np.full((side, side), 30000, dtype=np.uint16)), Image.fromarray(np.full((side, side), 3e4, np.float32))):
        image.load()
        tracemalloc.start()
        try:
            converted = images.to_rgb(image)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert converted.mode == "RGB"
        assert peak / side**2 < 10, f"{image.mode}: {peak / side**2:.1f} bytes per pixel (a float64 copy alone is 8)"


def test_decodes_take_turns_across_threads():
    """`decode_slots` images at most are decoded at once, however many threads ask."""
    budget = decode_budget(Params.model_validate({"serve": {"decode_slots": 2}}))
    busy, peak, lock = [0], [0], threading.Lock()

    class CountingPredictor:  # a stand-in model input decoder that records how many decode at once
        def decode(self, data: bytes, max_pixels: int, max_bytes: int) -> np.ndarray:
            with lock:
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
            time.sleep(0.05)
            with lock:
                busy[0] -= 1
            return np.zeros((1, 1, 3), np.uint8)

    threads = [threading.Thread(target=budget.decode, args=(CountingPredictor(), b"x")) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2
    assert isinstance(budget, DecodeBudget) and budget.max_bytes == 64_000_000


def _hold_an_upload_open(url: str) -> socket.socket:
    """A POST /predict whose body never finishes arriving: the server counts it in flight."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        "Content-Length: 100000\r\n\r\n--x\r\n".encode()
    )
    return sock


def test_uploads_beyond_the_in_flight_limit_get_503_with_retry_after(registry_env, live_server, serve_params):
    server = live_server(serve_params(registry_env.name, max_requests_in_flight=1))
    photo = encode(solid("a photo", (64, 48)), "PNG")
    held = _hold_an_upload_open(server.url)
    try:
        deadline = time.monotonic() + 10
        while (busy := httpx.post(f"{server.url}/predict", files={"files": ("a.png", photo, "image/png")}, timeout=30)).status_code != 503:
            assert time.monotonic() < deadline, f"never refused: {busy.status_code}"
            time.sleep(0.1)
        assert busy.headers["retry-after"] == "1" and busy.json()["detail"]["reason"] == "busy"
        assert httpx.get(f"{server.url}/health").status_code == 200, "reading endpoints are not counted"
    finally:
        held.close()
    deadline = time.monotonic() + 10
    while (answer := httpx.post(f"{server.url}/predict", files={"files": ("a.png", photo, "image/png")}, timeout=30)).status_code == 503:
        assert time.monotonic() < deadline, "the slot never came back after the held upload ended"
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def test_the_bytes_in_flight_are_bounded_not_only_the_requests(registry_env, live_server, serve_params):
    """With 100 KB of an upload in flight and room for 150 KB, a 60 KB upload waits (503) while a
    small correction-sized one gets in: many small requests at once are no danger."""
    server = live_server(serve_params(registry_env.name, max_upload_mb_in_flight=0.15))
    big = {
        "files": (
            "big.png",
            encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (140, 140, 3), dtype=np.uint8)), "PNG"),
            "image/png",
        )
    }
    small = {"files": ("small.png", encode(solid("a photo", (64, 48)), "PNG"), "image/png")}
    held = _hold_an_upload_open(server.url)
    try:
        deadline = time.monotonic() + 10
        while (busy := httpx.post(f"{server.url}/predict", files=big, timeout=30)).status_code != 503:
            assert time.monotonic() < deadline, f"never refused: {busy.status_code}"
            time.sleep(0.1)
        assert busy.json()["detail"]["reason"] == "busy"
        assert httpx.post(f"{server.url}/predict", files=small, timeout=30).status_code == 200
    finally:
        held.close()
