"""Shadow mode: the challenger scores what the champion answered, off the response path.

While the registry has a `challenger` alias (a second watcher loads it and follows it; it unloads
when the alias goes), every /predict request, once its answer is computed, hands its images to
one background thread here, which scores them with the challenger and logs its answers with role
`challenger` beside the champion's (the shadow report pairs them by image hash: feedback/shadow.py).

A user never waits for, nor fails because of, the challenger:
- handing over is a non-blocking put into a small bounded queue (`serve.shadow_queue_size`
  requests); when it is full the shadow work is dropped and counted, never waited for;
- the worker decodes the images itself, for the challenger's own input size and resize mode (a
  challenger may differ from the champion in those and in its class list);
- any failure (an unusable image, a failing model, a failed log write) is logged and counted.
The counts (scored, dropped, failed images) are in GET /shadow.

The challenger's model call competes for the CPU with the champion's: on a saturated machine the
queue fills and shadow work is dropped, which bounds the extra load to one model call at a time.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from dataclasses import dataclass

import numpy as np

from multitag.config import ServeParams
from multitag.feedback.predictions import CHALLENGER, Answer, PredictionLog
from multitag.lifecycle import registry
from multitag.serving.limits import DecodeBudget
from multitag.serving.watcher import ChampionWatcher, ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowJob:
    """One request's images (encoded, as uploaded) and their hashes, as the champion answered them."""

    champion_version: str
    payloads: list[bytes]
    hashes: list[str]


@dataclass(frozen=True)
class ShadowCounts:
    scored: int  # images the challenger scored and the log recorded
    dropped: int  # images not scored because the queue was full
    failed: int  # images whose shadow scoring or logging failed
    queued: int  # requests waiting now
    last_error: str | None


class ShadowScorer:
    """Scores handed-over requests with `watcher`'s model (the challenger) in one thread and logs the answers."""

    def __init__(self, watcher: ChampionWatcher, prediction_log: PredictionLog, queue_size: int, decoding: DecodeBudget):
        self.watcher, self.prediction_log, self.decoding = watcher, prediction_log, decoding
        self._jobs: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self._counts_lock = threading.Lock()
        self._scored = self._dropped = self._failed = 0
        self._last_error: str | None = None
        self._worker = threading.Thread(target=self._work, name="shadow-scorer", daemon=True)

    def start(self) -> None:
        """Start the worker (which loads the challenger first, if there is one) and the challenger's watcher."""
        self._worker.start()
        self.watcher.start()

    def close(self) -> None:
        """Stop the watcher and the worker; shadow work still queued is abandoned (it answers no one)."""
        self.watcher.stop()
        while True:  # make room for the stop signal without ever blocking on a busy worker
            try:
                self._jobs.put_nowait(None)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._jobs.get_nowait()
        self._worker.join(timeout=10)

    def submit(self, champion: ServedModel, uploads: list[tuple[str, bytes]], hashes: list[str]) -> None:
        """Hand one answered request over for shadow scoring. Never blocks and never raises: with no
        challenger (or the champion's own version as challenger) there is nothing to do; with a full
        queue the work is dropped and counted."""
        try:
            challenger = self.watcher.current
            if challenger is None or challenger.version.version == champion.version.version:
                return
            self._jobs.put_nowait(ShadowJob(champion.version.version, [data for _, data in uploads], list(hashes)))
        except queue.Full:
            self._count(dropped=len(uploads))
            log.debug("shadow queue full: %d image(s) not scored by the challenger", len(uploads))
        except Exception:  # a bug here must still never reach the user
            self._count(failed=len(uploads))
            log.exception("handing a request over for shadow scoring failed")

    def counts(self) -> ShadowCounts:
        with self._counts_lock:
            return ShadowCounts(self._scored, self._dropped, self._failed, self._jobs.qsize(), self._last_error)

    def _work(self) -> None:
        self.watcher.refresh_logged()  # load a challenger now, not one poll interval later; never raises
        while (job := self._jobs.get()) is not None:
            self._score(job)

    def _score(self, job: ShadowJob) -> None:
        """Score one request with the challenger loaded now and log its answers; a failure is counted, not raised."""
        challenger = self.watcher.current
        if challenger is None:  # the alias went while the job waited
            return
        try:
            predictor = challenger.predictor
            scores = predictor.predict_arrays(np.stack([self.decoding.decode(predictor, data) for data in job.payloads]))
            answers = [predictor.labelled(row, sha) for row, sha in zip(scores, job.hashes)]
            self.prediction_log.record(
                challenger.name,
                challenger.version.version,
                [Answer(a.image_sha256, a.labels, a.probabilities) for a in answers],
                role=CHALLENGER,
            )
        except Exception as err:
            self._count(failed=len(job.payloads), error=f"{type(err).__name__}: {err}")
            log.warning(
                "shadow scoring of %d image(s) by %s version %s failed: %s",
                len(job.payloads),
                challenger.name,
                challenger.version.version,
                err,
            )
            return
        self._count(scored=len(job.payloads))

    def _count(self, scored: int = 0, dropped: int = 0, failed: int = 0, error: str | None = None) -> None:
        with self._counts_lock:
            self._scored += scored
            self._dropped += dropped
            self._failed += failed
            if error is not None:
                self._last_error = error


def shadow_scorer_for(name: str, serve: ServeParams, prediction_log: PredictionLog | None, decoding: DecodeBudget) -> ShadowScorer | None:
    """The server's shadow scorer, or None when `serve.shadow` is off or there is no prediction log
    to record the challenger's answers in (serve.prediction_log_hours 0)."""
    if not serve.shadow:
        return None
    if prediction_log is None:
        log.warning("serve.shadow is on but the prediction log is off (serve.prediction_log_hours: 0): no shadow scoring")
        return None
    watcher = ChampionWatcher(name, serve.reload_interval_s, alias=registry.CHALLENGER, runtime=serve.runtime, keep_when_unset=False)
    return ShadowScorer(watcher, prediction_log, serve.shadow_queue_size, decoding)
