"""A background action repeated at a fixed interval: the API's champion watcher and retention
sweep, and a retraining run's lease renewal."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Every:
    """Calls `action` every `interval_s` seconds in a daemon thread, from `start` until `stop`.

    `action` must not raise (log instead): an exception would end the thread silently.
    """

    def __init__(self, interval_s: float, action: Callable[[], object], name: str):
        self.interval_s, self.action, self.name = interval_s, action, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.action()
