"""Error bodies: every failure a client can get names a machine-readable `reason` and a
`message` that says what to do (the web page shows the message as it is)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from fastapi import HTTPException

from multitag.data import images


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
