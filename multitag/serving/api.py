"""The HTTP API and web UI: predictions from the registry's champion, feedback into the queue.

The server holds one `ServedModel` reference. A background thread polls the champion alias and,
when it moves, loads and warms the new version before swapping that single reference, so a
request (which reads the reference once) always runs on one complete model and never fails
during a switch. Heavy work (decoding, the batched model call, SQLite writes) runs in the
threadpool, so the event loop keeps accepting requests.

    uvicorn multitag.serving.api:app          # or: multitag serve
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from multitag.config import Params, load_params
from multitag.data import images
from multitag.feedback.queue import FeedbackQueue
from multitag.lifecycle import registry
from multitag.lifecycle.predictor import Predictor

log = logging.getLogger("multitag.serving.api")

STATIC_DIR = Path(__file__).parent / "static"
NO_MODEL = "no model yet: no champion of {name}; run `make demo` or `multitag pipeline --source ... --path ...` to register one"
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart headers and small form fields around the files
METRIC_TAGS = ("val_mAP", "test_mAP", "test_macro_f1", "latency_ms", "size_mb")
RETRAIN_DEPLOYMENT_ENV = "MULTITAG_RETRAIN_DEPLOYMENT"
RETRAIN_MODULE = "flows.nightly_retraining"

RetrainTrigger = Callable[[], dict[str, str]]


# -- the served model -------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One loaded registry version; a request reads this once, so a swap never mixes two models."""

    predictor: Predictor
    name: str
    alias: str
    version: registry.VersionInfo
    loaded_at: float


