"""The endpoints behind a credential or for operators: the review list, the results page, stored
images (reviewers: they show other users' photos), the queue's counts, drift, shadow mode, and
the admin's /retrain and /admin/reload (access.py says who may call which)."""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse

from multitag.feedback import review
from multitag.feedback.shadow import report_from_log
from multitag.feedback.store import checked_sha
from multitag.serving import schemas
from multitag.serving.drift_watch import as_response, served_drift
from multitag.serving.limits import read_uploads
from multitag.serving.problems import http_problem
from multitag.serving.services import (
    PROBLEMS,
    ServicesDep,
    require_admin,
    require_reviewer,
    served_model,
)
from multitag.serving.uploads import parse_labels, queue_feedback, unnest_label_sets

router = APIRouter(responses=PROBLEMS)


@router.get("/review", dependencies=[Depends(require_reviewer)])
async def to_review(
    services: ServicesDep, n: Annotated[int, Query(ge=1, le=200, description="How many images to list.")] = 20
) -> schemas.ReviewList:
    """The logged images most worth a human look (active learning, feedback/review.py): champion and
    challenger disagree, or a score sits near its threshold; none labelled already, no near-duplicates.
    Ranks the served version's answers to users and its re-scored stored photos (serving/rescore.py)."""
    served = served_model(services)
    if services.prediction_log is None:
        message = "the review list ranks logged predictions, and this server logs none: set serve.prediction_log_hours above 0"
        raise http_problem(503, "no_prediction_log", message)
    predictor, version = served.predictor, served.version.version
    thresholds = dict(zip(predictor.classes, predictor.thresholds.tolist()))
    max_age_s = services.params.serve.prediction_retention_hours * 3600  # older images are no longer stored
    items = await run_in_threadpool(review.suggest, services.prediction_log, services.queue, served.name, version, thresholds, n, max_age_s)
    rows = [schemas.ReviewItem(**row, image_url=f"/images/{row['image_sha256']}") for row in review.as_rows(items)]
    return schemas.ReviewList(model_name=served.name, model_version=version, items=rows)


@router.get("/results", response_class=HTMLResponse, dependencies=[Depends(require_reviewer)])
async def model_results(services: ServicesDep) -> HTMLResponse:
    """Where the served model is wrong (lifecycle/results.py): per-class results on the frozen test
    split and the photos behind each error, the champion beside its challenger. A reviewer's page:
    it shows test photos, users' corrections among them."""
    from multitag.errors import UsageError
    from multitag.lifecycle import results

    name = served_model(services).name
    try:
        versions = await run_in_threadpool(results.compared_versions, name)
        page = await run_in_threadpool(results.report_html, name, tuple(versions.items()))
    except UsageError as err:
        raise http_problem(404, "no_stored_results", str(err)) from None
    return HTMLResponse(page)


@router.get("/images/{sha256}", response_class=FileResponse, dependencies=[Depends(require_reviewer)])
def stored_image(sha256: str, services: ServicesDep) -> FileResponse:
    """An image the server stored (a /predict upload within its retention, or a queued correction's), by its sha256."""
    try:
        path = services.queue.images.path(checked_sha(sha256))
    except ValueError as err:
        raise http_problem(422, "bad_sha256", str(err)) from None
    except KeyError:
        raise http_problem(404, "unknown_image", f"no stored image has sha256 {sha256}: it was never sent or has expired") from None
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600"}  # content-addressed: a hash names one image
    return FileResponse(path, media_type=media_type, headers=headers)


@router.get("/feedback/stats")
async def feedback_stats(services: ServicesDep) -> schemas.FeedbackStats:
    """Queue counts per state and pending label counts."""
    queue = services.queue
    return schemas.FeedbackStats(
        **await run_in_threadpool(queue.stats), task=queue.task, unassigned=await run_in_threadpool(queue.unassigned_count)
    )


@router.get("/drift")
async def drift(services: ServicesDep) -> schemas.Drift:
    """The served version's last `serve.drift_window` answers against the per-class rates at which
    it predicted each class on the frozen test split: a Fisher test per class, Holm-corrected."""
    served = served_model(services)
    result = await run_in_threadpool(served_drift, services.prediction_log, served, services.params.serve)
    return as_response(result, services.params.serve)


@router.get("/shadow")
async def shadow(services: ServicesDep) -> schemas.Shadow:
    """Shadow mode: how the challenger (scoring every /predict image off the response path) answered
    the images the served champion answered, per shared class, and who was right where feedback exists."""
    scorer = services.shadow
    if scorer is None:
        return schemas.Shadow(enabled=False, challenger_version=None, challenger_error=None, scoring=None, report=None)
    challenger, champion = scorer.watcher.current, services.watcher.current
    report = None
    if challenger is not None and services.prediction_log is not None:
        champion_version = champion.version.version if champion else None
        found = await run_in_threadpool(
            report_from_log, services.prediction_log, services.queue, challenger.name, challenger.version.version, champion_version
        )
        report = schemas.ShadowReport.model_validate(found, from_attributes=True)
    return schemas.Shadow(
        enabled=True,
        challenger_version=challenger.version.version if challenger else None,
        challenger_error=scorer.watcher.last_error,
        scoring=schemas.ShadowScoring.model_validate(scorer.counts(), from_attributes=True),
        report=report,
    )


@router.post("/retrain", status_code=202, dependencies=[Depends(require_admin)])
async def retrain(
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="Images to train on.")],
    labels: Annotated[list[str], Form(description="One label set for all files, or one per file (same order).")],
    note: Annotated[str | None, Form()] = None,
) -> schemas.RetrainAccepted:
    """Admin: queue labelled images, then start the retraining flow without waiting for it."""
    labels = unnest_label_sets(labels)
    if len(labels) not in (1, len(files)):
        raise http_problem(422, "labels_mismatch", f"{len(files)} files but {len(labels)} label sets; send one or one per file")
    classes = served_model(services).predictor.classes
    label_sets = [parse_labels(raw, classes, services.params.validate_.min_labels) for raw in labels]
    if len(label_sets) == 1:  # one label set for every file
        label_sets *= len(files)
    uploads = await read_uploads(files, services.params.serve)

    def queue_all() -> list[schemas.FeedbackAccepted]:
        return [
            queue_feedback(services.queue, data, None, chosen, None, note or f"retrain upload {name}", services.decoding)
            for (name, data), chosen in zip(uploads, label_sets)
        ]

    queued = await run_in_threadpool(queue_all)
    try:
        triggered = await run_in_threadpool(services.retrain)
    except Exception as err:
        raise http_problem(
            503,
            "trigger_failed",
            f"retraining could not be started ({type(err).__name__}: {err}); the feedback is queued and the nightly run will use it",
            queued=[item.model_dump() for item in queued],
        ) from None
    return schemas.RetrainAccepted(queued=queued, triggered=triggered)


@router.post("/admin/reload", dependencies=[Depends(require_admin)])
async def admin_reload(services: ServicesDep) -> schemas.Reloaded:
    """Admin: check the champion alias now instead of waiting for the next poll."""
    watcher = services.watcher
    changed = await run_in_threadpool(watcher.refresh_logged, True)  # now, even while a failed version backs off
    if watcher.last_error:
        raise http_problem(500, "reload_failed", f"{watcher.last_error}; still serving the previous model")
    served = watcher.current
    return schemas.Reloaded(changed=changed, model_loaded=served is not None, model_version=served.version.version if served else None)
