"""A background thread that works for the version being served: the re-scorer (rescore.py) and the
feature warmer (feature_warmer.py) both check every `watcher.interval_s` what the served version
still has to do, and stop mid-way when another version starts serving or the server stops."""

from __future__ import annotations

import threading

from multitag.serving.watcher import ChampionWatcher


class VersionWorker:
    """Calls `check` every `watcher.interval_s` in a thread of its own until `close`; `check` must never raise."""

    name = "version-worker"

    def __init__(self, watcher: ChampionWatcher):
        self.watcher = watcher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def check(self) -> object:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop after the batch in progress."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def interrupted(self, version: str) -> bool:
        """Whether work for `version` should stop: the server stops, or another version serves now."""
        current = self.watcher.current
        return self._stop.is_set() or current is None or current.version.version != version

    def _run(self) -> None:
        while True:
            self.check()
            if self._stop.wait(self.watcher.interval_s):
                return
