"""The API's response bodies as Pydantic models, so `/openapi.json` documents exactly what the
web page and other clients rely on (and FastAPI checks every answer against it)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Limits(BaseModel):
    max_files: int
    max_upload_bytes: int


class Health(BaseModel):
    status: str = Field(description="Always 'ok' while the process serves.")
    model_loaded: bool = Field(description="Whether /predict can answer.")
    model_name: str
    model_alias: str
    model_version: str | None
    last_checked_at: float | None = Field(description="Unix time of the last registry check.")
    last_error: str | None = Field(description="Why the last check failed; the previous model keeps serving.")
    limits: Limits


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str
    architecture: str | None
    classes: list[str]
    thresholds: dict[str, float] = Field(description="Per class: a probability at or above it is a label.")
    input_size: int
    runtime: str = Field(description="What answers /predict: 'tflite' (the version's parity-checked export) or 'keras'.")
    metrics: dict[str, float] = Field(description="The metrics the version was registered with.")
    gate_verdict: str | None
    run_id: str | None
    loaded_at: float


class Prediction(BaseModel):
    filename: str
    labels: list[str]
    probabilities: dict[str, float]
    model_version: str
    model_alias: str
    image_sha256: str = Field(description="Name of the stored image: /feedback accepts it instead of the file.")


class Predictions(BaseModel):
    predictions: list[Prediction]


class FeedbackAccepted(BaseModel):
    id: int
    image_sha256: str
    merged: bool = Field(description="True when an open identical correction already existed.")


class FeedbackStats(BaseModel):
    pending: int
    claimed: int
    consumed: int
    rejected: int
    held: int = Field(0, description="Set aside for review by the screen before the nightly claim (`multitag feedback list --state held`).")
    total: int
    pending_labels: dict[str, int]
    task: str | None = Field(None, description="The task (registered model) these counts are of: the served model's.")
    unassigned: int = Field(0, description="Items of no task in the whole queue, queued before corrections recorded their task.")


class ReviewItem(BaseModel):
    image_sha256: str
    image_url: str = Field(description="Where the stored image is served (GET /images/{sha256}).")
    model_version: str
    labels: list[str]
    probabilities: dict[str, float]
    predicted_at: float
    reason: str = Field(description="Why the image is worth a look, for a person.")
    closest_class: str = Field(description="The class whose score is nearest its threshold.")
    margin: float = Field(description="|logit(score) - logit(threshold)| of closest_class: the smaller, the less sure the model.")
    disagreement: bool = Field(description="The challenger's labels for the image differ from the champion's.")
    challenger_labels: list[str] | None
    challenger_version: str | None


class ReviewList(BaseModel):
    model_name: str
    model_version: str = Field(description="The served version whose answers were ranked.")
    items: list[ReviewItem] = Field(description="Most worth a look first.")


class RetrainAccepted(BaseModel):
    queued: list[FeedbackAccepted]
    triggered: dict[str, str]


class ClassDrift(BaseModel):
    name: str
    live_rate: float = Field(description="Share of the window's answers that named the class.")
    reference_rate: float = Field(description="Share of the frozen test split the same version predicted positive.")
    live_positives: int
    reference_positives: int
    p_value: float = Field(description="Fisher's exact test, two-sided.")
    adjusted_p_value: float = Field(description="Holm-corrected across the classes.")
    drifted: bool


class Drift(BaseModel):
    status: str = Field(description="drift | no_drift | not_enough_data | no_reference | no_log")
    message: str = Field(description="The verdict, or what is missing and how to get it, for a person.")
    model_name: str
    model_version: str
    predictions: int = Field(description="Logged answers of this version compared (at most `window`).")
    window: int
    min_predictions: int
    alpha: float
    test: str
    correction: str
    reference_rows: int | None = Field(description="Test images the reference rates were counted on; null: no reference.")
    first_predicted_at: float | None
    last_predicted_at: float | None
    drifted_classes: list[str]
    classes: list[ClassDrift]


class ShadowClass(BaseModel):
    name: str
    images: int
    agreement: float = Field(description="Share of paired images where champion and challenger both tag it or both do not.")
    champion_tag_rate: float
    challenger_tag_rate: float
    feedback_images: int = Field(description="Paired images with a correction in the feedback queue.")
    champion_correct: int = Field(description="Of those, how often the champion's tag-or-not matched the correction.")
    challenger_correct: int


class ShadowReport(BaseModel):
    model_name: str
    champion_version: str | None
    challenger_version: str
    images: int = Field(description="Images both answered, one pair per image.")
    agreement: float | None = Field(description="Over every (image, shared class); null without images.")
    exact_agreement: float | None = Field(description="Share of images whose label sets match on the shared classes.")
    feedback_images: int
    champion_correct: int
    challenger_correct: int
    classes: list[ShadowClass]
    champion_only_classes: list[str] = Field(description="Classes only the champion knows: not compared.")
    challenger_only_classes: list[str]


class ShadowScoring(BaseModel):
    scored: int = Field(description="Images the challenger scored and the log recorded, since the server started.")
    dropped: int = Field(description="Images not shadow-scored because the shadow queue was full.")
    failed: int = Field(description="Images whose shadow scoring or logging failed.")
    queued: int = Field(description="Requests waiting for shadow scoring now.")
    last_error: str | None


class Shadow(BaseModel):
    enabled: bool = Field(description="serve.shadow is on and the prediction log records the answers.")
    challenger_version: str | None = Field(description="The challenger loaded now; null: no challenger alias, nothing shadowed.")
    challenger_error: str | None = Field(description="Why the last check of the challenger alias failed.")
    scoring: ShadowScoring | None
    report: ShadowReport | None = Field(description="The loaded challenger against the served champion, from the prediction log.")


class Reloaded(BaseModel):
    changed: bool
    model_loaded: bool
    model_version: str | None


class Problem(BaseModel):
    reason: str = Field(description="Machine-readable cause, e.g. no_model, file_too_large, unknown_classes.")
    message: str = Field(description="What went wrong and what to do, for a person.")

    model_config = {"extra": "allow"}


class ProblemResponse(BaseModel):
    detail: Problem
