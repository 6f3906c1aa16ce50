"""Score trained models on the same frozen test split: thresholds tuned on validation,
metrics at 0.5 and at the tuned thresholds, size on disk and single-image CPU latency."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from multitag.config import EvaluateParams
from multitag.data.preprocess import load_split
from multitag.modeling import ensemble, metrics
from multitag.modeling.train_record import TrainResult
from multitag.reports import markdown_table


@dataclass
class Evaluation:
    architecture: str
    classes: list[str]
    thresholds: list[float]
    default_threshold_classes: list[str]
    val: dict
    test: dict
    latency_ms_p50: float
    size_mb: float
    y_test: np.ndarray
    scores_test: np.ndarray
    scores_val: np.ndarray


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for uint8 images, in batches read straight from the memmap."""
    out = [model.predict_on_batch(np.asarray(x[i : i + batch_size], dtype="float32")) for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype("float64") if out else np.zeros((0, model.output_shape[-1]))


def served_scores(model: keras.Model, x: np.ndarray, cache: Path | None = None) -> np.ndarray:
    """Probabilities for uint8 images: member by member through the feature cache where the model
    is a served ensemble (modeling/ensemble.py: members unchanged since the last evaluation are read,
    not recomputed), else as one graph."""
    by_member = ensemble.scores(model, x, cache)
    return predict(model, x) if by_member is None else by_member


def single_image_latency_ms(model: keras.Model, image: np.ndarray, runs: int) -> float:
    """Median wall time of one-image prediction after a warm-up call (what a user waits for)."""
    batch = image[None].astype("float32")
    model.predict_on_batch(batch)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        timings.append((time.perf_counter() - start) * 1000)
    return float(np.median(timings))


def evaluate_model(
    architecture: str,
    model: keras.Model,
    model_file: Path,
    processed_dir: Path,
    classes: list[str],
    params: EvaluateParams,
    cache: Path | None = None,
) -> Evaluation:
    """Tune thresholds on validation (bounded; too few positives keep the default), then score
    the frozen test split with them. With a feature `cache`, members and photos scored before are
    read from it (`served_scores`)."""
    x_val, y_val = load_split(processed_dir, "val")
    x_test, y_test = load_split(processed_dir, "test")
    scores_val, scores_test = served_scores(model, x_val, cache), served_scores(model, x_test, cache)
    thresholds = metrics.tune_thresholds(
        y_val, scores_val, params.min_threshold_positives, params.default_threshold, params.threshold_bounds
    )
    return Evaluation(
        architecture=architecture,
        classes=classes,
        thresholds=[float(t) for t in thresholds],
        default_threshold_classes=metrics.too_few_to_tune(y_val, classes, params.min_threshold_positives),
        val=metrics.evaluate_at_thresholds(y_val, scores_val, thresholds, classes),
        test=metrics.evaluate_at_thresholds(y_test, scores_test, thresholds, classes),
        latency_ms_p50=single_image_latency_ms(model, np.asarray(x_test[0] if len(x_test) else x_val[0]), params.latency_runs),
        size_mb=model_file.stat().st_size / 1e6,
        y_test=np.asarray(y_test),
        scores_test=scores_test,
        scores_val=scores_val,
    )


def comparison_row(evaluation: Evaluation, train_info: TrainResult) -> dict:
    """One line of the architecture comparison table."""
    tuned = evaluation.test["tuned"]
    return {
        "architecture": evaluation.architecture,
        "parameters": train_info.parameters,
        "size_mb": round(evaluation.size_mb, 2),
        "val_mAP": evaluation.val["tuned"]["mAP"],
        "test_mAP": tuned["mAP"],
        "test_macro_f1": tuned["macro_f1"],
        "test_macro_f1_at_0.5": evaluation.test["at_0.5"]["macro_f1"],
        "latency_ms": round(evaluation.latency_ms_p50, 2),
        "train_seconds": round(train_info.train_seconds, 1),
    }


def comparison_markdown(rows: list[dict]) -> str:
    """The comparison as a markdown table (printed, logged to MLflow and shown in Prefect)."""
    if not rows:
        return "no architectures evaluated\n"
    columns = list(rows[0])
    return "\n".join(markdown_table(columns, ([_fmt(row[c]) for c in columns] for row in rows))) + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "n/a" if value is None else str(value)
