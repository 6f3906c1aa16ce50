"""The HTTP API and web UI: predictions from the registry's champion, feedback into the queue.

Built by a factory, never at import, so importing the package touches no params, registry or
queue:

    multitag serve                                             # host and port from params.yaml
    uvicorn --factory multitag.serving.app:create_app          # MULTITAG_PARAMS names another params file
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError

from multitag.config import Params, ServeParams, load_params
from multitag.feedback.database import SchemaTooNew
from multitag.feedback.predictions import PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.feedback.retention import ImageRetention
from multitag.feedback.retraining import open_queue
from multitag.layout import Layout
from multitag.periodic import Every
from multitag.serving import review_routes, routes
from multitag.serving.access import TrustedHosts
from multitag.serving.batching import batcher_for
from multitag.serving.drift_watch import DriftRetrain, drift_retrain_for
from multitag.serving.feature_warmer import feature_warmer_for
from multitag.serving.limits import BodySizeLimit, RequestsInFlight, body_limit_bytes, decode_budget
from multitag.serving.origin import SameOriginPosts
from multitag.serving.problems import insufficient_storage, upgrade_required
from multitag.serving.quotas import ClientRates
from multitag.serving.rescore import rescorer_for
from multitag.serving.retrain_trigger import RetrainTrigger, retrain_trigger_from_env
from multitag.serving.services import STATIC_DIR, Services
from multitag.serving.shadow import shadow_scorer_for
from multitag.serving.watcher import ChampionWatcher

log = logging.getLogger(__name__)
PARAMS_ENV = "MULTITAG_PARAMS"


def params_or_defaults(params_path: Path | str) -> Params:
    """The project's params, or the defaults when the file is absent (a server outside a project)."""
    if not Path(params_path).exists():
        log.warning("%s not found: serving with default parameters", params_path)
        return Params()
    return load_params(params_path)


def create_app(
    params: Params | None = None, params_path: Path | str | None = None, retrain_trigger: RetrainTrigger | None = None
) -> FastAPI:
    """The API. Nothing touches the registry or the queue until the server starts."""
    params_path = params_path or os.environ.get(PARAMS_ENV, "params.yaml")
    params = params or params_or_defaults(params_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue = open_queue(params)
        watcher = ChampionWatcher(params.registry.model_name, params.serve.reload_interval_s, runtime=params.serve.runtime)
        retention = ImageRetention(queue, params.serve.prediction_retention_hours * 3600, params.feedback)
        prediction_log = prediction_log_for(queue, params.serve)  # None when serve.prediction_log_hours is 0
        trigger = retrain_trigger or retrain_trigger_from_env(Layout().retrain_log, params_path)
        early_retrain = drift_retrain_for(params, watcher, queue, prediction_log, trigger)  # None unless retrain.on_drift
        sweeper = Every(params.serve.prediction_sweep_interval_s, partial(sweep, retention, prediction_log, early_retrain), "retention")
        batcher = batcher_for(params.serve)  # None when serve.batch_max_size is 1
        decoding = decode_budget(params)  # every decode of a sent or stored image: a few at once, each bounded
        # None when serve.shadow is off or nothing logs; else it follows the challenger alias on its own
        shadow = shadow_scorer_for(params.registry.model_name, params.serve, prediction_log, decoding)
        # None without a log or stored photos; else each version served re-scores the stored photos for /review
        rescorer = rescorer_for(watcher, prediction_log, queue, params.serve.prediction_retention_hours, decoding, batcher)
        # None with serve.warm_features off; else pending corrections' features are cached for the quick path as they arrive
        warmer = feature_warmer_for(watcher, queue, Layout().feature_cache, decoding, params.serve.warm_features)
        app.state.services = Services(params, watcher, queue, trigger, decoding, batcher, prediction_log, shadow)
        await run_in_threadpool(watcher.refresh_logged)  # ready with a model when there is one; never blocks startup on errors
        if batcher is not None:
            batcher.start()
        watcher.start()
        sweeper.start()
        if shadow is not None:
            shadow.start()  # loads the challenger in the background: startup never waits for it
        if rescorer is not None:
            rescorer.start()  # in the background from the first version served on: startup never waits for it
        if warmer is not None:
            warmer.start()
        try:
            yield
        finally:
            if rescorer is not None:
                rescorer.close()  # before the batcher, whose model calls it uses
            if warmer is not None:
                warmer.close()
            if batcher is not None:
                batcher.close()  # answers anything still queued, then stops its worker
            if shadow is not None:
                shadow.close()
            sweeper.stop()
            watcher.stop()

    app = FastAPI(title="multitag", summary="Multi-label image tagging with a hot-reloaded champion model.", lifespan=lifespan)
    largest_body = body_limit_bytes(params.serve)
    app.add_middleware(BodySizeLimit, limit_bytes=largest_body)
    in_flight_bytes = int(params.serve.max_upload_mb_in_flight * 1e6)
    app.add_middleware(RequestsInFlight, limit=params.serve.max_requests_in_flight, max_bytes=in_flight_bytes, largest_body=largest_body)
    app.add_middleware(ClientRates, serve=params.serve, largest_body=largest_body)  # before a slot is taken
    app.add_middleware(SameOriginPosts, allowed_origins=params.serve.allowed_origins)
    app.add_middleware(TrustedHosts, allowed_hosts=params.serve.allowed_hosts)  # added last: runs first
    for error in (OSError, DBAPIError):  # a full disk is a 507 that says so; any other such error stays a 500
        app.add_exception_handler(error, insufficient_storage)
    app.add_exception_handler(SchemaTooNew, upgrade_required)  # a replica left behind by a rolling upgrade
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(routes.router)
    app.include_router(review_routes.router)
    return app


def prediction_log_for(queue: FeedbackQueue, serve: ServeParams) -> PredictionLog | None:
    """The log of /predict answers in the queue's database, or None when serve.prediction_log_hours is 0."""
    return PredictionLog(queue.database, serve.prediction_log_hours * 3600) if serve.prediction_log_hours > 0 else None


def sweep(retention: ImageRetention, prediction_log: PredictionLog | None, early_retrain: DriftRetrain | None = None) -> None:
    """The server's periodic clean-up: expired feedback items, then the images nothing names any
    more, then expired logged predictions; then, with retrain.on_drift, the drift check that may
    start the retraining early."""
    retention.sweep_logged()
    if prediction_log is not None:
        prediction_log.expire_logged()
    if early_retrain is not None:
        early_retrain.run_logged()


def serve(host: str | None = None, port: int | None = None, params_path: Path | str = "params.yaml") -> None:
    """Run the API and UI with uvicorn in one process (the model lives in it); `multitag serve` calls this."""
    import uvicorn

    params = params_or_defaults(params_path)
    uvicorn.run(
        create_app(params, params_path),
        host=host or params.serve.host,
        port=port or params.serve.port,
        forwarded_allow_ips=params.serve.trusted_proxies,  # who may name the client: the per-client limits key on it
    )
