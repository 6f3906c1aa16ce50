"""One pipeline run at a time per workspace.

The nightly flow, `/retrain`, the training-pipeline flow, `multitag pipeline` and `dvc repro`
(through the stage commands) all read and rewrite data/, models/, metrics/ and reports/. Each
takes this lock first: an OS file lock (fcntl) that the kernel releases when its holder dies,
so a killed run never leaves a stale lock. A second run is refused at once with a message naming
the running one. The holder's child processes (the per-architecture training subprocesses) are
part of its run: they inherit `MULTITAG_WORKSPACE_RUN` and do not lock again. A run that DVC did
not start is refused too while DVC holds its repository lock (`dvc repro` between two stages).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from multitag.errors import MultitagError
from multitag.layout import Layout

HELD_ENV = "MULTITAG_WORKSPACE_RUN"
DVC_STAGE_ENV = "DVC_STAGE"  # set by `dvc repro` in each stage's command: it holds DVC's lock already


class WorkspaceBusy(MultitagError, RuntimeError):
    """Another run holds the workspace; the message names it."""


def lock_path(layout: Layout = Layout()) -> Path:
    return layout.root / ".multitag" / "workspace.lock"


@contextmanager
def exclusive_run(what: str, layout: Layout = Layout()) -> Iterator[None]:
    """Hold the workspace for the duration of `what` (e.g. 'multitag pipeline'); re-entrant within
    the run (same process, or a child started while it holds it)."""
    if os.environ.get(HELD_ENV):
        yield
        return
    path = lock_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        lock_or_refuse(
            handle, lambda: f"another run holds this workspace ({holder(path)}); wait for it to finish, or stop it, then run {what!r} again"
        )
        if not os.environ.get(DVC_STAGE_ENV):
            refuse_while_dvc_runs(layout, what)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "run": what, "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        os.environ[HELD_ENV] = what
        try:
            yield
        finally:
            del os.environ[HELD_ENV]
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def refuse_while_dvc_runs(layout: Layout, what: str) -> None:
    """WorkspaceBusy while a `dvc repro` (or any DVC command) holds the repository's lock: each of
    its stages takes the workspace lock only while it runs, and a nightly slipping in between
    validate and preprocess would mix two runs' data. DVC holds its own lock for the whole
    command, so a run started by neither DVC nor this lock's holder checks it (a quick probe:
    DVC retries its lock for a few seconds)."""
    path = layout.root / ".dvc" / "tmp" / "lock"
    if not path.exists():
        return
    with open(path, "a+") as handle:
        lock_or_refuse(
            handle,
            lambda: (
                f"a DVC command (`dvc repro`?) holds this workspace ({path.read_text().strip() or 'no pid written'}); "
                f"wait for it to finish, then run {what!r} again"
            ),
        )
        fcntl.flock(handle, fcntl.LOCK_UN)


def lock_or_refuse(handle: IO, refusal: Callable[[], str]) -> None:
    """Take the file's lock at once, or raise WorkspaceBusy with `refusal()` (who holds it)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise WorkspaceBusy(refusal()) from None


def holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return "a run that has not said who it is yet"
    return f"{info['run']}, pid {info['pid']}, since {info['started']}"
