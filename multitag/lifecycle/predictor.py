"""A loaded model plus its contract (classes, thresholds, input size): bytes in, labels out.

The CLI, the evaluation gate's smoke test and the API all predict through this class, so every
consumer decodes images exactly as preprocessing did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from multitag.config import ResizeMode
from multitag.data.images import DEFAULT_MAX_PIXELS, decode, resize_mode
from multitag.errors import UsageError
from multitag.lifecycle.drift import Reference
from multitag.lifecycle.tflite import TFLiteModel
from multitag.service_config import Runtime


@dataclass
class Prediction:
    labels: list[str]
    probabilities: dict[str, float]
    image_sha256: str


@dataclass
class Predictor:
    model: object
    classes: list[str]
    thresholds: np.ndarray
    input_size: int
    resize: ResizeMode = "stretch"
    uri: str = ""
    info: dict = field(default_factory=dict)
    drift_reference: Reference | None = None  # None: logged before models carried one (drift.py)
    folder: Path | None = None  # the downloaded model's folder (its export and stored scores live there)

    @classmethod
    def from_uri(cls, model_uri: str, runtime: Runtime = "auto") -> Predictor:
        """Load any MLflow model URI logged by multitag; the URI alone is enough.

        `auto` serves through the model's TFLite export when the gate logged one (only after the
        export matched the Keras model on the frozen test split; export.py), else through Keras;
        `keras` always loads the Keras model (the gate's reference). `info["runtime"]` says which.
        """
        from multitag.lifecycle import export, tracking

        tracking.configure()
        folder = tracking.download_model(model_uri)
        meta = tracking.logged_metadata(folder)
        if "classes" not in meta:
            raise UsageError(f"{model_uri} has no multitag metadata (classes, thresholds): was it logged by multitag?")
        exported = export.served_export(folder) if runtime == "auto" else None
        return cls(
            model=TFLiteModel(exported) if exported else tracking.load_keras(folder),
            classes=list(meta["classes"]),
            thresholds=np.asarray(meta["thresholds"], dtype="float64"),
            input_size=int(meta["input_size"]),
            resize=resize_mode(meta.get("preprocessing", {}).get("resize", "stretch")),
            uri=model_uri,
            info={**meta, "runtime": export.RUNTIME if exported else "keras"},
            drift_reference=Reference.from_metadata(meta),
            folder=folder,
        )

    def decode(self, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int | None = None) -> np.ndarray:
        return decode(data, self.input_size, self.resize, max_pixels, max_bytes)

    def predict_arrays(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, C) float64 probabilities, one model call for the whole batch.

        Several threads may call it at once: Keras' traced function allows that, and the TFLite
        runtime serialises its interpreter itself (tflite.py)."""
        return np.asarray(self.model.predict_on_batch(images.astype("float32")), dtype="float64")

    def predict_bytes(self, payloads: list[bytes]) -> list[Prediction]:
        """Decode and predict a batch of encoded images (ImageError for an unusable one)."""
        batch = np.stack([self.decode(data) for data in payloads])
        scores = self.predict_arrays(batch)
        return [self.labelled(row, hashlib.sha256(data).hexdigest()) for row, data in zip(scores, payloads)]

    def labelled(self, scores: np.ndarray, sha: str) -> Prediction:
        """One image's scores as served: the classes at or above their thresholds, and every score
        (public because the API scores batches that the micro-batcher assembled, then labels each row)."""
        chosen = [c for c, s, t in zip(self.classes, scores, self.thresholds) if s >= t]
        return Prediction(chosen, {c: float(s) for c, s in zip(self.classes, scores)}, sha)

    def warm_up(self) -> None:
        """One prediction so the first user request does not pay for graph tracing."""
        self.predict_arrays(np.zeros((1, self.input_size, self.input_size, 3), dtype=np.uint8))
