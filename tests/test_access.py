"""Who may see what (issue 22, part 1): other users' photos and logged answers (`/review`,
`/images/...`) need the reviewer or admin token, or, with no token set, a client on the server's own
machine; the server answers only host names it knows, so a DNS-rebinding page cannot read it.

The app runs whole (lifespan, middleware, the tiny champion's registry) in Starlette's TestClient,
which can name the client's address: a network client (203.0.113.7, a documentation address) or
this machine (127.0.0.1).
"""

from __future__ import annotations

import pytest
from conftest import LOCAL_CLIENT, NETWORK_CLIENT
from corpus import encode, solid
from fastapi.testclient import TestClient

from multitag.serving.access import host_name, trusted_host

REVIEWER, ADMIN = "reviewer-secret", "admin-secret"


def predicted_sha(client: TestClient, name: str) -> str:
    """Predict one photo (which the server stores for corrections) and return its hash."""
    answer = client.post("/predict", files={"files": (f"{name}.png", encode(solid(name, (40, 30)), "PNG"), "image/png")})
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]["image_sha256"]


def test_a_network_client_sees_no_other_users_photos_while_no_token_is_set(app_for):
    client = app_for(NETWORK_CLIENT)
    sha = predicted_sha(client, "someone-elses-photo")
    for path in ("/review", f"/images/{sha}", "/results"):
        refused = client.get(path)
        assert refused.status_code == 403, (path, refused.text)
        assert refused.json()["detail"]["reason"] == "reviewer_token_not_set"
        assert "MULTITAG_REVIEWER_TOKEN" in refused.json()["detail"]["message"]
    assert client.get("/health").status_code == 200 and client.get("/model").status_code == 200, "the public endpoints stay open"


def test_the_photographer_on_the_servers_own_machine_reviews_without_a_token(app_for):
    client = app_for(LOCAL_CLIENT)
    sha = predicted_sha(client, "my-own-photo")
    assert client.get("/review").status_code == 200
    assert client.get(f"/images/{sha}").status_code == 200


def test_behind_a_local_proxy_loopback_is_not_trusted(app_for):
    client = app_for(LOCAL_CLIENT, trust_loopback=False)
    assert client.get("/review").json()["detail"]["reason"] == "reviewer_token_not_set"


def test_with_a_reviewer_token_set_only_its_holder_or_the_admin_sees_photos(app_for, monkeypatch):
    monkeypatch.setenv("MULTITAG_REVIEWER_TOKEN", REVIEWER)
    monkeypatch.setenv("MULTITAG_ADMIN_TOKEN", ADMIN)
    for address in (NETWORK_CLIENT, LOCAL_CLIENT):  # once a token is set, it is needed from everywhere
        client = app_for(address)
        sha = predicted_sha(client, f"photo-{address[0]}")
        for path in ("/review", f"/images/{sha}", "/results"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": REVIEWER}):
                refused = client.get(path, headers=headers)
                assert refused.status_code == 401 and refused.json()["detail"]["reason"] == "reviewer_token_required", (path, headers)
            for token in (REVIEWER, ADMIN):
                let_in = client.get(path, headers={"Authorization": f"Bearer {token}"})
                # /results: past the check, the tiny champion has no stored answers to show
                expected = (404, "no_stored_results") if path == "/results" else (200, None)
                assert (let_in.status_code, let_in.json()["detail"]["reason"] if let_in.status_code != 200 else None) == expected, (
                    path,
                    token,
                )
        refused = client.post("/admin/reload", headers={"Authorization": f"Bearer {REVIEWER}"})
        assert refused.status_code == 401, "the reviewer is not an admin"


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("127.0.0.1:8000", True),
        ("192.168.1.20:8000", True),  # the server opened by its LAN address
        ("[::1]:8000", True),
        ("localhost:8000", True),
        ("tagger.example", True),  # listed
        ("photos.team.example:443", True),  # a subdomain of a listed ".team.example"
        ("evil.example", False),  # a rebinding page's own name
        ("tagger.example.evil.example", False),
        ("", False),
    ],
)
def test_host_allow_list(host, trusted):
    assert trusted_host(host, ["tagger.example", ".team.example"]) is trusted
    assert host_name("[::1]:8000") == "::1" and host_name("Tagger.Example:80") == "tagger.example"


def test_a_rebinding_host_name_reads_nothing_and_posts_nothing(app_for):
    client = app_for(LOCAL_CLIENT, allowed_hosts=["tagger.example"])
    sha = predicted_sha(client, "private-photo")
    evil = {"Host": "attacker.example:8000"}
    for method, path in (("GET", "/health"), ("GET", "/review"), ("GET", f"/images/{sha}"), ("POST", "/feedback")):
        refused = client.request(method, path, headers=evil, data={"labels": "cat", "image_sha256": sha})
        assert refused.status_code == 400, (path, refused.text)
        assert refused.json()["detail"]["reason"] == "untrusted_host"
    assert client.get("/review", headers={"Host": "tagger.example"}).status_code == 200
