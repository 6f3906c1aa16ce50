"""What one request, and all of them together, may cost the server: body size (refused before it is
parsed or spooled to disk), requests and their bytes in flight (503 with Retry-After beyond), and decoding (a few
images at a time, none needing more than `serve.max_decode_mb` decoded).

Memory is then bounded by construction: `serve.max_upload_mb_in_flight` for the bodies read,
plus `serve.decode_slots` x about three times `serve.max_decode_mb` for the pixels being decoded
(a decode holds the stored pixels, an orientation copy and a mode conversion at most), plus the
micro-batcher's queue, at most `serve.max_requests_in_flight` x `serve.max_files` decoded model
inputs. Counting bytes rather than requests lets many small corrections in at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from fastapi import HTTPException, UploadFile
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multitag.config import Params, ServeParams
from multitag.data import images
from multitag.lifecycle.predictor import Predictor
from multitag.serving.origin import SAFE_METHODS
from multitag.serving.problems import http_problem, problem

RETRY_AFTER_S = 1

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart headers and small form fields around the files


def sends_body(scope: Scope) -> bool:
    """An HTTP request whose body the server will hold: any method but origin.SAFE_METHODS."""
    return scope["type"] == "http" and scope["method"] not in SAFE_METHODS


def declared_length(scope: Scope) -> int | None:
    """The body's Content-Length; None when it declares none (a chunked body)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    return int(declared) if declared.isdigit() else None


def retry_later(status: int, reason: str, message: str, seconds: int) -> JSONResponse:
    """A refusal the client should repeat after `seconds` (503 busy, 429 rate limited)."""
    return JSONResponse({"detail": problem(reason, message)}, status_code=status, headers={"Retry-After": str(seconds)})


def body_limit_bytes(limits: ServeParams) -> int:
    """The largest body a valid request can have: every allowed file at its largest, plus the form."""
    return limits.max_files * limits.max_upload_bytes + FORM_OVERHEAD_BYTES


class BodySizeLimit:
    """Refuse request bodies over `limit_bytes` with 413 before they are parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, limit_bytes: int):
        self.app, self.limit_bytes = app, limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.limit_bytes:
            await JSONResponse({"detail": self._too_large()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:  # bodies without Content-Length (chunked)
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit_bytes:
                raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> dict:
        return problem("request_too_large", f"the request body exceeds {self.limit_bytes:,} bytes")


async def read_uploads(files: list[UploadFile], limits: ServeParams) -> list[tuple[str, bytes]]:
    """(filename, bytes) per upload, enforcing the file-count and per-file size limits (413)."""
    if len(files) > limits.max_files:
        raise http_problem(413, "too_many_files", f"{len(files)} files sent; at most {limits.max_files} per request")
    for upload in files:
        if upload.size is not None and upload.size > limits.max_upload_bytes:
            raise http_problem(
                413,
                "file_too_large",
                f"{upload.filename} has {upload.size:,} bytes; the limit is {limits.max_upload_bytes:,} per file",
                filename=upload.filename,
            )
    return [(upload.filename or f"file{i}", await upload.read()) for i, upload in enumerate(files)]


class RequestsInFlight:
    """503 `busy` (with Retry-After) for a request that sends a body while `limit` such requests, or
    `max_bytes` of their bodies (as declared; a chunked one counts as `largest_body`), are being
    served: every upload, correction and retrain holds its bytes until answered, so the bytes bound
    that memory, and the count bounds the micro-batcher's queue (at most `serve.max_files` inputs
    each). A request is always admitted when nothing else is in flight."""

    def __init__(self, app: ASGIApp, limit: int, max_bytes: int, largest_body: int):
        self.app, self.limit, self.max_bytes, self.largest_body = app, limit, max_bytes, largest_body
        self._count = self._bytes = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not sends_body(scope):
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        size = self.largest_body if declared is None else min(declared, self.largest_body)
        with self._lock:
            admitted = self._count == 0 or (self._count < self.limit and self._bytes + size <= self.max_bytes)
            if admitted:
                self._count, self._bytes = self._count + 1, self._bytes + size
        if not admitted:
            message = f"the server is answering as many uploads as it can hold: try again in {RETRY_AFTER_S} s"
            await retry_later(503, "busy", message, RETRY_AFTER_S)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._count, self._bytes = self._count - 1, self._bytes - size


@dataclass(frozen=True)
class DecodeBudget:
    """How the server decodes images it is sent: at most `slots` at once (requests, the shadow scorer
    and the re-scorer together), none over `max_pixels` or needing more than `max_bytes` decoded."""

    max_pixels: int
    max_bytes: int
    slots: threading.BoundedSemaphore

    def decode(self, predictor: Predictor, data: bytes) -> np.ndarray:
        with self.slots:
            return predictor.decode(data, self.max_pixels, self.max_bytes)

    def decoder(self, predictor: Predictor) -> Callable[[bytes], np.ndarray]:
        return partial(self.decode, predictor)

    def inspect(self, data: bytes) -> images.ImageInfo:
        """A correction's image checked whole (truncation included), within the same budget."""
        with self.slots:
            return images.inspect(data, self.max_pixels, max_bytes=self.max_bytes)


def decode_budget(params: Params) -> DecodeBudget:
    serve = params.serve
    return DecodeBudget(params.validate_.max_pixels, int(serve.max_decode_mb * 1e6), threading.BoundedSemaphore(serve.decode_slots))
