"""Prediction drift: do the served version's recent answers name each class about as often as
the same version did on the frozen test split?

The reference travels with the model (its metadata, written when the evaluate stage logs it):
per class, the share of test images predicted positive at the model's own thresholds, and how
many test images that share was counted on. The live side is the last N answers of that same
version in the prediction log. Per class, Fisher's exact test compares the two shares (both are
samples, and rare classes have counts far too small for a normal approximation); Holm's step-down
correction keeps the chance of any false alarm across all classes at `alpha`.

Pure functions on plain values: no registry, log or server here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

METADATA_KEY = "drift_reference"  # where a logged model's metadata keeps its reference
Status = Literal["no_log", "no_reference", "not_enough_data", "no_drift", "drift"]  # no_log: nothing recorded to compare
TEST = "fisher_exact"
CORRECTION = "holm"


@dataclass(frozen=True)
class Reference:
    """The predicted-positive share per class on `rows` images of `split`, at the model's thresholds."""

    positive_rates: dict[str, float]
    rows: int
    split: str = "test"

    def as_metadata(self) -> dict:
        return {"split": self.split, "rows": self.rows, "positive_rates": self.positive_rates}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Reference | None:
        """The reference in a logged model's metadata; None for a model logged before references existed."""
        entry = metadata.get(METADATA_KEY)
        if not entry:
            return None
        rates = {str(name): float(rate) for name, rate in entry["positive_rates"].items()}
        return cls(rates, int(entry["rows"]), str(entry.get("split", "test")))


def reference_from_scores(scores: np.ndarray, thresholds: Sequence[float], classes: Sequence[str], split: str = "test") -> Reference:
    """The reference of a model whose probabilities on `split` are `scores` (N, C): a class is
    predicted when its score is at or above its threshold, exactly as the served model labels."""
    positive = np.asarray(scores) >= np.asarray(thresholds, dtype="float64")[None, :]
    rates = positive.mean(axis=0) if len(positive) else np.zeros(len(classes))
    return Reference({name: float(rate) for name, rate in zip(classes, rates)}, len(positive), split)


@dataclass(frozen=True)
class ClassDrift:
    name: str
    live_rate: float
    reference_rate: float
    live_positives: int
    reference_positives: int
    p_value: float
    adjusted_p_value: float  # Holm-corrected across the classes compared
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    status: Status
    message: str
    predictions: int  # live answers compared (the window, or fewer when fewer were logged)
    reference_rows: int | None
    classes: list[ClassDrift]

    @property
    def drifted_classes(self) -> list[str]:
        return [c.name for c in self.classes if c.drifted]


NO_REFERENCE = (
    "this model version carries no drift reference (it was logged before references existed): run the pipeline "
    "(`multitag pipeline`, or `multitag evaluate` then `multitag gate && multitag register`) to register a version that does"
)


def compare(
    reference: Reference | None, live_labels: Sequence[Sequence[str]], classes: Sequence[str], min_predictions: int, alpha: float
) -> DriftReport:
    """Compare the live answers (each the list of labels one image got) with the reference, class by class.

    No verdict without a reference, nor on fewer than `min_predictions` answers: a handful of
    answers would make every rare class look drifted or none, and the report says which it is.
    """
    n = len(live_labels)
    if reference is None:
        return DriftReport("no_reference", NO_REFERENCE, n, None, [])
    shared = [name for name in classes if name in reference.positive_rates]
    live_positives = {name: sum(name in labels for labels in live_labels) for name in shared}
    rows = [(name, live_positives[name], round(reference.positive_rates[name] * reference.rows)) for name in shared]
    if n < min_predictions:
        message = (
            f"not enough data to judge drift: {n} answer(s) of this version logged, {min_predictions} needed (serve.drift_min_predictions)"
        )
        return DriftReport(
            "not_enough_data", message, n, reference.rows, [_class(name, x, n, r, reference.rows, 1.0, 1.0, False) for name, x, r in rows]
        )
    p_values = [fisher_p_value(x, n, r, reference.rows) for _, x, r in rows]
    adjusted = holm(p_values)
    per_class = [_class(name, x, n, r, reference.rows, p, q, q <= alpha) for (name, x, r), p, q in zip(rows, p_values, adjusted)]
    drifted = [c for c in per_class if c.drifted]
    if not drifted:
        return DriftReport(
            "no_drift",
            f"no class drifted: {n} answers against {reference.rows} test images (Holm-adjusted p > {alpha})",
            n,
            reference.rows,
            per_class,
        )
    shifts = ", ".join(f"{c.name} {c.reference_rate:.1%} -> {c.live_rate:.1%}" for c in drifted)
    return DriftReport("drift", f"{len(drifted)} class(es) drifted (test -> last {n} answers): {shifts}", n, reference.rows, per_class)


def _class(name: str, live: int, n: int, reference: int, rows: int, p: float, adjusted: float, drifted: bool) -> ClassDrift:
    return ClassDrift(name, live / n if n else 0.0, reference / rows if rows else 0.0, live, reference, p, adjusted, drifted)


def fisher_p_value(positives_a: int, n_a: int, positives_b: int, n_b: int) -> float:
    """Two-sided p-value of Fisher's exact test that two samples share one positive rate."""
    from scipy.stats import fisher_exact  # scipy.stats takes a moment to import; only a verdict needs it

    table = [[positives_a, n_a - positives_a], [positives_b, n_b - positives_b]]
    return float(fisher_exact(table, alternative="two-sided").pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given): reject where adjusted <= alpha
    and the chance of any false rejection among them stays at most alpha."""
    order = np.argsort(p_values, kind="stable")
    m, running, adjusted = len(p_values), 0.0, [1.0] * len(p_values)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
