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

from multitag.metrics import average_precision_per_class

PROBE_CS = (0.03, 0.1, 0.3, 1.0)
PROBE_FOLDS = 3


@dataclass(frozen=True)
class Baseline:
    """One baseline's test mAP, or why it could not be scored (e.g. no ImageNet weights offline)."""

    name: str
    mAP: float | None
    detail: str


def mean_ap(y_true: np.ndarray, scores: np.ndarray) -> float:
    return float(np.nanmean(average_precision_per_class(y_true, scores)))


def class_prior_scores(y_fit: np.ndarray, rows: int) -> np.ndarray:
    """Every row scored with the fitting set's prevalence of each class."""
    return np.tile(np.asarray(y_fit, dtype="float64").mean(axis=0), (rows, 1))


def fit_probe(features: np.ndarray, y: np.ndarray, c: float) -> list:
    """One logistic regression per class; None where the fitting set has one label only."""
    from sklearn.linear_model import LogisticRegression

    return [LogisticRegression(C=c, max_iter=2000).fit(features, y[:, k]) if 0 < y[:, k].sum() < len(y) else None for k in range(y.shape[1])]


def probe_scores(probes: list, features: np.ndarray) -> np.ndarray:
    """(N, C) probabilities; a class without a probe scores 0."""
    return np.column_stack([p.predict_proba(features)[:, 1] if p is not None else np.zeros(len(features)) for p in probes])


def choose_c(features: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, dict[float, float]]:
    """The C with the best mean AP of out-of-fold scores (K-fold on the fitting set only)."""
    from sklearn.model_selection import KFold

    cv_map = {}
    for c in PROBE_CS:
        out_of_fold = np.zeros(y.shape, dtype="float64")
        for fit_rows, score_rows in KFold(PROBE_FOLDS, shuffle=True, random_state=seed).split(features):
            out_of_fold[score_rows] = probe_scores(fit_probe(features[fit_rows], y[fit_rows], c), features[score_rows])
        cv_map[c] = mean_ap(y, out_of_fold)
    return max(PROBE_CS, key=lambda c: cv_map[c]), cv_map


def probe_weights(probes: list, feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The probes as one Dense layer's (kernel, bias); a class without a probe scores ~0."""
    kernel = np.zeros((feature_dim, len(probes)), dtype="float32")
    bias = np.full(len(probes), -20.0, dtype="float32")
    for k, probe in enumerate(probes):
        if probe is not None:
            kernel[:, k], bias[k] = probe.coef_[0], probe.intercept_[0]
    return kernel, bias


def fit_probe_weights(features: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Probe on these features (C by cross-validation on them), as Dense weights, and its C."""
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype="float64")
    with threadpool_limits(1):  # multi-threaded lbfgs on 2 busy cores was ~35x slower
        c, _ = choose_c(features, y, seed)
        probes = fit_probe(features, y, c)
    return (*probe_weights(probes, features.shape[1]), c)


def flip_averaged_features(x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Frozen ImageNet MobileNetV2 pooled features of each image and its mirror, averaged."""
    from multitag import models
    from multitag.train import extract_features

    extractor = models.build_feature_extractor("mobilenetv2", int(x.shape[1]), "imagenet")
    extractor.trainable = False
    plain = extract_features(extractor, x, batch_size)
    mirrored = extract_features(extractor, np.asarray(x)[:, :, ::-1], batch_size)
    return ((plain + mirrored) / 2).astype("float64")


def probe_test_scores(processed: Path, seed: int) -> tuple[np.ndarray, float]:
    """Probe fitted on the training images' features (C by cross-validation on them), scores on
    test; and its C. The same photos the candidate trained on: the gate asks whether training
    added anything over the cheap model, not whether more data would."""
    from threadpoolctl import threadpool_limits

    from multitag.preprocess import load_split

    x_train, y_train = load_split(processed, "train")
    x_test, _ = load_split(processed, "test")
    fit_x, test_x = flip_averaged_features(x_train), flip_averaged_features(x_test)
    with threadpool_limits(1):  # multi-threaded lbfgs on 2 busy cores was ~35x slower
        c, _ = choose_c(fit_x, np.asarray(y_train), seed)
        probes = fit_probe(fit_x, np.asarray(y_train), c)
    return probe_scores(probes, test_x), c


def score_baselines(names: list[str], processed: Path, seed: int) -> list[Baseline]:
    """Each named baseline's mAP on the frozen test split (the prior from train+val, the probe
    fitted on train)."""
    from multitag.preprocess import load_split

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
        results.append(Baseline(name, mean_ap(y_test, scores), f"logistic regression on frozen ImageNet MobileNetV2 features of the training photos, flip-averaged, C={c}"))
    return results
