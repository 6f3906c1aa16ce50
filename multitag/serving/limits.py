"""Request size limits, enforced before a body is parsed or spooled to disk."""

from __future__ import annotations

from fastapi import HTTPException, UploadFile
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multitag.config import ServeParams
from multitag.serving.problems import http_problem, problem

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart headers and small form fields around the files


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
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit_bytes:
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
