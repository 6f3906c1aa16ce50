"""Multi-label metrics for model selection, gating and reports: scikit-learn for the standard
ranking scores (AP, ROC AUC), numpy for what it lacks (one-sort F1-best thresholds, NaN for
classes a split does not contain, JSON-ready reports). The paired bootstrap of one model's gain
over another that the gate reports is in bootstrap.py.

Conventions every function here shares (serving shares the threshold rule via `apply_thresholds`):

- `y_true` is (N, C) of 0/1 (uint8 or bool); `y_score` is (N, C) of probabilities.
- A label is predicted when `score >= threshold`.
- A class with no positives in `y_true` has no defined AP, recall or F1. These are NaN here
  (None in the JSON-ready dicts), and the class is left out of mAP and the macro averages.
  Scoring it as 0 or 1 would move the average by an amount the model never earned. It still
  counts in the micro averages, Hamming loss and subset accuracy, because its false positives
  are real errors.
- Ranking metrics treat tied scores as one cut-off, as scikit-learn does. Results never depend
  on the order of tied rows.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import numpy as np

_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./ ]")
Headline = Literal["mAP", "macro_f1", "micro_f1"]  # the metrics a gate can decide on (evaluate.primary_metric)


def check_inputs(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values once, so each metric can assume bool labels and float scores."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != y_score.shape:
        raise ValueError(f"y_true and y_score must both be (N, C) arrays; got {y_true.shape} and {y_score.shape}")
    if y_true.shape[0] == 0:
        raise ValueError("no samples: metrics need at least one row in y_true and y_score")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true must hold only 0/1 (or bool) labels")
    if not np.isfinite(y_score).all():
        raise ValueError("y_score holds NaN or infinite values; check the model's outputs")
    return y_true.astype(bool), y_score


def _ranked_counts(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/false positive counts for `score >= t` at each distinct score t, highest t first.

    This single O(N log N) sort feeds the precision-recall steps and threshold tuning. Tied scores share
    one cut-off, so a tie never splits in an order-dependent way.
    """
    order = np.argsort(-y_score, kind="stable")
    scores, hits = y_score[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tps = np.cumsum(hits)[last_of_tie]
    fps = last_of_tie + 1 - tps
    return tps, fps, scores[last_of_tie]


def precision_recall_steps(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) for one class at the cut-offs where recall rises, from (0, 1) upward.

    Drawn with `drawstyle="steps-pre"`, the area under the curve is the class's average
    precision (no interpolation), so the plotted curve and the reported AP cannot disagree.
    Cut-offs that add only false positives have zero width in that area, so they are left out.
    """
    tps, fps, _ = _ranked_counts(np.asarray(y_true, dtype=bool), np.asarray(y_score, dtype=np.float64))
    if tps[-1] == 0:
        raise ValueError("a class with no positives has no precision-recall curve; skip it")
    rises = np.diff(tps, prepend=0) > 0
    tps, fps = tps[rises], fps[rises]
    return np.r_[0.0, tps / tps[-1]], np.r_[1.0, tps / (tps + fps)]


def average_precision_per_class(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """AP per class (scikit-learn's step-wise `average_precision_score`), NaN without positives.

    NaN rather than 0 or 1, so that a class the split happens not to contain cannot move mAP.
    """
    from sklearn.metrics import average_precision_score

    y_true, y_score = check_inputs(y_true, y_score)
    return np.array(
        [average_precision_score(y_true[:, c], y_score[:, c]) if y_true[:, c].any() else math.nan for c in range(y_true.shape[1])]
    )


def roc_auc_per_class(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC per class (scikit-learn's `roc_auc_score`). NaN where a class lacks positives or negatives.

    AUC is undefined when one side of the ranking is empty, so it is NaN there instead of an error.
    """
    from sklearn.metrics import roc_auc_score

    y_true, y_score = check_inputs(y_true, y_score)
    return np.array(
        [roc_auc_score(y_true[:, c], y_score[:, c]) if 0 < y_true[:, c].sum() < len(y_true) else math.nan for c in range(y_true.shape[1])]
    )


def _best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    tps, fps, cut_offs = _ranked_counts(y_true, y_score)
    if tps[-1] == 0:
        return 0.5
    best = int(np.argmax(2 * tps / (tps + fps + tps[-1])))  # F1 = 2TP / (2TP + FP + FN)
    if best + 1 == cut_offs.size:
        return float(cut_offs[best])
    midpoint = (cut_offs[best] + cut_offs[best + 1]) / 2  # widest margin on both sides
    return float(midpoint if midpoint > cut_offs[best + 1] else cut_offs[best])


def tune_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    min_positives: int = 1,
    default: float = 0.5,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Per-class threshold that maximises F1 on this data (the validation split), within `bounds`.

    Only the N distinct scores can change the predictions, so a single sort finds the exact
    best F1. A grid of thresholds costs more and can miss it. The threshold sits half-way
    between the lowest accepted score and the next lower one, so `>=` and `>` agree on this
    data, and unseen scores near the edge fall on the side the data supports. When several
    cut-offs tie on F1, the highest is chosen, because it predicts fewer labels.

    A class with fewer than `min_positives` positives keeps `default`: with one or two
    positives the F1-best cut-off is often "everything positive", which would tag every photo
    with that class (docs/DECISIONS.md: thresholds).
    """
    y_true, y_score = check_inputs(y_true, y_score)
    tuned = np.array([_best_f1_threshold(y_true[:, c], y_score[:, c]) for c in range(y_true.shape[1])])
    tuned = np.where(y_true.sum(axis=0) >= min_positives, tuned, default)
    return np.clip(tuned, *bounds)


def too_few_to_tune(y_true: np.ndarray, classes: list[str], min_positives: int) -> list[str]:
    """The classes whose threshold `tune_thresholds` leaves at the default (reported by name)."""
    counts = np.asarray(y_true).sum(axis=0)
    return [name for name, count in zip(classes, counts) if count < min_positives]


def apply_thresholds(y_score: np.ndarray, thresholds: float | np.ndarray) -> np.ndarray:
    """Boolean predictions `score >= threshold`. This is the one place that decides the rule."""
    y_score = np.asarray(y_score, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim > 1 or (thresholds.ndim == 1 and thresholds.shape[0] != y_score.shape[-1]):
        raise ValueError(f"thresholds must be a scalar or one per class ({y_score.shape[-1]}); got shape {thresholds.shape}")
    return y_score >= thresholds


def precision_at_k(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    """Mean over samples of the fraction of the k highest-scored classes that are true.

    This is a threshold-free view of what a user sees when the UI shows the top k tags.
    Tied scores are broken by class order.
    """
    y_true, y_score = check_inputs(y_true, y_score)
    if not 1 <= k <= y_true.shape[1]:
        raise ValueError(f"k must be between 1 and the number of classes ({y_true.shape[1]}); got {k}")
    top_k = np.argsort(-y_score, axis=1, kind="stable")[:, :k]
    return float(np.take_along_axis(y_true, top_k, axis=1).mean())


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise division with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    out = np.zeros(np.shape(numerator), dtype=np.float64)
    return np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _mean_or_none(values: np.ndarray) -> float | None:
    """Mean of the defined (non-NaN) values. None when there are none, because JSON has no NaN."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def compute_metrics(y_true: np.ndarray, y_score: np.ndarray, thresholds: float | np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every metric the pipeline logs, gates on and reports, as a JSON-serialisable dict.

    mAP and the macro averages (F1, precision, recall) average over the classes that have
    positives. On those columns they equal sklearn's `average="macro"` with `zero_division=0`.
    The micro averages, `hamming_loss` and `subset_accuracy` use every class and equal sklearn's.
    `precision_at_3` uses k = min(3, C). Undefined values are None, never NaN.
    """
    y_true, y_score = check_inputs(y_true, y_score)
    n_samples, n_classes = y_true.shape
    if len(classes) != n_classes or len(set(classes)) != n_classes:
        raise ValueError(f"classes must be {n_classes} distinct names, one per column; got {classes}")
    y_pred = apply_thresholds(y_score, thresholds)
    per_class_threshold = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (n_classes,))

    tp, fp, fn = (y_pred & y_true).sum(0), (y_pred & ~y_true).sum(0), (~y_pred & y_true).sum(0)
    tn = n_samples - tp - fp - fn
    support = tp + fn
    has_positives = support > 0
    precision = ratio(tp, tp + fp)
    recall = np.where(has_positives, ratio(tp, support), np.nan)
    f1 = np.where(has_positives, ratio(2 * tp, 2 * tp + fp + fn), np.nan)
    ap = average_precision_per_class(y_true, y_score)
    all_tp, all_fp, all_fn = int(tp.sum()), int(fp.sum()), int(fn.sum())

    per_class = {
        name: {
            "ap": _json_float(ap[c]),
            "f1": _json_float(f1[c]),
            "precision": float(precision[c]),
            "recall": _json_float(recall[c]),
            "support": int(support[c]),
            "threshold": float(per_class_threshold[c]),
            "tp": int(tp[c]),
            "fp": int(fp[c]),
            "fn": int(fn[c]),
            "tn": int(tn[c]),
        }
        for c, name in enumerate(classes)
    }
    return {
        "mAP": _mean_or_none(ap),
        "macro_f1": _mean_or_none(f1),
        "micro_f1": float(ratio(2 * all_tp, 2 * all_tp + all_fp + all_fn)),
        "macro_precision": _mean_or_none(np.where(has_positives, precision, np.nan)),
        "macro_recall": _mean_or_none(recall),
        "micro_precision": float(ratio(all_tp, all_tp + all_fp)),
        "micro_recall": float(ratio(all_tp, all_tp + all_fn)),
        "hamming_loss": float((y_pred != y_true).mean()),
        "subset_accuracy": float((y_pred == y_true).all(axis=1).mean()),
        "roc_auc_macro": _mean_or_none(roc_auc_per_class(y_true, y_score)),
        "precision_at_1": precision_at_k(y_true, y_score, 1),
        "precision_at_3": precision_at_k(y_true, y_score, min(3, n_classes)),
        "per_class": per_class,
        "classes_without_positives": [name for c, name in enumerate(classes) if not has_positives[c]],
    }


def evaluate_at_thresholds(
    y_true: np.ndarray, y_score: np.ndarray, tuned_thresholds: np.ndarray, classes: list[str]
) -> dict[str, dict[str, Any]]:
    """Metrics at the naive 0.5 cut-off and at the tuned thresholds, to show what tuning bought."""
    return {
        "at_0.5": compute_metrics(y_true, y_score, 0.5, classes),
        "tuned": compute_metrics(y_true, y_score, tuned_thresholds, classes),
    }


def flat_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The scalar entries of one `compute_metrics` dict, as `{prefix}_{name}` for `mlflow.log_metrics`.

    Nested entries (per_class, class lists) and undefined values (None) are skipped, because
    MLflow metrics are finite numbers. Characters MLflow rejects become `_`. For
    `evaluate_at_thresholds`, call this once per key, e.g. prefix "test_tuned".
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        flat[_MLFLOW_UNSAFE.sub("_", f"{prefix}_{key}" if prefix else key)] = float(value)
    return flat
