"""Who may call what: the admin and reviewer credentials, and the host names the server answers to.

Three roles (README, "Who can call what"):
- anyone who can reach the server: predict, send corrections, read the model, health, counts;
- a reviewer (`Authorization: Bearer $MULTITAG_REVIEWER_TOKEN`, or the admin token): other users'
  photos and logged answers (`/review`, `/images/...`, the page's Review view);
- an admin (`Authorization: Bearer $MULTITAG_ADMIN_TOKEN`): `/retrain`, `/admin/...`.

With no reviewer or admin token set, the reviewer's endpoints answer only clients on this machine
(loopback, `serve.trust_loopback`): the photographer serving their own library on 127.0.0.1 needs no
token, while a server bound to a network address shows nobody's photos to the network until a
token is set. Behind a reverse proxy on the same host every client looks local: set
`serve.trust_loopback: false` there.

`TrustedHosts` answers only requests whose `Host` is an IP address, localhost or a name listed in
`serve.allowed_hosts`: a DNS-rebinding page reaches the server under the attacker's own domain
name, which is none of these, so it can neither read the endpoints nor post to them.
"""

from __future__ import annotations

import hmac
import ipaddress
import os

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from multitag.config import ServeParams
from multitag.serving.problems import http_problem, problem

LOCAL_NAMES = frozenset({"localhost"})


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, expected: str) -> bool:
    return bool(token and expected) and hmac.compare_digest(token.encode(), expected.encode())


def check_admin(request: Request, serve: ServeParams) -> None:
    """Admin endpoints need the admin token; without one configured they are off, never open."""
    expected = os.environ.get(serve.admin_token_env, "")
    if not expected:
        raise http_problem(403, "disabled", f"admin endpoints are disabled: set {serve.admin_token_env} on the server to enable them")
    if not _matches(bearer_token(request), expected):
        raise http_problem(401, "unauthorized", "send `Authorization: Bearer <admin token>`", headers={"WWW-Authenticate": "Bearer"})


def check_reviewer(request: Request, serve: ServeParams) -> None:
    """Other users' photos and answers need the reviewer (or admin) token; with neither configured,
    only a client on this machine may see them (serve.trust_loopback), a network client gets 403."""
    tokens = [value for name in (serve.reviewer_token_env, serve.admin_token_env) if (value := os.environ.get(name, ""))]
    if tokens:
        if not any(_matches(bearer_token(request), expected) for expected in tokens):
            raise http_problem(
                401,
                "reviewer_token_required",
                "other users' photos and answers need `Authorization: Bearer <reviewer token>` (the page asks for it)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    if serve.trust_loopback and is_loopback(request.client.host if request.client else None):
        return
    message = (
        f"reviewing other users' photos is open only to this machine until a reviewer token is set: "
        f"set {serve.reviewer_token_env} on the server and send it as `Authorization: Bearer <token>`"
    )
    raise http_problem(403, "reviewer_token_not_set", message)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name or address of a `Host` header, without port or IPv6 brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def trusted_host(host_header: str, allowed_hosts: list[str]) -> bool:
    """An IP address, localhost, or a listed name (`*` lists every name; `.example.org` its subdomains too)."""
    name = host_name(host_header)
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True  # an address is never a rebinding attacker's name
    except ValueError:
        pass
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    for allowed in (entry.strip().lower() for entry in allowed_hosts):
        if allowed == "*" or name == allowed or (allowed.startswith(".") and (name.endswith(allowed) or name == allowed[1:])):
            return True
    return False


class TrustedHosts:
    """400 `untrusted_host` for a request whose `Host` the server does not answer to (DNS rebinding)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]):
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers(scope=scope).get("host", "")
            if not trusted_host(host, self.allowed_hosts):
                message = (
                    f"this server does not answer to the host name {host_name(host)!r}: open it by its address, "
                    "or list the name in params.yaml serve.allowed_hosts"
                )
                await JSONResponse({"detail": problem("untrusted_host", message, host=host_name(host))}, status_code=400)(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)
