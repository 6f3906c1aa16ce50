"""Honest baselines a first model must beat, scored on the frozen test split.

With no champion yet, a hand-set floor says little (mAP 0.5 is easy on shapes and hard on 18
VOC classes with rare ones), so the gate asks instead: does the candidate rank better than
(a) the class prior (every image scored with the training prevalence; its AP per class is the
class's test prevalence) and (b) a logistic-regression probe on frozen ImageNet MobileNetV2
features, the cheap model any engineer would try first? `bench/transfer.py` uses the same probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multitag.data.manifest import UNKNOWN
from multitag.modeling.metrics import average_precision_per_class

PROBE_CS = (0.03, 0.1, 0.3, 1.0)
PROBE_FOLDS = 3


@dataclass(frozen=True)
class Baseline:
    """One baseline's test mAP, or why it could not be scored (e.g. no ImageNet weights offline)."""

    name: str
    mAP: float | None
    detail: str


def mean_ap(y_true: np.ndarray, scores: np.ndarray) -> float:
    """mAP; a class's AP counts only the rows that know it (partial labels in train: manifest.UNKNOWN)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    known = y_true != UNKNOWN
    if known.all():
        return float(np.nanmean(average_precision_per_class(y_true, scores)))
    per_class = [
        average_precision_per_class(y_true[rows, k : k + 1], scores[rows, k : k + 1])[0] if rows.any() else np.nan
        for k, rows in enumerate(known.T)
    ]
    return float(np.nanmean(per_class))


def class_prior_scores(y_fit: np.ndarray, rows: int) -> np.ndarray:
    """Every row scored with the fitting set's prevalence of each class, among the rows that know it."""
    prevalence = np.ma.masked_equal(np.asarray(y_fit, dtype="float64"), UNKNOWN).mean(axis=0)
    return np.tile(np.ma.filled(prevalence, 0.0), (rows, 1))


def fit_probe(features: np.ndarray, y: np.ndarray, c: float) -> list:
    """One logistic regression per class on the rows that know the class; None where those rows
    have one label only."""
    from sklearn.linear_model import LogisticRegression

    probes = []
    for k in range(y.shape[1]):
        rows = y[:, k] != UNKNOWN
        labels = y[rows, k]
        probes.append(LogisticRegression(C=c, max_iter=2000).fit(features[rows], labels) if 0 < labels.sum() < len(labels) else None)
    return probes


def probe_scores(probes: list, features: np.ndarray) -> np.ndarray:
    """(N, C) probabilities; a class without a probe scores 0."""
    return np.column_stack([p.predict_proba(features)[:, 1] if p is not None else np.zeros(len(features)) for p in probes])


def out_of_fold_scores(features: np.ndarray, y: np.ndarray, c: float, seed: int) -> np.ndarray:
    """Each row scored by a probe fitted on the other folds: honest scores on the fitting set."""
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    scores = np.zeros(y.shape, dtype="float64")
    with threadpool_limits(1):  # multi-threaded lbfgs on 2 busy cores was ~35x slower
        for fit_rows, score_rows in KFold(PROBE_FOLDS, shuffle=True, random_state=seed).split(features):
            scores[score_rows] = probe_scores(fit_probe(features[fit_rows], y[fit_rows], c), features[score_rows])
    return scores


def choose_c(features: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, dict[float, float]]:
    """The C with the best mean AP of out-of-fold scores (K-fold on the fitting set only)."""
    cv_map = {c: mean_ap(y, out_of_fold_scores(features, y, c, seed)) for c in PROBE_CS}
    return max(PROBE_CS, key=lambda c: cv_map[c]), cv_map


@dataclass(frozen=True)
class FittedProbe:
    """Per-class probes with the C cross-validation chose, and that search's mAP by C."""

    probes: list
    c: float
    cv_map: dict[float, float]


def fit_probes(features: np.ndarray, y: np.ndarray, seed: int) -> FittedProbe:
    """The probe every caller fits: C by cross-validation on these rows, then all of them."""
    from threadpoolctl import threadpool_limits

    features, y = np.asarray(features, dtype="float64"), np.asarray(y)
    with threadpool_limits(1):  # as in out_of_fold_scores
        c, cv_map = choose_c(features, y, seed)
        return FittedProbe(fit_probe(features, y, c), c, cv_map)


def probe_weights(probes: list, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The probes as one Dense layer's (kernel, bias); a class without a probe scores ~0."""
    kernel = np.zeros((feature_dim, len(probes)), dtype="float32")
    bias = np.full(len(probes), -20.0, dtype="float32")
    for k, probe in enumerate(probes):
        if probe is not None:
            kernel[:, k], bias[k] = probe.coef_[0], probe.intercept_[0]
    return kernel, bias


def frozen_extractor(input_size: int):
    """The probe's backbone: ImageNet MobileNetV2 without its top, frozen."""
    from multitag.modeling import models

    extractor = models.build_feature_extractor("mobilenetv2", input_size, "imagenet")
    extractor.trainable = False
    return extractor


def probe_test_scores(processed: Path, seed: int) -> tuple[np.ndarray, float]:
    """Probe fitted on the training images' features (C by cross-validation on them), scores on
    test; and its C. The same photos the candidate trained on: the gate asks whether training
    added anything over the cheap model, not whether more data would."""
    from multitag.data.preprocess import load_split
    from multitag.modeling.batches import flip_averaged_features

    x_train, y_train = load_split(processed, "train")
    x_test, _ = load_split(processed, "test")
    extractor = frozen_extractor(int(x_train.shape[1]))
    fitted = fit_probes(flip_averaged_features(extractor, x_train), y_train, seed)
    return probe_scores(fitted.probes, flip_averaged_features(extractor, x_test)), fitted.c


def score_baselines(names: list[str], processed: Path, seed: int) -> list[Baseline]:
    """Each named baseline's mAP on the frozen test split (the prior from train+val, the probe
    fitted on train)."""
    from multitag.data.preprocess import load_split

    y_test = np.asarray(load_split(processed, "test")[1])
    results = []
    for name in names:
        if name == "class_prior":
            y_fit = np.concatenate([load_split(processed, s)[1] for s in ("train", "val")])
            results.append(Baseline(name, mean_ap(y_test, class_prior_scores(y_fit, len(y_test))), "train+val prevalence"))
            continue
        try:
            scores, c = probe_test_scores(processed, seed)
        except Exception as err:  # no weights offline, too small an image size: say so, do not block
            results.append(Baseline(name, None, f"unavailable: {type(err).__name__}: {err}"[:300]))
            continue
        results.append(
            Baseline(
                name,
                mean_ap(y_test, scores),
                f"logistic regression on frozen ImageNet MobileNetV2 features of the training photos, flip-averaged, C={c}",
            )
        )
    return results
