"""What every endpoint shares: the `Services` the server builds at start-up, the dependency that
hands them to an endpoint, the served model or a 503 saying how to get one, and the access
checks for reviewers and admins (access.py holds the rules)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from multitag.config import Params
from multitag.feedback.predictions import PredictionLog
from multitag.feedback.queue import FeedbackQueue
from multitag.serving import access, schemas
from multitag.serving.batching import MicroBatcher
from multitag.serving.limits import DecodeBudget
from multitag.serving.problems import http_problem
from multitag.serving.retrain_trigger import RetrainTrigger
from multitag.serving.shadow import ShadowScorer
from multitag.serving.watcher import ChampionWatcher, ServedModel

STATIC_DIR = Path(__file__).parent / "static"
NO_MODEL = "no model yet: no champion of {name}; run `make demo` or `multitag pipeline --source ... --path ...` to register one"
METRIC_TAGS = ("val_mAP", "test_mAP", "test_macro_f1", "latency_ms", "size_mb")
# Our error bodies, documented per status. 422 stays FastAPI's own (a field missing or of the wrong
# type), though an unusable image is also a 422 with our body.
PROBLEMS = {status: {"model": schemas.ProblemResponse} for status in (401, 403, 404, 413, 415, 500, 503, 507)}


@dataclass
class Services:
    """What the endpoints share, created when the server starts (not at import)."""

    params: Params
    watcher: ChampionWatcher
    queue: FeedbackQueue
    retrain: RetrainTrigger
    decoding: DecodeBudget  # every decode of a sent or stored image (serving/limits.py)
    batcher: MicroBatcher | None = None  # None: batching off (serve.batch_max_size 1)
    prediction_log: PredictionLog | None = None  # None: no log (serve.prediction_log_hours 0)
    shadow: ShadowScorer | None = None  # None: no shadow scoring (serve.shadow off, or no log)


def services_of(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services_of)]


def served_model(services: Services) -> ServedModel:
    """The model to answer with, or 503 saying how to get one."""
    served = services.watcher.current
    if served is None:
        raise http_problem(503, "no_model", NO_MODEL.format(name=services.watcher.name))
    return served


def require_admin(request: Request, services: ServicesDep) -> None:
    """Admin endpoints: `Authorization: Bearer <admin token>` (serving/access.py)."""
    access.check_admin(request, services.params.serve)


def require_reviewer(request: Request, services: ServicesDep) -> None:
    """Other users' photos and answers: the reviewer or admin token, else this machine only (serving/access.py)."""
    access.check_reviewer(request, services.params.serve)
