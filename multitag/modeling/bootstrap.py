"""The paired bootstrap of one model's gain over another on the same test photos: how much of the
gain the gate measures could be the luck of which photos were drawn (gate.py reports its
interval; policy.py can require its lower bound to clear gate.min_improvement).

Both models are scored on the same resamples (paired), and a resample is a row weighting, so one
sort per class serves every resample (`weighted_metric`). The metrics follow metrics.py's
conventions (NaN for a class without positives, left out of the averages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from multitag.modeling.metrics import Headline, apply_thresholds, check_inputs, ratio

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_CELLS = 2_000_000  # resample weights held at once (resamples x rows): memory stays flat on a large test split


@dataclass(frozen=True)
class GainInterval:
    """A paired-bootstrap confidence interval of one metric's gain of model A over model B."""

    metric: str
    gain: float  # on the data as it is
    low: float
    high: float
    confidence: float
    resamples: int
    n_images: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def weighted_metric(
    y_true: np.ndarray, y_score: np.ndarray, thresholds: float | np.ndarray, weights: np.ndarray, metric: Headline
) -> np.ndarray:
    """`metric` as `compute_metrics` defines it, once per row weighting: weights (B, N) of row
    counts -> (B,). A bootstrap resample is a weighting (how often each row was drawn), so one
    sort per class serves every resample. A weighting in which no class has a positive gives NaN
    for mAP and macro F1 (nothing to average)."""
    y_true, y_score = check_inputs(y_true, y_score)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if metric == "mAP":
        per_class = np.stack([_weighted_ap(y_true[:, c], y_score[:, c], weights) for c in range(y_true.shape[1])], axis=1)
        return _row_mean_or_nan(per_class)
    predicted = apply_thresholds(y_score, thresholds)
    tp, fp, fn = weights @ (predicted & y_true), weights @ (predicted & ~y_true), weights @ (~predicted & y_true)
    if metric == "micro_f1":
        return ratio(2 * tp.sum(1), 2 * tp.sum(1) + fp.sum(1) + fn.sum(1))
    if metric == "macro_f1":
        return _row_mean_or_nan(np.where(tp + fn > 0, ratio(2 * tp, 2 * tp + fp + fn), np.nan))
    raise ValueError(f"metric must be one of mAP, macro_f1, micro_f1; got {metric!r}")


def _weighted_ap(y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of one class under each row weighting (scikit-learn's step-wise AP with sample weights);
    NaN where the weighting keeps no positive."""
    order = np.argsort(-y_score, kind="stable")
    scores, hits = y_score[order], y_true[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # tied scores share one cut-off
    drawn = weights[:, order]
    tps = np.cumsum(drawn * hits, axis=1)[:, last_of_tie]
    taken = np.cumsum(drawn, axis=1)[:, last_of_tie]
    positives = tps[:, -1]
    gained = np.diff(tps, axis=1, prepend=0.0)  # recall rises by gained / positives at each cut-off
    ap = (gained * ratio(tps, taken)).sum(axis=1)
    return np.where(positives > 0, ratio(ap, positives), np.nan)


def _row_mean_or_nan(values: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(values)
    counts = defined.sum(axis=1)
    return np.where(counts > 0, np.where(defined, values, 0.0).sum(axis=1) / np.maximum(counts, 1), np.nan)


def paired_bootstrap_gain(
    y_true: np.ndarray,
    scores_a: np.ndarray,
    thresholds_a: float | np.ndarray,
    scores_b: np.ndarray,
    thresholds_b: float | np.ndarray,
    metric: Headline,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = BOOTSTRAP_CONFIDENCE,
) -> GainInterval:
    """Percentile interval of `metric`(A) - `metric`(B), each at its own thresholds, over
    `resamples` resamples of the images with replacement, seeded. Paired: both models are scored
    on the same resample, so what the images have in common (an easy or a hard draw) cancels and
    only the difference between the models varies. Resamples without any positive (undefined
    mAP) are left out."""
    n_images = len(y_true)
    ones = np.ones((1, n_images))
    gain = float(
        weighted_metric(y_true, scores_a, thresholds_a, ones, metric)[0] - weighted_metric(y_true, scores_b, thresholds_b, ones, metric)[0]
    )
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_CELLS // max(n_images, 1))
    gains = []
    for start in range(0, resamples, block):
        count = min(block, resamples - start)
        drawn = rng.integers(0, n_images, size=(count, n_images)) + n_images * np.arange(count)[:, None]
        weights = np.bincount(drawn.ravel(), minlength=count * n_images).reshape(count, n_images)
        gains.append(
            weighted_metric(y_true, scores_a, thresholds_a, weights, metric)
            - weighted_metric(y_true, scores_b, thresholds_b, weights, metric)
        )
    defined = np.concatenate(gains)
    defined = defined[~np.isnan(defined)]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(defined, [tail, 100 - tail]) if defined.size else (math.nan, math.nan)
    return GainInterval(metric, gain, float(low), float(high), confidence, resamples, n_images)
