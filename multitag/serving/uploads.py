"""What /predict, /feedback and /retrain do with what a client sends: label sets parsed against
the served classes, images decoded within the decode budget, answers logged and images kept
for feedback, corrections queued."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from multitag.config import ValidateParams
from multitag.data.manifest import normalize_labels
from multitag.feedback.predictions import Answer, PredictionLog
from multitag.feedback.queue import CorrectionDetails, FeedbackQueue, OpenInAnotherTask, Origin
from multitag.feedback.store import ImageStore
from multitag.lifecycle.predictor import Predictor
from multitag.serving import schemas
from multitag.serving.limits import DecodeBudget
from multitag.serving.problems import bad_images, disk_full, http_problem, image_problem
from multitag.serving.watcher import ServedModel

log = logging.getLogger(__name__)


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
    the sender's keyed hash (screen_rules.client_hash), None for the admin; `absent` None: a full labelling."""
    details = CorrectionDetails(model_version=model_version, note=note, origin=origin, client=client, absent=absent)
    try:
        if upload is not None:
            problem = image_problem(decoding.inspect, "file", upload)
            if problem:
                raise bad_images([problem])
            result = queue.add(upload, labels, **details)
        else:
            try:
                result = queue.add_by_sha(sha or "", labels, **details)
            except ValueError as err:
                raise http_problem(422, "bad_sha256", str(err)) from None
            except KeyError:
                message = f"no stored image has sha256 {sha}; send the image itself as `file`, or /predict it first"
                raise http_problem(404, "unknown_image", message) from None
    except OpenInAnotherTask as err:  # one open item per correction holds across tasks (schema.OPEN_ONCE)
        raise http_problem(409, "open_in_another_task", str(err)) from None
    return schemas.FeedbackAccepted(id=result.id, image_sha256=result.image_sha256, merged=result.merged)