class ChampionWatcher:
    """Keeps `current` on the version the alias points to, checking every `interval_s` seconds."""

    def __init__(self, name: str, interval_s: float, alias: str = registry.CHAMPION):
        self.name, self.alias, self.interval_s = name, alias, interval_s
        self.current: ServedModel | None = None
        self.last_checked_at: float | None = None
        self.last_error: str | None = None
        self._refresh_lock = threading.Lock()  # the poller and /admin/reload never load twice at once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Check the alias now; load and warm a new version, then swap it in. Returns whether it swapped.

        The version is loaded by number (`models:/name/N`), not through the alias, so the model
        loaded is exactly the one checked even if the alias moves again meanwhile.
        """
        with self._refresh_lock:
            target = registry.alias_version(self.name, self.alias)
            self.last_checked_at = time.time()
            if target is None or (self.current is not None and self.current.version.version == target.version):
                return False
            predictor = Predictor.from_uri(f"models:/{self.name}/{target.version}")
            warm_up(predictor)
            self.current = ServedModel(predictor, self.name, self.alias, target, time.time())  # the one atomic swap
            log.info("serving %s version %s (%s)", self.name, target.version, self.alias)
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
        self._thread = threading.Thread(target=self._poll, name="champion-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh_logged()


def warm_up(predictor: Predictor) -> None:
    """Trace the model for a single image and for batches before it serves.

    Keras traces the predict function again on the first batch of a new size; warming with 1
    and 2 images leaves a trace that accepts any batch size, so no user request pays for it.
    """
    predictor.warm_up()
    predictor.predict_arrays(np.zeros((2, predictor.input_size, predictor.input_size, 3), dtype=np.uint8))


# -- request size limits ----------------------------------------------------------------------


class BodySizeLimit:
    """Refuse request bodies over `limit_bytes` with 413 before they are parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, limit_bytes: int):
        self.app, self.limit_bytes = app, limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit_bytes:
            await JSONResponse(self._too_large(), status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:  # bodies without Content-Length (chunked)
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit_bytes:
                raise HTTPException(413, self._too_large()["detail"])
            return message

        await self.app(scope, counting_receive, send)

    def _too_large(self) -> dict:
        return {"detail": _problem("request_too_large", f"the request body exceeds {self.limit_bytes:,} bytes")}


# -- helpers ----------------------------------------------------------------------------------


@dataclass
class Services:
    """What the endpoints share, created when the server starts (not at import)."""

    params: Params
    watcher: ChampionWatcher
    queue: FeedbackQueue
    retrain: RetrainTrigger


def _problem(reason: str, message: str, **extra: object) -> dict:
    """Every error body has a machine-readable `reason` and a `message` that says what to do."""
    return {"reason": reason, "message": message, **extra}


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


def _served(services: Services) -> ServedModel:
    """The model to answer with, or 503 saying how to get one."""
    served = services.watcher.current
    if served is None:
        raise HTTPException(503, _problem("no_model", NO_MODEL.format(name=services.watcher.name)))
    return served


def _require_admin(request: Request, services: ServicesDep) -> None:
    """Admin endpoints need `Authorization: Bearer <token>`; without a configured token they are off, never open."""
    env_name = services.params.serve.admin_token_env
    expected = os.environ.get(env_name, "")
    if not expected:
        raise HTTPException(403, _problem("disabled", f"admin endpoints are disabled: set {env_name} on the server to enable them"))
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise HTTPException(
            401, _problem("unauthorized", "send `Authorization: Bearer <admin token>`"), headers={"WWW-Authenticate": "Bearer"}
        )


async def _read_uploads(files: list[UploadFile], params: Params) -> list[tuple[str, bytes]]:
    """(filename, bytes) per upload, enforcing the file-count and per-file size limits (413)."""
    limits = params.serve
    if len(files) > limits.max_files:
        raise HTTPException(413, _problem("too_many_files", f"{len(files)} files sent; at most {limits.max_files} per request"))
    for upload in files:
        if upload.size is not None and upload.size > limits.max_upload_bytes:
            raise HTTPException(
                413,
                _problem(
                    "file_too_large",
                    f"{upload.filename} has {upload.size:,} bytes; the limit is {limits.max_upload_bytes:,} per file",
                    filename=upload.filename,
                ),
            )
    return [(upload.filename or f"file{i}", await upload.read()) for i, upload in enumerate(files)]


def _image_problem(check: Callable[[bytes], object], filename: str, data: bytes) -> dict | None:
    """Why `check` cannot use this image (as an error entry), or None when it can."""
    try:
        check(data)
    except images.ImageError as err:
        return {"filename": filename, "reason": err.reason, "detail": err.detail}
    except Exception as err:
        return {"filename": filename, "reason": "undecodable", "detail": f"{type(err).__name__}: {err}"}
    return None


def _bad_images(problems: list[dict]) -> HTTPException:
    """415 when no file is an image format at all, otherwise 422; every bad file is listed."""
    status = 415 if all(p["reason"] == "not_an_image" for p in problems) else 422
    names = ", ".join(f"{p['filename']} ({p['reason']})" for p in problems)
    return HTTPException(status, _problem(problems[0]["reason"], f"unusable image(s): {names}", files=problems))


def _predict(served: ServedModel, uploads: list[tuple[str, bytes]], queue: FeedbackQueue) -> list[dict]:
    """Decode every file and run ONE batched model call; store each image so /feedback can name it by hash.

    Only when the batch fails are the files checked one by one, to tell the user which are bad.
    """
    predictor = served.predictor
    try:
        predictions = predictor.predict_bytes([data for _, data in uploads])
    except Exception:
        problems = [p for name, data in uploads if (p := _image_problem(predictor.decode, name, data))]
        if problems:
            raise _bad_images(problems) from None
        raise
    for _, data in uploads:
        queue.store_image(data)
    return [
        {
            "filename": name,
            "labels": p.labels,
            "probabilities": p.probabilities,
            "model_version": served.version.version,
            "model_alias": served.alias,
            "image_sha256": p.image_sha256,
        }
        for (name, _), p in zip(uploads, predictions)
    ]


def parse_labels(raw: str, classes: list[str]) -> list[str]:
    """A JSON list (`["cat", "dog"]`) or `cat|dog`; 422 naming any class the model does not know."""
    if raw.strip().startswith("["):
        try:
            labels = json.loads(raw)
        except json.JSONDecodeError as err:
            raise HTTPException(422, _problem("bad_labels", f"labels look like JSON but do not parse: {err}")) from None
        if not all(isinstance(label, str) for label in labels):
            raise HTTPException(422, _problem("bad_labels", "labels must be a JSON list of class names (strings)"))
    else:
        labels = raw.split("|")
    labels = sorted({label.strip() for label in labels if label.strip()})
    unknown = [label for label in labels if label not in classes]
    if unknown:
        raise HTTPException(
            422,
            _problem("unknown_classes", f"unknown classes: {', '.join(unknown)}; the model knows: {', '.join(classes)}", unknown=unknown),
        )
    return labels


def _queue_feedback(
    queue: FeedbackQueue,
    upload: bytes | None,
    sha: str | None,
    labels: list[str],
    model_version: str | None,
    note: str | None,
    max_pixels: int,
) -> dict:
    """Queue one correction, by image bytes or by the hash of an image /predict stored."""
    if upload is not None:
        problem = _image_problem(lambda data: images.inspect(data, max_pixels), "file", upload)
        if problem:
            raise _bad_images([problem])
        result = queue.add(upload, labels, model_version, note)
    else:
        try:
            result = queue.add_by_sha(sha or "", labels, model_version, note)
        except ValueError as err:
            raise HTTPException(422, _problem("bad_sha256", str(err))) from None
        except KeyError:
            raise HTTPException(
                404, _problem("unknown_image", f"no stored image has sha256 {sha}; send the image itself as `file`, or /predict it first")
            ) from None
    return {"id": result.id, "image_sha256": result.image_sha256, "merged": result.merged}


# -- triggering retraining --------------------------------------------------------------------


def retrain_trigger_from_env(log_path: Path, params_path: Path | str = "params.yaml") -> RetrainTrigger:
    """A Prefect deployment run when MULTITAG_RETRAIN_DEPLOYMENT names one, else a detached local flow process.

    Either way the flow reads the params file this server was started with, so a server on a
    custom params file retrains on that file's data, queue and registry, not on the defaults.
    """
    deployment = os.environ.get(RETRAIN_DEPLOYMENT_ENV)
    if deployment:
        return lambda: run_prefect_deployment(deployment, str(params_path))
    return lambda: start_flow_process([sys.executable, "-m", RETRAIN_MODULE, str(params_path)], log_path)


def run_prefect_deployment(name: str, params_path: str) -> dict[str, str]:
    """Schedule the deployment and return at once (timeout=0): a Prefect worker runs it."""
    # Imported here, not at the top: Prefect takes seconds to import.
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name, parameters={"params_path": params_path}, timeout=0)
    return {"via": "prefect", "deployment": name, "flow_run_id": str(flow_run.id)}


