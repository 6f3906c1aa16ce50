"""What one client may cost (issue 22, part 3): a network client beyond its request rate or upload
volume gets 429 with Retry-After, and beyond the disk its open corrections may keep 507; other
clients are untouched, and the server's own user (a loopback client while trust_loopback is on) is
never throttled. The whole app runs in Starlette's TestClient, which names the client's address.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import LOCAL_CLIENT, NETWORK_CLIENT
from fastapi.testclient import TestClient
from PIL import Image

from multitag.serving.quotas import TokenBucket, client_key

OTHER_CLIENT = ("198.51.100.9", 40000)


def noise_png(seed: int, side: int = 90) -> bytes:
    """A PNG of random pixels: about 3 bytes per pixel, whatever the compressor does (24 KB at 90 x 90)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def predict(client: TestClient, seed: int = 0):
    return client.post("/predict", files={"files": ("photo.png", noise_png(seed, 12), "image/png")})


def correct(client: TestClient, seed: int, label: str):
    return client.post("/feedback", data={"labels": label}, files={"file": (f"{seed}.png", noise_png(seed), "image/png")})


def same_app(client: TestClient, address: tuple[str, int]) -> TestClient:
    """Another client of the running app (its lifespan is already up)."""
    return TestClient(client.app, base_url="http://127.0.0.1:8000", client=address)


def test_a_network_client_beyond_its_request_rate_waits_and_others_do_not(app_for):
    client = app_for(NETWORK_CLIENT, client_requests_per_minute=3)
    assert [predict(client, i).status_code for i in range(3)] == [200] * 3, "a burst of the whole budget passes"
    refused = predict(client, 3)
    assert refused.status_code == 429 and refused.json()["detail"]["reason"] == "rate_limited", refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 20, "one request's worth refills in 20 s at 3 per minute"
    assert predict(same_app(client, OTHER_CLIENT)).status_code == 200, "another client has its own budget"
    assert client.get("/health").status_code == 200, "reading is never rate-limited"


def test_the_servers_own_user_is_never_throttled_unless_loopback_is_not_trusted(app_for):
    local = app_for(LOCAL_CLIENT, client_requests_per_minute=1)
    assert [predict(local, i).status_code for i in range(4)] == [200] * 4
    proxied = app_for(LOCAL_CLIENT, client_requests_per_minute=1, trust_loopback=False)
    assert [predict(proxied, i).status_code for i in range(2)] == [200, 429]


def test_a_network_client_beyond_its_upload_volume_gets_429(app_for):
    client = app_for(NETWORK_CLIENT, client_requests_per_minute=0, client_upload_mb_per_hour=0.04)  # 40 KB an hour
    photo = {"files": ("photo.png", noise_png(1), "image/png")}  # 24 KB
    assert client.post("/predict", files=photo).status_code == 200
    refused = client.post("/predict", files=photo)
    assert refused.status_code == 429 and refused.json()["detail"]["reason"] == "rate_limited", refused.text
    assert int(refused.headers["Retry-After"]) > 60, "8 KB missing refill at 40 KB an hour: minutes"


def test_a_clients_open_corrections_may_keep_only_its_quota_on_disk(app_for, registry_env):
    label = registry_env.classes[0]
    client = app_for(NETWORK_CLIENT, client_storage_mb=0.06)  # room for two 24 KB photos
    assert [correct(client, seed, label).status_code for seed in (1, 2)] == [202, 202]
    refused = correct(client, 3, label)
    assert refused.status_code == 507, refused.text
    assert refused.json()["detail"]["reason"] == "client_quota_exceeded" and "serve.client_storage_mb" in refused.text
    assert correct(same_app(client, OTHER_CLIENT), 4, label).status_code == 202, "the quota is per client"
    assert correct(same_app(client, LOCAL_CLIENT), 5, label).status_code == 202, "the server's own user has none"
    queue = client.app.state.services.queue
    queue.reject([item.id for item in queue.list_items("pending")], "checked by an admin")
    assert correct(client, 3, label).status_code == 202, "decided corrections no longer count"


def test_a_bucket_bursts_its_capacity_then_refills_evenly():
    bucket = TokenBucket(capacity=2, per_second=1, tokens=2, at=0.0)
    assert bucket.wait_for(1, now=0.0) == 0
    bucket.spend(1)
    bucket.spend(1)
    assert bucket.wait_for(1, now=0.5) == 0.5
    assert bucket.wait_for(5, now=2.0) == 0, "a request larger than the capacity passes once the bucket is full"


def test_an_ipv6_client_is_one_client_across_its_64_block():
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7" == client_key("203.0.113.7")


@pytest.mark.parametrize(("proxies", "answers"), [(["127.0.0.1"], [200, 200, 429]), ([], [200, 429, 429])])
def test_multitag_serve_takes_the_client_from_x_forwarded_for_only_from_a_trusted_proxy(registry_env, tmp_path, proxies, answers):
    """Behind a load balancer every request comes from its address: `multitag serve` takes the
    client from X-Forwarded-For when the sender is in serve.trusted_proxies (then each client keeps
    its own budget), and ignores the header from anyone else (a client cannot pick its own name)."""
    import os

    import httpx
    import yaml
    from engines import ApiServer

    settings = {
        "registry": {"model_name": registry_env.name},
        "serve": {"trust_loopback": False, "client_requests_per_minute": 1, "trusted_proxies": proxies},
        "feedback": {"db_path": str(tmp_path / "queue.db"), "images_dir": str(tmp_path / "images")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    server = ApiServer.start(tmp_path, {**os.environ, **registry_env.env}, tmp_path / "serve.log")
    try:

        def from_client(address: str) -> int:
            files = {"files": ("photo.png", noise_png(7, 12), "image/png")}
            return httpx.post(f"{server.url}/predict", files=files, headers={"X-Forwarded-For": address}, timeout=60).status_code

        assert [from_client("203.0.113.1"), from_client("203.0.113.2"), from_client("203.0.113.1")] == answers
    finally:
        server.stop()
