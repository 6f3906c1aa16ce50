"""Re-scoring after a switch: a newly served version answers the stored photos that earlier versions
answered, so the review list does not empty on every promotion (issue 21).

The review list ranks the served version's own answers (thresholds and scores belong to one
version). A new champion has answered nothing, so without this the web page said "Nothing to
review" after each nightly promotion, while photos nobody has labelled were still stored. Whenever
the server starts serving a version (at start-up, and after each hot reload) one background
thread here re-scores, with that version, the photos review.to_rescore finds (answered by another
version of the task within the image retention, not by this one, nobody's correction, still
stored; the newest `review.SCAN_LIMIT`) and logs the answers with role `rescored`: the review list
ranks them, drift and the shadow report leave them out (no user got them).

It never delays /predict more than any concurrent request would:
- the images are decoded in this thread, and scored one batch at a time through the server's
  micro-batcher (one model call at a time, user requests queued before a batch go first), or,
  with batching off, by direct model calls from this thread (as shadow mode's);
- it stops when the served version changes again (the next version starts over) or the server
  stops; any failure (a batch, a log write, the search itself) is logged and the rest goes on.
"""

from __future__ import annotations

import logging

import numpy as np

from multitag.feedback import review
from multitag.feedback.predictions import RESCORED, Answer, PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.store import decoded_batches
from multitag.lifecycle.predictor import Predictor
from multitag.serving.batching import MicroBatcher
from multitag.serving.limits import DecodeBudget
from multitag.serving.version_worker import VersionWorker
from multitag.serving.watcher import ChampionWatcher, ServedModel

log = logging.getLogger(__name__)
BATCH = 16  # images per model call when the server does not micro-batch


class Rescorer(VersionWorker):
    """Re-scores stored photos with each version `watcher` starts serving, checking every `watcher.interval_s`."""

    name = "rescorer"

    def __init__(
        self,
        watcher: ChampionWatcher,
        prediction_log: PredictionLog,
        queue: FeedbackQueue,
        max_age_s: float,
        decoding: DecodeBudget,
        batcher: MicroBatcher | None = None,
        limit: int = review.SCAN_LIMIT,
    ):
        super().__init__(watcher)
        self.prediction_log, self.queue, self.max_age_s = prediction_log, queue, max_age_s
        self.decoding, self.batcher, self.limit = decoding, batcher, limit
        self.batch_size = batcher.max_batch if batcher is not None else BATCH
        self._done_for: str | None = None  # the version whose photos were re-scored (or tried)

    def check(self) -> None:
        """Re-score for the served version if it has not been done for it yet; never raises."""
        served = self.watcher.current
        if served is None or served.version.version == self._done_for:
            return
        self._done_for = served.version.version  # tried once per switch: a failure waits for the next one
        try:
            self.rescore(served)
        except Exception:
            log.exception("re-scoring stored photos with %s version %s failed", served.name, served.version.version)

    def rescore(self, served: ServedModel) -> int:
        """Score the photos `served` has to re-score and log its answers; how many it logged."""
        version = served.version.version
        paths = review.to_rescore(self.prediction_log, self.queue, served.name, version, self.max_age_s, self.limit)
        if not paths:
            return 0
        predictor, logged = served.predictor, 0
        for hashes, images in decoded_batches(paths, self.decoding.decoder(predictor), self.batch_size):
            if self.interrupted(version):
                log.info(
                    "re-scoring for %s version %s stopped after %d of %d photo(s): %s",
                    served.name,
                    version,
                    logged,
                    len(paths),
                    "the server stops" if self._stop.is_set() else "another version serves now",
                )
                return logged
            try:
                rows = self._predict(predictor, images)
                answers = [predictor.labelled(row, sha) for row, sha in zip(rows, hashes)]
                self.prediction_log.record(
                    served.name, version, [Answer(a.image_sha256, a.labels, a.probabilities) for a in answers], role=RESCORED
                )
            except Exception as err:
                log.warning(
                    "re-scoring %d stored photo(s) with %s version %s failed (%s: %s); going on with the rest",
                    len(hashes),
                    served.name,
                    version,
                    type(err).__name__,
                    err,
                )
                continue
            logged += len(hashes)
        log.info("re-scored %d of %d stored photo(s) with %s version %s for the review list", logged, len(paths), served.name, version)
        return logged

    def _predict(self, predictor: Predictor, images: np.ndarray) -> np.ndarray:
        if self.batcher is None:
            return predictor.predict_arrays(images)
        return self.batcher.submit(predictor, images).result()


def rescorer_for(
    watcher: ChampionWatcher,
    prediction_log: PredictionLog | None,
    queue: FeedbackQueue,
    retention_hours: float,
    decoding: DecodeBudget,
    batcher: MicroBatcher | None,
) -> Rescorer | None:
    """The server's re-scorer, or None when nothing would be re-scored: no prediction log
    (serve.prediction_log_hours 0), or no stored photos (serve.prediction_retention_hours 0)."""
    if prediction_log is None or retention_hours <= 0:
        return None
    return Rescorer(watcher, prediction_log, queue, retention_hours * 3600, decoding, batcher)
