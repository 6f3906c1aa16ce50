"""Cross-site posts refused: a page on another site cannot make a visitor's browser post to this API.

Browsers name the page a request comes from in `Origin` (or, on older paths, only in `Referer`).
A state-changing request (POST and the like) from a page of another origin gets 403 before it is
read. Requests that name no page at all (curl, scripts, other services) are not from a browser
page and pass: a cross-site attacker cannot make a browser leave both headers out of a POST.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from multitag.serving.problems import problem

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SameOriginPosts:
    """403 `cross_origin` for a browser's state-changing request from a page of another origin.

    The server's own origin is the host and port the browser addressed (its `Host` header), so the
    page served here may post whichever name or address it was opened under; `allowed_origins`
    adds other sites (`scheme://host:port`) whose pages may post too.
    """

    def __init__(self, app: ASGIApp, allowed_origins: list[str]):
        self.app = app
        self.allowed = {origin.strip().rstrip("/").lower() for origin in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = page_origin(headers)
            if origin is not None and not self._allowed(origin, headers.get("host", "").lower()):
                await JSONResponse({"detail": self._refused(origin)}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        return origin in self.allowed or (bool(host) and urlsplit(origin).netloc == host)

    def _refused(self, origin: str) -> dict:
        message = (
            f"cross-site request refused: a page of {origin} may not post here. Use the web page this server serves, "
            "send the request without a browser, or list that origin in params.yaml serve.allowed_origins"
        )
        return problem("cross_origin", message, origin=origin)


def page_origin(headers: Headers) -> str | None:
    """The origin (`scheme://host[:port]`, lower case) of the page that sent the request, or None when none is named.

    `Origin: null` (a sandboxed or file:// page) is an origin too, and never ours.
    """
    if origin := headers.get("origin", "").strip():
        return origin.rstrip("/").lower()
    referer = urlsplit(headers.get("referer", "").strip())
    if not referer.scheme or not referer.hostname:
        return None
    return f"{referer.scheme}://{referer.netloc.rpartition('@')[2]}".lower()
