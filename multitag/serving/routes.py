"""The endpoints a user of the web page calls: the page, /health, /model, /predict and /feedback.
Each reads the shared `Services` through a dependency (services.py) and answers with a response
model from schemas.py; heavy work (decoding, queue writes) runs in the threadpool and model calls
in the micro-batcher's worker (batching.py), so the event loop keeps accepting requests. The
reviewer's and admin's endpoints are in review_routes.py."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from multitag.feedback.queue import Origin
from multitag.feedback.screen_rules import client_hash
from multitag.serving import schemas
from multitag.serving.batching import score
from multitag.serving.limits import read_uploads
from multitag.serving.problems import http_problem
from multitag.serving.quotas import check_storage_quota, client_key, exempt
from multitag.serving.services import (
    METRIC_TAGS,
    PROBLEMS,
    STATIC_DIR,
    ServicesDep,
    served_model,
)
from multitag.serving.uploads import answer_uploads, decode_uploads, parse_labels, queue_feedback

router = APIRouter(responses=PROBLEMS)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/health")
def health(services: ServicesDep) -> schemas.Health:
    """Always 200 while the process serves; `model_loaded` says whether /predict can answer."""
    served, watcher, limits = services.watcher.current, services.watcher, services.params.serve
    return schemas.Health(
        status="ok",
        model_loaded=served is not None,
        model_name=watcher.name,
        model_alias=watcher.alias,
        model_version=served.version.version if served else None,
        last_checked_at=watcher.last_checked_at,
        last_error=watcher.last_error,
        limits=schemas.Limits(max_files=limits.max_files, max_upload_bytes=limits.max_upload_bytes),
    )


@router.get("/model")
def model(services: ServicesDep) -> schemas.ModelInfo:
    """The served version: its contract (classes, thresholds) and the metrics it was registered with."""
    served = served_model(services)
    predictor, tags = served.predictor, served.version.tags
    return schemas.ModelInfo(
        name=served.name,
        version=served.version.version,
        alias=served.alias,
        architecture=predictor.info.get("architecture") or tags.get("architecture"),
        classes=predictor.classes,
        thresholds=dict(zip(predictor.classes, predictor.thresholds.tolist())),
        input_size=predictor.input_size,
        runtime=predictor.info["runtime"],
        metrics={key: float(tags[key]) for key in METRIC_TAGS if key in tags},
        gate_verdict=tags.get("gate_verdict"),
        run_id=served.version.run_id,
        loaded_at=served.loaded_at,
    )


@router.post("/predict")
async def predict(
    files: Annotated[list[UploadFile], File(description="One or more images.")], services: ServicesDep
) -> schemas.Predictions:
    """Labels above each class threshold and every class probability, per file. A request's files are
    scored in one model call, which requests arriving at the same moment share (micro-batching)."""
    served = served_model(services)  # read once: this version scores every file and is the one reported
    uploads = await read_uploads(files, services.params.serve)
    store = services.queue.images if services.params.serve.prediction_retention_hours > 0 else None
    scores = await score(services.batcher, served.predictor, partial(decode_uploads, services.decoding, served.predictor, uploads))
    predictions = await run_in_threadpool(answer_uploads, served, uploads, scores, store, services.prediction_log)
    if services.shadow is not None:  # the challenger scores them too, later, in its own thread: never waited for
        services.shadow.submit(served, uploads, [p.image_sha256 for p in predictions])
    return schemas.Predictions(predictions=predictions)


@router.post("/feedback", status_code=202)
async def feedback(
    request: Request,
    services: ServicesDep,
    labels: Annotated[str, Form(description='The correct classes: a JSON list or "a|b".')],
    file: Annotated[UploadFile | None, File(description="The image, or send image_sha256 instead.")] = None,
    image_sha256: Annotated[str | None, Form(description="Hash of an image sent to /predict before.")] = None,
    note: Annotated[str | None, Form()] = None,
    model_version: Annotated[str | None, Form(description="The version whose prediction is corrected.")] = None,
    origin: Annotated[Origin, Form(description="Where the correction was made: an upload, or the review list.")] = "upload",
    absent: Annotated[
        str | None,
        Form(
            description='Partial labels: the classes confirmed absent (a JSON list or "a|b", may be empty); every other class '
            "not in `labels` is then unknown and trains no loss. Left out: every class not in `labels` is absent."
        ),
    ] = None,
) -> schemas.FeedbackAccepted:
    """Queue a user's corrected labels for the next retraining."""
    if (file is None) == (image_sha256 is None):
        raise http_problem(422, "image_missing", "send exactly one of `file` (the image) or `image_sha256`")
    classes = served_model(services).predictor.classes
    chosen = parse_labels(labels, classes, services.params.validate_.min_labels)
    confirmed_absent = None if absent is None else parse_labels(absent, classes, min_labels=0)
    if both := sorted(set(chosen) & set(confirmed_absent or ())):
        message = f"{', '.join(both)} cannot be both present (labels) and absent: mark each class one way"
        raise http_problem(422, "present_and_absent", message, classes=both)
    upload = (await read_uploads([file], services.params.serve))[0][1] if file is not None else None
    address = request.client.host if request.client else None
    client = client_hash(client_key(address)) if address else None  # the screen's flood rule counts per client
    quota_client = None if exempt(address, services.params.serve) else client
    await run_in_threadpool(check_storage_quota, services.queue, quota_client, len(upload or b""), services.params.serve)
    return await run_in_threadpool(
        queue_feedback,
        services.queue,
        upload,
        image_sha256,
        chosen,
        model_version,
        note,
        services.decoding,
        origin,
        client,
        confirmed_absent,
    )
