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

from multitag.config import Runtime
from multitag.lifecycle import registry
from multitag.lifecycle.predictor import Predictor
from multitag.periodic import Every

log = logging.getLogger(__name__)


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
        self._poller = Every(interval_s, self.refresh_logged, "champion-watcher")

    def refresh(self) -> bool:
        """Check the alias now; load and warm a new version, then swap it in. Returns whether it swapped.

        The version is loaded by number (`models:/name/N`), not through the alias, so the model
        loaded is exactly the one checked even if the alias moves again meanwhile.
        """
        with self._refresh_lock:
            target = registry.alias_version(self.name, self.alias)
            self.last_checked_at = time.time()
            if target is None and not self.keep_when_unset and self.current is not None:
                self.current = None
                log.info("%s@%s is gone: unloaded", self.name, self.alias)
                return True
            if target is None or (self.current is not None and self.current.version.version == target.version):
                return False
            predictor = Predictor.from_uri(f"models:/{self.name}/{target.version}", self.runtime)
            warm_up(predictor)
            self.current = ServedModel(predictor, self.name, self.alias, target, time.time())  # the one atomic swap
            log.info("serving %s version %s (%s) through %s", self.name, target.version, self.alias, predictor.info["runtime"])
            return True

    def refresh_logged(self) -> bool:
        """`refresh`, with any failure recorded for /health instead of raised: the old model keeps serving."""
        try:
            changed = self.refresh()
        except Exception as err:
            self.last_error = f"{type(err).__name__}: {err}"
            log.exception("checking %s@%s failed", self.name, self.alias)
            return False
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
