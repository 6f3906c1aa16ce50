"""Error bodies: every failure a client can get names a machine-readable `reason` and a
`message` that says what to do (the web page shows the message as it is)."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from dataclasses import asdict

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from multitag.data import images

POSTGRES_DISK_FULL = "53100"


def problem(reason: str, message: str, **extra: object) -> dict:
    """The body of every error: `reason`, `message`, and any fields that help fix it."""
    return {"reason": reason, "message": message, **extra}


def http_problem(status: int, reason: str, message: str, headers: dict[str, str] | None = None, **extra: object) -> HTTPException:
    return HTTPException(status, problem(reason, message, **extra), headers=headers)


def image_problem(check: Callable[[bytes], object], filename: str, data: bytes) -> dict | None:
    """Why `check` cannot use this image (as an error entry), or None when it can."""
    try:
        check(data)
    except images.ImageError as err:
        return {"filename": filename, **asdict(err.problem)}
    except Exception as err:
        return {"filename": filename, "reason": "undecodable", "detail": f"{type(err).__name__}: {err}"}
    return None


def bad_images(problems: list[dict]) -> HTTPException:
    """415 when no file is an image format at all, otherwise 422; every bad file is listed."""
    status = 415 if all(p["reason"] == "not_an_image" for p in problems) else 422
    names = ", ".join(f"{p['filename']} ({p['reason']})" for p in problems)
    return http_problem(status, problems[0]["reason"], f"unusable image(s): {names}", files=problems)


def disk_full(err: BaseException) -> bool:
    """Whether `err` says the disk (or the user's quota) is full: a file write's, SQLite's or PostgreSQL's
    (SQLSTATE 53100 disk_full), as raised by the driver or wrapped by SQLAlchemy."""
    if isinstance(err, DBAPIError):
        err = err.orig
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return getattr(err, "sqlstate", None) == POSTGRES_DISK_FULL


async def insufficient_storage(request: Request, err: Exception) -> JSONResponse:
    """507 for a full disk, saying what to do; any other error goes on to the server's 500 handling."""
    if not disk_full(err):
        raise err
    message = (
        "the server's disk is full, so nothing was saved: send it again later. Operators: free space on the disk "
        "of the feedback images and queue database, or lower serve.prediction_retention_hours"
    )
    return JSONResponse({"detail": problem("insufficient_storage", message)}, status_code=507)


async def upgrade_required(request: Request, err: Exception) -> JSONResponse:
    """503 while another host has upgraded the queue's schema and this replica still runs the old
    code (a rolling upgrade): it says what to do, where the bare database error was a 500."""
    return JSONResponse({"detail": problem("upgrade_required", str(err))}, status_code=503, headers={"Retry-After": "60"})
