"""Drift of the served predictions, as the API sees it: the served version's last
`serve.drift_window` logged answers against the reference it was registered with
(multitag/lifecycle/drift.py), for GET /drift, `multitag feedback drift` and, with
`retrain.on_drift`, the server's sweep that starts the retraining early."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from multitag.config import Params, RetrainParams, ServeParams
from multitag.feedback.predictions import PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.lifecycle import drift
from multitag.serving import schemas
from multitag.serving.retrain_trigger import RetrainTrigger
from multitag.serving.watcher import ChampionWatcher, ServedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionDrift:
    """A drift report of one served version, with the time span of the answers it judged."""

    model_name: str
    model_version: str
    report: drift.DriftReport
    first_predicted_at: float | None
    last_predicted_at: float | None


def version_drift(
    prediction_log: PredictionLog,
    model_name: str,
    model_version: str,
    reference: drift.Reference | None,
    classes: Sequence[str],
    serve: ServeParams,
) -> VersionDrift:
    """Judge the newest `serve.drift_window` answers users got from this version (never another
    version's: thresholds and the reference belong to one version)."""
    answers = prediction_log.answered_since(model_name, model_version, since=0.0, limit=serve.drift_window)
    report = drift.compare(reference, [answer.labels for answer in answers], classes, serve.drift_min_predictions, serve.drift_alpha)
    times = [answer.predicted_at for answer in answers]
    return VersionDrift(model_name, str(model_version), report, min(times, default=None), max(times, default=None))


NO_LOG = "no prediction log to judge drift on: serve.prediction_log_hours is 0; set it above 0 and answers are logged from then on"


def served_drift(prediction_log: PredictionLog | None, served: ServedModel, serve: ServeParams) -> VersionDrift:
    """`version_drift` of the version being served, with its own reference and classes."""
    predictor, version = served.predictor, served.version.version
    if prediction_log is None:
        return VersionDrift(served.name, version, drift.DriftReport("no_log", NO_LOG, 0, None, []), None, None)
    return version_drift(prediction_log, served.name, version, predictor.drift_reference, predictor.classes, serve)


def as_response(result: VersionDrift, serve: ServeParams) -> schemas.Drift:
    report = result.report
    return schemas.Drift(
        status=report.status,
        message=report.message,
        model_name=result.model_name,
        model_version=result.model_version,
        predictions=report.predictions,
        window=serve.drift_window,
        min_predictions=serve.drift_min_predictions,
        alpha=serve.drift_alpha,
        test=drift.TEST,
        correction=drift.CORRECTION,
        reference_rows=report.reference_rows,
        first_predicted_at=result.first_predicted_at,
        last_predicted_at=result.last_predicted_at,
        drifted_classes=report.drifted_classes,
        classes=[schemas.ClassDrift(**asdict(c)) for c in report.classes],
    )


class DriftRetrain:
    """With `retrain.on_drift`, each sweep asks `check` for the served version's drift and, on
    drift, starts the retraining flow through `trigger`, but only when the flow would have work
    (at least `retrain.min_feedback` corrections pending) and at most once per
    `retrain.drift_cooldown_hours`: drift stays visible until a new champion serves, so without
    the cool-down every sweep would start another run on the same feedback."""

    def __init__(
        self,
        check: Callable[[], drift.DriftReport | None],
        pending: Callable[[], int],
        trigger: RetrainTrigger,
        retrain: RetrainParams,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.check, self.pending, self.trigger, self.clock = check, pending, trigger, clock
        self.min_feedback, self.cooldown_s = retrain.min_feedback, retrain.drift_cooldown_hours * 3600
        self.last_started: float | None = None

    def run(self) -> dict[str, str] | None:
        """One sweep: what the trigger returned when it started a run, else None."""
        report = self.check()
        if report is None or report.status != "drift":
            return None
        if self.last_started is not None and self.clock() - self.last_started < self.cooldown_s:
            return None
        pending = self.pending()
        if pending < self.min_feedback:
            log.warning(
                "%s; not retraining early: %d correction(s) pending, %d needed (retrain.min_feedback): correct some recent images on the web page",
                report.message,
                pending,
                self.min_feedback,
            )
            return None
        started = self.trigger()
        self.last_started = self.clock()
        log.warning("%s; retraining started early (retrain.on_drift): %s", report.message, started)
        return started

    def run_logged(self) -> None:
        """`run`, with a failure logged instead of raised: the next sweep tries again."""
        try:
            self.run()
        except Exception:
            log.exception("checking drift or starting the retraining early failed; the next sweep tries again")


def drift_retrain_for(
    params: Params, watcher: ChampionWatcher, queue: FeedbackQueue, prediction_log: PredictionLog | None, trigger: RetrainTrigger
) -> DriftRetrain | None:
    """The sweep's early retraining on the served version's drift, or None when retrain.on_drift is off
    (or there is no prediction log to judge on, which is said at startup)."""
    if not params.retrain.on_drift:
        return None
    if prediction_log is None:
        log.warning("retrain.on_drift is on but serve.prediction_log_hours is 0: no answers are logged, so drift never starts a retraining")
        return None

    def check() -> drift.DriftReport | None:
        served = watcher.current
        return None if served is None else served_drift(prediction_log, served, params.serve).report

    return DriftRetrain(check, queue.pending_count, trigger, params.retrain)