def start_flow_process(command: list[str], log_path: Path) -> dict[str, str]:
    """Start the flow in its own session (it outlives a server restart); output appends to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends, without blocking
    return {"via": "subprocess", "command": " ".join(command), "pid": str(process.pid), "log": str(log_path)}


# -- the app ----------------------------------------------------------------------------------


def params_or_defaults(params_path: Path | str) -> Params:
    """The project's params, or the defaults when the file is absent (so `import multitag.serving.api` always works)."""
    if not Path(params_path).exists():
        log.warning("%s not found: serving with default parameters", params_path)
        return Params()
    return load_params(params_path)


def create_app(
    params: Params | None = None, params_path: Path | str = "params.yaml", retrain_trigger: RetrainTrigger | None = None
) -> FastAPI:
    """The API. Nothing touches the registry or the queue until the server starts."""
    params = params or params_or_defaults(params_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue = FeedbackQueue(params.feedback.db_path, params.feedback.images_dir, params.feedback.lease_seconds)
        watcher = ChampionWatcher(params.registry.model_name, params.serve.reload_interval_s)
        trigger = retrain_trigger or retrain_trigger_from_env(params.feedback.db_path.parent / "retrain.log", params_path)
        app.state.services = Services(params, watcher, queue, trigger)
        await run_in_threadpool(watcher.refresh_logged)  # ready with a model when there is one; never blocks startup on errors
        watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    app = FastAPI(title="multitag", summary="Multi-label image tagging with a hot-reloaded champion model.", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, limit_bytes=params.serve.max_files * params.serve.max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/health")
    def health(services: ServicesDep) -> dict:
        """Always 200 while the process serves; `model_loaded` says whether /predict can answer."""
        served, watcher, limits = services.watcher.current, services.watcher, services.params.serve
        return {
            "status": "ok",
            "model_loaded": served is not None,
            "model_name": watcher.name,
            "model_alias": watcher.alias,
            "model_version": served.version.version if served else None,
            "last_checked_at": watcher.last_checked_at,
            "last_error": watcher.last_error,
            "limits": {"max_files": limits.max_files, "max_upload_bytes": limits.max_upload_bytes},
        }

    @app.get("/model")
    def model(services: ServicesDep) -> dict:
        """The served version: its contract (classes, thresholds) and the metrics it was registered with."""
        served = _served(services)
        predictor, tags = served.predictor, served.version.tags
        return {
            "name": served.name,
            "version": served.version.version,
            "alias": served.alias,
            "architecture": predictor.info.get("architecture") or tags.get("architecture"),
            "classes": predictor.classes,
            "thresholds": dict(zip(predictor.classes, predictor.thresholds.tolist())),
            "input_size": predictor.input_size,
            "metrics": {key: float(tags[key]) for key in METRIC_TAGS if key in tags},
            "gate_verdict": tags.get("gate_verdict"),
            "run_id": served.version.run_id,
            "loaded_at": served.loaded_at,
        }

    @app.post("/predict")
    async def predict(files: Annotated[list[UploadFile], File(description="One or more images.")], services: ServicesDep) -> dict:
        """Labels above each class threshold and every class probability, per file, from one batched call."""
        served = _served(services)
        uploads = await _read_uploads(files, services.params)
        return {"predictions": await run_in_threadpool(_predict, served, uploads, services.queue)}

    @app.post("/feedback", status_code=202)
    async def feedback(
        services: ServicesDep,
        labels: Annotated[str, Form(description='The correct classes: a JSON list or "a|b".')],
        file: Annotated[UploadFile | None, File(description="The image, or send image_sha256 instead.")] = None,
        image_sha256: Annotated[str | None, Form(description="Hash of an image sent to /predict before.")] = None,
        note: Annotated[str | None, Form()] = None,
        model_version: Annotated[str | None, Form(description="The version whose prediction is corrected.")] = None,
    ) -> dict:
        """Queue a user's corrected labels for the next retraining."""
        if (file is None) == (image_sha256 is None):
            raise HTTPException(422, _problem("image_missing", "send exactly one of `file` (the image) or `image_sha256`"))
        chosen = parse_labels(labels, _served(services).predictor.classes)
        upload = (await _read_uploads([file], services.params))[0][1] if file is not None else None
        return await run_in_threadpool(
            _queue_feedback, services.queue, upload, image_sha256, chosen, model_version, note, services.params.validate_.max_pixels
        )

    @app.get("/feedback/stats")
    async def feedback_stats(services: ServicesDep) -> dict:
        """Queue counts per state and pending label counts."""
        return await run_in_threadpool(services.queue.stats)

    @app.post("/retrain", status_code=202, dependencies=[Depends(_require_admin)])
    async def retrain(
        services: ServicesDep,
        files: Annotated[list[UploadFile], File(description="Images to train on.")],
        labels: Annotated[list[str], Form(description="One label set for all files, or one per file (same order).")],
        note: Annotated[str | None, Form()] = None,
    ) -> dict:
        """Admin: queue labelled images, then start the retraining flow without waiting for it."""
        if len(labels) not in (1, len(files)):
            raise HTTPException(
                422, _problem("labels_mismatch", f"{len(files)} files but {len(labels)} label sets; send one or one per file")
            )
        classes = _served(services).predictor.classes
        label_sets = [parse_labels(raw, classes) for raw in labels]
        if len(label_sets) == 1:  # one label set for every file
            label_sets *= len(files)
        uploads = await _read_uploads(files, services.params)

        def queue_all() -> list[dict]:
            return [
                _queue_feedback(
                    services.queue, data, None, chosen, None, note or f"retrain upload {name}", services.params.validate_.max_pixels
                )
                for (name, data), chosen in zip(uploads, label_sets)
            ]

        queued = await run_in_threadpool(queue_all)
        try:
            triggered = await run_in_threadpool(services.retrain)
        except Exception as err:
            raise HTTPException(
                503,
                _problem(
                    "trigger_failed",
                    f"retraining could not be started ({type(err).__name__}: {err}); "
                    "the feedback is queued and the nightly run will use it",
                    queued=queued,
                ),
            ) from None
        return {"queued": queued, "triggered": triggered}

    @app.post("/admin/reload", dependencies=[Depends(_require_admin)])
    async def admin_reload(services: ServicesDep) -> dict:
        """Admin: check the champion alias now instead of waiting for the next poll."""
        watcher = services.watcher
        changed = await run_in_threadpool(watcher.refresh_logged)
        if watcher.last_error:
            raise HTTPException(500, _problem("reload_failed", f"{watcher.last_error}; still serving the previous model"))
        served = watcher.current
        return {"changed": changed, "model_loaded": served is not None, "model_version": served.version.version if served else None}


def serve(host: str | None = None, port: int | None = None, params_path: Path | str = "params.yaml") -> None:
    """Run the API and UI with uvicorn in one process (the model lives in it); `multitag serve` calls this."""
    import uvicorn

    params = params_or_defaults(params_path)
    uvicorn.run(create_app(params, params_path), host=host or params.serve.host, port=port or params.serve.port)


app = create_app()
