"""What one client may cost: its request rate, the bytes it uploads, and the disk its open
corrections hold. limits.py bounds what all requests cost together; these bounds keep one client
(a script, a hostile host) from taking that whole budget from the others.

A client is its address (an IPv6 client by its /64, the block one host usually holds). A client
on this machine is exempt while `serve.trust_loopback` is on: the photographer serving their own
library from 127.0.0.1, or their import script, is never throttled by their own server. Behind a
reverse proxy on the same host every client looks local and shares one address: turn
trust_loopback off there, and every client then shares one budget, which the proxy should split.

Rates are token buckets kept in memory, per replica, for at most `MAX_CLIENTS` clients (the least
recently seen are forgotten first, so the table itself is bounded). The storage quota is read from
the queue every time, so it holds across replicas and restarts.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from multitag.config import ServeParams
from multitag.feedback.queue import FeedbackQueue
from multitag.serving.access import is_loopback
from multitag.serving.limits import declared_length, retry_later, sends_body
from multitag.serving.problems import http_problem

MAX_CLIENTS = 10_000
MB = 1_000_000


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `per_second`: a burst of the whole capacity, then an even rate."""

    capacity: float
    per_second: float
    tokens: float
    at: float

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` tokens (at most the capacity: any request passes once full) are there; 0: now."""
        self.tokens, self.at = min(self.capacity, self.tokens + (now - self.at) * self.per_second), now
        return max(0.0, min(amount, self.capacity) - self.tokens) / self.per_second

    def spend(self, amount: float) -> None:
        self.tokens -= min(amount, self.capacity)


def client_key(address: str | None) -> str:
    """Whom a rate counts against: the address, or an IPv6 address's /64 (one host can use all of it)."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return address or "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip.ipv4_mapped or ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def exempt(address: str | None, serve: ServeParams) -> bool:
    """A client on this machine while loopback is trusted: the server's own user."""
    return serve.trust_loopback and is_loopback(address)


class ClientRates:
    """429 `rate_limited` (with Retry-After) for a request with a body beyond its client's share:
    `serve.client_requests_per_minute` requests, and `serve.client_upload_mb_per_hour` megabytes
    by their declared length (a chunked body counts as the largest allowed). Each budget may be
    spent at once (a burst), then refills evenly."""

    def __init__(self, app: ASGIApp, serve: ServeParams, largest_body: int):
        self.app, self.serve, self.largest_body = app, serve, largest_body
        self._buckets: OrderedDict[str, tuple[TokenBucket, TokenBucket]] = OrderedDict()
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = scope["client"][0] if scope.get("client") else None
        if not sends_body(scope) or exempt(address, self.serve):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        wait = self._take(client_key(address), self.largest_body if declared is None else declared)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            message = f"this client sent more than its share of requests or bytes: try again in {retry} s"
            await retry_later(429, "rate_limited", message, retry)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _take(self, key: str, size: int) -> float:
        """0 when the request fits both of the client's budgets (then both are charged), else the
        seconds until it would (then neither is)."""
        now = time.monotonic()
        with self._lock:
            buckets = self._buckets.pop(key, None) or self._new_buckets(now)
            self._buckets[key] = buckets  # the most recently seen last
            while len(self._buckets) > MAX_CLIENTS:
                self._buckets.popitem(last=False)
            limits = (self.serve.client_requests_per_minute, self.serve.client_upload_mb_per_hour)
            charges = [(bucket, amount) for bucket, amount, limit in zip(buckets, (1, size), limits) if limit]
            wait = max((bucket.wait_for(amount, now) for bucket, amount in charges), default=0.0)
            if wait == 0:
                for bucket, amount in charges:
                    bucket.spend(amount)
            return wait

    def _new_buckets(self, now: float) -> tuple[TokenBucket, TokenBucket]:
        per_minute, mb_per_hour = self.serve.client_requests_per_minute or 1, (self.serve.client_upload_mb_per_hour or 1) * MB
        return TokenBucket(per_minute, per_minute / 60, per_minute, now), TokenBucket(mb_per_hour, mb_per_hour / 3600, mb_per_hour, now)


def check_storage_quota(queue: FeedbackQueue, client: str | None, adding: int, serve: ServeParams) -> None:
    """507 `client_quota_exceeded` when `client`'s open corrections keep more image bytes on disk
    than `serve.client_storage_mb` allows with `adding` more. `client` None (an exempt client, the
    admin) always passes. Checked before the item is added, so concurrent requests of one client
    can overshoot by what is in flight (serve.max_requests_in_flight), never more."""
    if client is None or not serve.client_storage_mb:
        return
    limit = int(serve.client_storage_mb * MB)
    held = sum(queue.images.size(sha) for sha in queue.open_images_of(client))
    if held + adding > limit:
        message = (
            f"your open corrections keep {held / MB:.1f} MB of images and the limit per client is {serve.client_storage_mb:g} MB "
            "(serve.client_storage_mb): they are freed as the next retraining consumes them"
        )
        raise http_problem(507, "client_quota_exceeded", message)
