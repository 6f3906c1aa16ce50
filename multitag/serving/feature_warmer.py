"""Corrected photos' features computed while the user corrects, not while the retraining waits (issue 21).

A quick refit (`multitag retrain --quick`) refits the served model's probe on the frozen features
of every labelled photo and scores the result member by member (modeling/ensemble.py), both
through the feature cache (modeling/feature_cache.py). Every photo trained or evaluated on before
is in that cache; what a quick run still had to compute was the photos users had just corrected:
on 2 cores about 0.2 s a photo (two views at 384 px), a minute for 300 corrections, all of it on
the path between `retrain --quick` and the new version answering (target: 2 minutes).

The server is idle between corrections, so this thread computes them there, as they arrive:
every `watcher.interval_s` it looks for pending corrections of the served task whose photo it has
not warmed for the served version, decodes each as preprocessing does (the version's input size
and resize mode: the same pixels, so the same cache keys) and runs the served model member by
member through the cache, which stores each member's view-averaged outputs: the probe's frozen
features that training reads for train photos, and both members' outputs that evaluation and the
gate read for val/test photos. It computes nothing it finds cached.

What it costs: the served version's Keras model in memory beside the served TFLite model (loaded
on the first correction, replaced when the version changes), and CPU while corrections arrive: one
batch at a time, so a /predict waits behind at most one batch (`BATCH` photos). It is only a
cache: a photo it has not reached yet is computed by the retraining as before, and its failures
are logged, never raised. Off with `serve.warm_features: false`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.store import decoded_batches
from multitag.serving.limits import DecodeBudget
from multitag.serving.version_worker import VersionWorker
from multitag.serving.watcher import ChampionWatcher, ServedModel

log = logging.getLogger(__name__)
BATCH = 8  # photos per pass of the Keras model: what a concurrent /predict may wait behind
SCAN_LIMIT = 5000  # newest pending corrections looked at per check: more than any night's


class FeatureWarmer(VersionWorker):
    """Warms the feature cache with the served version's member outputs on pending corrections' photos."""

    name = "feature-warmer"

    def __init__(self, watcher: ChampionWatcher, queue: FeedbackQueue, cache: Path, decoding: DecodeBudget, limit: int = SCAN_LIMIT):
        super().__init__(watcher)
        self.queue, self.cache, self.decoding, self.limit = queue, cache, decoding, limit
        self._warmed: set[str] = set()  # image hashes done for `_version`
        self._version: str | None = None
        self._keras: object | None = None  # the served version's Keras model, loaded on first use

    def check(self) -> int:
        """Warm what the pending corrections need for the served version; how many photos it ran
        through the model (0 when all were done before). Never raises."""
        served = self.watcher.current
        if served is None:
            return 0
        try:
            return self.warm(served)
        except Exception:
            log.exception("warming the feature cache for %s version %s failed", served.name, served.version.version)
            return 0

    def warm(self, served: ServedModel) -> int:
        if served.version.version != self._version:
            self._version, self._warmed, self._keras = served.version.version, set(), None
        todo = self._to_warm()
        if not todo:
            return 0
        from multitag.modeling import ensemble  # Keras and TensorFlow: only once there is work for them

        model = self._model(served)
        done = 0
        for hashes, images in decoded_batches(todo, self.decoding.decoder(served.predictor), BATCH):
            if self.interrupted(served.version.version):
                return done  # the rest waits for the next check (or the next version)
            if ensemble.scores(model, images, self.cache) is None:  # not a shape scored member by member: nothing to cache
                break
            done += len(hashes)
        self._warmed.update(todo)  # tried once per version: a photo that would not decode is not tried again
        log.info("feature cache: %d corrected photo(s) warmed for %s version %s", done, served.name, served.version.version)
        return done

    def _to_warm(self) -> dict[str, Path]:
        """Stored photos of pending corrections not tried yet for the served version (what it remembers
        is kept to the pending ones, so it stays as small as the queue's pending items)."""
        pending = {item.image_sha256 for item in self.queue.list_items("pending", self.limit)}
        self._warmed &= pending
        paths = {sha: self.queue.images.path(sha) for sha in sorted(pending - self._warmed)}
        return {sha: path for sha, path in paths.items() if path.exists()}

    def _model(self, served: ServedModel):
        if self._keras is None:
            from multitag.lifecycle import tracking

            self._keras = tracking.load_keras(served.predictor.folder)
        return self._keras


def feature_warmer_for(
    watcher: ChampionWatcher, queue: FeedbackQueue, cache: Path, decoding: DecodeBudget, on: bool
) -> FeatureWarmer | None:
    """The server's feature warmer, or None with `serve.warm_features: false`."""
    return FeatureWarmer(watcher, queue, cache, decoding) if on else None
