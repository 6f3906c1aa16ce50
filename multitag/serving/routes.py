"""The endpoints. Each reads the shared `Services` through a dependency and answers with a
response model from schemas.py; heavy work (decoding, queue writes) runs in the threadpool and
model calls in the micro-batcher's worker (batching.py), so the event loop keeps accepting requests."""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse

from multitag.config import Params, ValidateParams
from multitag.data.manifest import normalize_labels
from multitag.feedback import review
from multitag.feedback.predictions import Answer, PredictionLog
from multitag.feedback.queue import FeedbackQueue, OpenInAnotherTask, Origin
from multitag.feedback.screen import client_hash
from multitag.feedback.shadow import report_from_log
from multitag.feedback.store import ImageStore, checked_sha
from multitag.lifecycle.predictor import Predictor
from multitag.serving import access, schemas
from multitag.serving.batching import MicroBatcher, score
from multitag.serving.drift_watch import as_response, served_drift
from multitag.serving.limits import DecodeBudget, read_uploads
from multitag.serving.problems import bad_images, disk_full, http_problem, image_problem
from multitag.serving.quotas import check_storage_quota, client_key, exempt
from multitag.serving.retrain_trigger import RetrainTrigger
from multitag.serving.shadow import ShadowScorer
from multitag.serving.watcher import ChampionWatcher, ServedModel

log = logging.getLogger(__name__)
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


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]
router = APIRouter(responses=PROBLEMS)


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


def unnest_label_sets(fields: list[str]) -> list[str]:
    """The original API's form, one field holding a JSON list of label lists (`[["person","chair"],
    ["dog"]]`, one per file), as the per-file fields the rest of /retrain reads; any other form
    passes unchanged."""
    if len(fields) != 1 or not fields[0].lstrip().startswith("[["):
        return fields
    try:
        nested = json.loads(fields[0])
    except ValueError as err:
        raise http_problem(422, "bad_labels", f"labels look like JSON but do not parse: {err}") from None
    if not all(isinstance(item, list) for item in nested):
        raise http_problem(422, "bad_labels", "labels as nested JSON must be a list of label lists, one per file")
    return [json.dumps(item) for item in nested]


def parse_labels(raw: str, classes: list[str], min_labels: int = ValidateParams().min_labels) -> list[str]:
    """A JSON list (`["cat", "dog"]`) or `cat|dog`; 422 naming any class the model does not know, or
    when there are fewer than `min_labels` (validate.min_labels: validation would quarantine them)."""
    if raw.strip().startswith("["):
        try:
            labels = json.loads(raw)
        except json.JSONDecodeError as err:
            raise http_problem(422, "bad_labels", f"labels look like JSON but do not parse: {err}") from None
        if not all(isinstance(label, str) for label in labels):
            raise http_problem(422, "bad_labels", "labels must be a JSON list of class names (strings)")
    else:
        labels = raw.split("|")
    labels = normalize_labels(labels)
    unknown = [label for label in labels if label not in classes]
    if unknown:
        known = ", ".join(classes)
        raise http_problem(422, "unknown_classes", f"unknown classes: {', '.join(unknown)}; the model knows: {known}", unknown=unknown)
    if len(labels) < min_labels:
        message = (
            f"send at least {min_labels} correct label(s), ticked on the web page: an image with fewer cannot train (validate.min_labels)"
        )
        raise http_problem(422, "no_labels", message, min_labels=min_labels)
    return labels


def decode_uploads(decoding: DecodeBudget, predictor: Predictor, uploads: list[tuple[str, bytes]]) -> np.ndarray:
    """Every file decoded for the model within the server's decode budget, (N, S, S, 3) uint8;
    415/422 listing each unusable file when one is."""
    decode = decoding.decoder(predictor)
    try:
        return np.stack([decode(data) for _, data in uploads])
    except Exception:
        problems = [p for name, data in uploads if (p := image_problem(decode, name, data))]
        if problems:
            raise bad_images(problems) from None
        raise


def answer_uploads(
    served: ServedModel,
    uploads: list[tuple[str, bytes]],
    scores: np.ndarray,
    store: ImageStore | None,
    prediction_log: PredictionLog | None = None,
) -> list[schemas.Prediction]:
    """Each file's answer from its row of `scores`, naming the version that scored it; store each image
    (unless `store` is None) so /feedback can name it by hash, and log the answers (unless
    `prediction_log` is None; a failed write costs the log entry, not the answer)."""
    if store is not None:
        for name, data in uploads:
            keep_for_feedback(store, name, data)
    predictions = [served.predictor.labelled(row, hashlib.sha256(data).hexdigest()) for (_, data), row in zip(uploads, scores)]
    if prediction_log is not None:
        answers = [Answer(p.image_sha256, p.labels, p.probabilities) for p in predictions]
        prediction_log.record_logged(served.name, served.version.version, answers)
    return [
        schemas.Prediction(
            filename=name,
            labels=p.labels,
            probabilities=p.probabilities,
            model_version=served.version.version,
            model_alias=served.alias,
            image_sha256=p.image_sha256,
        )
        for (name, _), p in zip(uploads, predictions)
    ]


def keep_for_feedback(store: ImageStore, name: str, data: bytes) -> None:
    """Store a predicted image so a correction can name it by hash; a full disk costs that copy, not the prediction."""
    try:
        store.store(data)
    except OSError as err:
        if not disk_full(err):
            raise
        log.warning("disk full: %s was predicted but not stored (%s); a correction of it must send the image itself", name, err)


def queue_feedback(
    queue: FeedbackQueue,
    upload: bytes | None,
    sha: str | None,
    labels: list[str],
    model_version: str | None,
    note: str | None,
    decoding: DecodeBudget,
    origin: Origin = "upload",
    client: str | None = None,
    absent: list[str] | None = None,
) -> schemas.FeedbackAccepted:
    """Queue one correction, by image bytes or by the hash of an image /predict stored; `client` is
    the sender's keyed hash (screen.client_hash), None for the admin; `absent` None: a full labelling."""
    try:
        if upload is not None:
            problem = image_problem(decoding.inspect, "file", upload)
            if problem:
                raise bad_images([problem])
            result = queue.add(upload, labels, model_version, note, origin, client, absent)
        else:
            try:
                result = queue.add_by_sha(sha or "", labels, model_version, note, origin, client, absent)
            except ValueError as err:
                raise http_problem(422, "bad_sha256", str(err)) from None
            except KeyError:
                message = f"no stored image has sha256 {sha}; send the image itself as `file`, or /predict it first"
                raise http_problem(404, "unknown_image", message) from None
    except OpenInAnotherTask as err:  # one open item per correction holds across tasks (schema.OPEN_ONCE)
        raise http_problem(409, "open_in_another_task", str(err)) from None
    return schemas.FeedbackAccepted(id=result.id, image_sha256=result.image_sha256, merged=result.merged)


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
