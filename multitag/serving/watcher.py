"""Hot reload: the served model follows the registry alias without a restart or a failed request.

The server holds one `ServedModel` reference. A background thread polls the alias and, when it
moves, loads and warms the new version before swapping that single reference, so a request
(which reads the reference once) always runs on one complete model, even during a switch.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from multitag.lifecycle import registry
from multitag.lifecycle.predictor import Predictor
from multitag.periodic import Every
from multitag.service_config import Runtime

log = logging.getLogger(__name__)
MAX_BACK_OFF_S = 3600


@dataclass(frozen=True)
class ServedModel:
    """One loaded registry version; a request reads this once, so a swap never mixes two models."""

    predictor: Predictor
    name: str
    alias: str
    version: registry.VersionInfo
    loaded_at: float


class ChampionWatcher:
    """Keeps `current` on the version the alias points to, checking every `interval_s` seconds.

    An alias that disappears leaves the last version loaded (`keep_when_unset`: the champion keeps
    serving), or unloads it (the challenger's watcher: no challenger, no shadow scoring)."""

    def __init__(
        self, name: str, interval_s: float, alias: str = registry.CHAMPION, runtime: Runtime = "auto", keep_when_unset: bool = True
    ):
        self.name, self.alias, self.interval_s, self.runtime = name, alias, interval_s, runtime
        self.keep_when_unset = keep_when_unset
        self.current: ServedModel | None = None
        self.last_checked_at: float | None = None
        self.last_error: str | None = None
        self._refresh_lock = threading.Lock()  # the poller and /admin/reload never load twice at once
        self._failed: tuple[str, int, float] | None = None  # (version, failures, next try at): back-off
        self._poller = Every(interval_s, self.refresh_logged, "champion-watcher")

    def refresh(self, force: bool = False) -> bool:
        """Check the alias now; load and warm a new version, then swap it in. Returns whether it swapped.
        A version that failed to load is tried again only after a back-off, unless `force`.

        The version is loaded by number (`models:/name/N`), not through the alias, so the model
        loaded is exactly the one checked even if the alias moves again meanwhile.
        """
        with self._refresh_lock:
            target = registry.alias_version(self.name, self.alias)
            self.last_checked_at = time.time()
            if self._failed and (target is None or self._failed[0] != target.version):
                self._failed = None  # the alias moved on from the version that failed
            if target is None and not self.keep_when_unset and self.current is not None:
                self.current = None
                log.info("%s@%s is gone: unloaded", self.name, self.alias)
                return True
            if target is None or (self.current is not None and self.current.version.version == target.version):
                return False
            if not force and self._failed and self._failed[0] == target.version and time.monotonic() < self._failed[2]:
                return False  # it failed to load: downloading it again every poll would only fill the disk
            try:
                predictor = Predictor.from_uri(f"models:/{self.name}/{target.version}", self.runtime)
                warm_up(predictor)
            except Exception:
                self._back_off(target.version)
                raise
            self._failed = None
            self.current = ServedModel(predictor, self.name, self.alias, target, time.time())  # the one atomic swap
            log.info("serving %s version %s (%s) through %s", self.name, target.version, self.alias, predictor.info["runtime"])
            return True

    def _back_off(self, version: str) -> None:
        """Try a version that failed to load again after 2, 4, 8 ... polls, at most an hour apart
        (a new version, or /admin/reload, tries at once)."""
        failures = self._failed[1] + 1 if self._failed and self._failed[0] == version else 1
        delay = min(self.interval_s * 2**failures, MAX_BACK_OFF_S)
        self._failed = (version, failures, time.monotonic() + delay)
        log.warning("%s version %s failed to load (%d time(s)): next try in %.0f s", self.name, version, failures, delay)

    def refresh_logged(self, force: bool = False) -> bool:
        """`refresh`, with any failure recorded for /health instead of raised: the old model keeps
        serving, and the error stays on /health while the failed version waits for its next try."""
        try:
            changed = self.refresh(force)
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            log.exception("checking %s@%s failed", self.name, self.alias)
            return False
        if self._failed is None:
            self.last_error = None
        return changed

    def start(self) -> None:
        self._poller.start()

    def stop(self) -> None:
        self._poller.stop()


def warm_up(predictor: Predictor) -> None:
    """Trace the model for a single image and for batches before it serves.

    Keras traces the predict function again on the first batch of a new size; warming with 1
    and 2 images leaves a trace that accepts any batch size, so no user request pays for it.
    """
    predictor.warm_up()
    predictor.predict_arrays(np.zeros((2, predictor.input_size, predictor.input_size, 3), dtype=np.uint8))
