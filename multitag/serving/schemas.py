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
    total: int
    pending_labels: dict[str, int]


class RetrainAccepted(BaseModel):
    queued: list[FeedbackAccepted]
    triggered: dict[str, str]


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
