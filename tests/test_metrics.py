"""Code tests for multitag.modeling.metrics: every metric against scikit-learn, plus the edge cases."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm

from multitag.modeling.metrics import (
    apply_thresholds,
    average_precision_per_class,
    compute_metrics,
    evaluate_at_thresholds,
    flat_metrics,
    precision_at_k,
    precision_recall_steps,
    roc_auc_per_class,
    tune_thresholds,
)

SEEDS = [0, 1, 2]
SHAPES = [(7, 3), (60, 5), (300, 20)]
SCALAR_KEYS = {
    "mAP",
    "macro_f1",
    "micro_f1",
    "macro_precision",
    "macro_recall",
    "micro_precision",
    "micro_recall",
    "hamming_loss",
    "subset_accuracy",
    "roc_auc_macro",
    "precision_at_1",
    "precision_at_3",
}


def _random_case(seed: int, shape: tuple[int, int], decimals: int | None = None):
    """Labels with varied prevalence and scores that carry signal; `decimals` rounds scores to force ties."""
    rng = np.random.default_rng(seed)
    prevalence = rng.uniform(0.05, 0.6, size=shape[1])
    y_true = (rng.random(shape) < prevalence).astype(np.uint8)
    y_score = np.clip(0.35 * y_true + rng.random(shape) * 0.65, 0, 1)
    if decimals is not None:
        y_score = y_score.round(decimals)
    return y_true, y_score


def _classes(n: int) -> list[str]:
    return [f"class_{c}" for c in range(n)]


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return skm.f1_score(y_true, y_pred, zero_division=0)


CASES = [(seed, shape, decimals) for seed in SEEDS for shape in SHAPES for decimals in (None, 1)]


@pytest.mark.parametrize("seed,shape,decimals", CASES)
def test_ranking_metrics_match_sklearn(seed, shape, decimals):
    y_true, y_score = _random_case(seed, shape, decimals)
    ap, auc = average_precision_per_class(y_true, y_score), roc_auc_per_class(y_true, y_score)
    for c in range(shape[1]):
        positives = y_true[:, c].sum()
        if positives == 0:
            assert np.isnan(ap[c]) and np.isnan(auc[c])
            continue
        assert ap[c] == pytest.approx(skm.average_precision_score(y_true[:, c], y_score[:, c]), abs=1e-12)
        if positives == shape[0]:
            assert np.isnan(auc[c])
        else:
            assert auc[c] == pytest.approx(skm.roc_auc_score(y_true[:, c], y_score[:, c]), abs=1e-12)


@pytest.mark.parametrize("seed,shape,decimals", CASES)
def test_compute_metrics_match_sklearn(seed, shape, decimals):
    y_true, y_score = _random_case(seed, shape, decimals)
    thresholds = np.random.default_rng(seed + 100).uniform(0.3, 0.7, size=shape[1])
    y_pred = (y_score >= thresholds).astype(np.uint8)
    got = compute_metrics(y_true, y_score, thresholds, _classes(shape[1]))

    pos = y_true.sum(0) > 0
    both = pos & (y_true.sum(0) < shape[0])
    macro = {"average": "macro", "zero_division": 0}
    micro = {"average": "micro", "zero_division": 0}
    expected = {
        "mAP": np.mean([skm.average_precision_score(y_true[:, c], y_score[:, c]) for c in np.flatnonzero(pos)]),
        "macro_f1": skm.f1_score(y_true[:, pos], y_pred[:, pos], **macro),
        "macro_precision": skm.precision_score(y_true[:, pos], y_pred[:, pos], **macro),
        "macro_recall": skm.recall_score(y_true[:, pos], y_pred[:, pos], **macro),
        "micro_f1": skm.f1_score(y_true, y_pred, **micro),
        "micro_precision": skm.precision_score(y_true, y_pred, **micro),
        "micro_recall": skm.recall_score(y_true, y_pred, **micro),
        "hamming_loss": skm.hamming_loss(y_true, y_pred),
        "subset_accuracy": skm.accuracy_score(y_true, y_pred),
    }
    if both.any():
        expected["roc_auc_macro"] = skm.roc_auc_score(y_true[:, both], y_score[:, both], average="macro")
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key

    confusion = skm.multilabel_confusion_matrix(y_true, y_pred)  # (C, 2, 2): [[tn, fp], [fn, tp]]
    for c, name in enumerate(_classes(shape[1])):
        row = got["per_class"][name]
        (tn, fp), (fn, tp) = confusion[c]
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
        assert row["support"] == y_true[:, c].sum()
        assert row["threshold"] == thresholds[c]
        assert row["precision"] == pytest.approx(skm.precision_score(y_true[:, c], y_pred[:, c], zero_division=0))
        if pos[c]:
            assert row["f1"] == pytest.approx(_f1(y_true[:, c], y_pred[:, c]))
            assert row["recall"] == pytest.approx(skm.recall_score(y_true[:, c], y_pred[:, c]))


def _precision_at_k_by_loop(y_true: np.ndarray, y_score: np.ndarray, k: int) -> float:
    per_sample = []
    for truth, scores in zip(y_true, y_score):
        top = sorted(range(len(scores)), key=lambda c: -scores[c])[:k]
        per_sample.append(sum(truth[c] for c in top) / k)
    return float(np.mean(per_sample))


@pytest.mark.parametrize("seed,shape", [(s, sh) for s in SEEDS for sh in SHAPES])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_precision_at_k_matches_a_plain_loop(seed, shape, k):
    y_true, y_score = _random_case(seed, shape)
    assert precision_at_k(y_true, y_score, k) == pytest.approx(_precision_at_k_by_loop(y_true, y_score, k))


def test_precision_at_k_rejects_k_outside_the_class_count():
    y_true, y_score = _random_case(0, (10, 3))
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be between 1"):
            precision_at_k(y_true, y_score, k)


def _brute_force_best_f1(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Best F1 over every threshold that can change the predictions, as the harmonic mean of P and R."""
    candidates = np.r_[np.unique(y_score), np.inf]
    predicted = y_score[None, :] >= candidates[:, None]  # (thresholds, N)
    tp = (predicted & (y_true == 1)).sum(1)
    precision = np.where(predicted.sum(1) > 0, tp / np.maximum(predicted.sum(1), 1), 0.0)
    recall = tp / y_true.sum()
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("seed,shape,decimals", CASES)
def test_tuned_thresholds_reach_the_best_f1_and_beat_0_5(seed, shape, decimals):
    y_true, y_score = _random_case(seed, shape, decimals)
    thresholds = tune_thresholds(y_true, y_score)
    assert thresholds.shape == (shape[1],)
    for c in range(shape[1]):
        if not y_true[:, c].any():
            assert thresholds[c] == 0.5
            continue
        tuned_f1 = _f1(y_true[:, c], (y_score[:, c] >= thresholds[c]).astype(int))
        strict_f1 = _f1(y_true[:, c], (y_score[:, c] > thresholds[c]).astype(int))
        assert tuned_f1 >= _f1(y_true[:, c], (y_score[:, c] >= 0.5).astype(int))
        assert tuned_f1 == pytest.approx(_brute_force_best_f1(y_true[:, c], y_score[:, c]))
        assert strict_f1 == pytest.approx(tuned_f1), "the threshold should not sit on a score"


def test_tuned_threshold_separates_a_separable_class():
    y_true = np.array([[0], [0], [1], [1]], dtype=np.uint8)
    y_score = np.array([[0.1], [0.3], [0.6], [0.9]])
    assert tune_thresholds(y_true, y_score)[0] == pytest.approx(0.45)


def test_class_without_positives_is_nan_and_left_out_of_averages():
    y_true, y_score = _random_case(3, (40, 4))
    y_true[:, 2] = 0
    y_score[:, 2] = 0.9  # every prediction of class 2 is a false positive
    classes = _classes(4)
    got = compute_metrics(y_true, y_score, 0.5, classes)
    ap = average_precision_per_class(y_true, y_score)

    assert np.isnan(ap[2]) and np.isnan(roc_auc_per_class(y_true, y_score)[2])
    assert got["classes_without_positives"] == ["class_2"]
    assert got["mAP"] == pytest.approx(np.mean(ap[[0, 1, 3]]))
    kept = [0, 1, 3]
    y_pred = (y_score >= 0.5).astype(int)
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y_true[:, kept], y_pred[:, kept], average="macro"))
    assert got["micro_precision"] == pytest.approx(skm.precision_score(y_true, y_pred, average="micro"))
    row = got["per_class"]["class_2"]
    assert row["ap"] is None and row["f1"] is None and row["recall"] is None
    assert (row["support"], row["fp"], row["tp"]) == (0, 40, 0)


def test_no_class_with_positives_gives_none_not_nan():
    y_true = np.zeros((5, 3), dtype=np.uint8)
    got = compute_metrics(y_true, np.full((5, 3), 0.2), 0.5, _classes(3))
    for key in ("mAP", "macro_f1", "macro_precision", "macro_recall", "roc_auc_macro"):
        assert got[key] is None, key
    assert got["subset_accuracy"] == 1.0 and got["hamming_loss"] == 0.0
    json.dumps(got, allow_nan=False)


def test_all_negative_predictions_score_zero_without_crashing():
    y_true, y_score = _random_case(4, (30, 5))
    got = compute_metrics(y_true, y_score, 1.01, _classes(5))
    for key in ("macro_f1", "micro_f1", "macro_precision", "micro_precision", "macro_recall", "micro_recall"):
        assert got[key] == 0.0, key
    assert got["hamming_loss"] == pytest.approx(y_true.mean())


def test_perfect_predictor_scores_one():
    y_true, _ = _random_case(5, (50, 6))
    y_score = np.where(y_true == 1, 0.9, 0.1)
    got = compute_metrics(y_true, y_score, 0.5, _classes(6))
    for key in ("mAP", "roc_auc_macro", "macro_f1", "micro_f1", "subset_accuracy"):
        assert got[key] == 1.0, key
    assert got["hamming_loss"] == 0.0


def test_ties_count_as_one_cut_off_whatever_the_row_order():
    y_true = np.array([[1], [0], [1], [0], [0]], dtype=np.uint8)
    y_score = np.full((5, 1), 0.5)
    assert average_precision_per_class(y_true, y_score)[0] == pytest.approx(0.4)  # the prevalence
    assert roc_auc_per_class(y_true, y_score)[0] == pytest.approx(0.5)
    reordered = [1, 3, 4, 0, 2]
    assert average_precision_per_class(y_true[reordered], y_score[reordered])[0] == pytest.approx(0.4)


def test_single_sample():
    y_true = np.array([[1, 0, 1]], dtype=np.uint8)
    y_score = np.array([[0.8, 0.6, 0.3]])
    got = compute_metrics(y_true, y_score, 0.5, ["a", "b", "c"])
    assert got["mAP"] == 1.0
    assert got["roc_auc_macro"] is None  # no class has both a positive and a negative
    assert got["classes_without_positives"] == ["b"]
    assert got["subset_accuracy"] == 0.0
    assert got["hamming_loss"] == pytest.approx(2 / 3)
    assert got["precision_at_1"] == 1.0 and got["precision_at_3"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(tune_thresholds(y_true, y_score), [0.8, 0.5, 0.3])


def test_precision_at_3_caps_k_at_the_class_count():
    y_true = np.array([[1, 0], [1, 1]], dtype=np.uint8)
    got = compute_metrics(y_true, np.array([[0.9, 0.1], [0.2, 0.7]]), 0.5, ["a", "b"])
    assert got["precision_at_3"] == pytest.approx(0.75)


def test_precision_recall_steps_integrate_to_ap():
    y_true, y_score = _random_case(6, (80, 1), decimals=1)
    recall, precision = precision_recall_steps(y_true[:, 0], y_score[:, 0])
    assert recall[0] == 0.0 and recall[-1] == 1.0 and np.all(np.diff(recall) > 0)
    assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(skm.average_precision_score(y_true[:, 0], y_score[:, 0]))
    with pytest.raises(ValueError, match="no positives"):
        precision_recall_steps(np.zeros(4), np.ones(4))


def test_metrics_are_plain_json_types():
    y_true, y_score = _random_case(7, (40, 4))
    y_true[:, 1] = 0
    got = compute_metrics(y_true, y_score, np.full(4, 0.5, dtype=np.float32), _classes(4))
    assert set(got) == SCALAR_KEYS | {"per_class", "classes_without_positives"}
    assert all(type(got[key]) is float for key in SCALAR_KEYS)
    for row in got["per_class"].values():
        assert all(type(row[key]) is int for key in ("support", "tp", "fp", "fn", "tn"))
        assert all(row[key] is None or type(row[key]) is float for key in ("ap", "f1", "precision", "recall"))
    assert json.loads(json.dumps(got, allow_nan=False)) == got


def test_evaluate_at_thresholds_reports_both_settings():
    y_true, y_score = _random_case(8, (60, 5))
    tuned = tune_thresholds(y_true, y_score)
    got = evaluate_at_thresholds(y_true, y_score, tuned, _classes(5))
    assert set(got) == {"at_0.5", "tuned"}
    assert got["at_0.5"]["per_class"]["class_0"]["threshold"] == 0.5
    assert got["tuned"]["per_class"]["class_0"]["threshold"] == tuned[0]
    assert got["tuned"]["macro_f1"] >= got["at_0.5"]["macro_f1"]
    assert got["tuned"]["mAP"] == got["at_0.5"]["mAP"]  # AP does not depend on thresholds


def test_flat_metrics_keeps_finite_scalars_with_mlflow_safe_names():
    y_true, y_score = _random_case(9, (30, 3))
    y_true[:, :] = 0
    metrics = compute_metrics(y_true, y_score, 0.5, _classes(3))
    flat = flat_metrics(metrics, "test")
    assert "test_mAP" not in flat  # None: no class has positives
    assert flat["test_hamming_loss"] == metrics["hamming_loss"]
    assert set(flat) == {f"test_{k}" for k in SCALAR_KEYS if metrics[k] is not None}
    assert all(type(v) is float for v in flat.values())
    assert flat_metrics({"a b:c": 1, "nested": {"x": 1.0}, "flag": True}, "val@tuned") == {"val_tuned_a b_c": 1.0}
    assert all(re.fullmatch(r"[\w\-./ ]+", name) for name in flat)


def test_invalid_inputs_fail_with_a_clear_message():
    y_true, y_score = _random_case(0, (10, 3))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        compute_metrics(y_true, y_score[:, :2], 0.5, _classes(3))
    with pytest.raises(ValueError, match="0/1"):
        average_precision_per_class(y_true * 2, y_score)
    with pytest.raises(ValueError, match="one per class"):
        compute_metrics(y_true, y_score, np.full(2, 0.5), _classes(3))
    with pytest.raises(ValueError, match="distinct names"):
        compute_metrics(y_true, y_score, 0.5, ["a", "a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc_per_class(y_true, np.full((10, 3), np.nan))


def test_apply_thresholds_predicts_at_or_above_the_threshold():
    scores = np.array([[0.2, 0.5, 0.7]])
    np.testing.assert_array_equal(apply_thresholds(scores, 0.5), [[False, True, True]])
    np.testing.assert_array_equal(apply_thresholds(scores, [0.1, 0.6, 0.7]), [[True, False, True]])


def test_a_class_with_too_few_positives_keeps_the_default_threshold_and_tuned_ones_are_bounded():
    """On real photos, 1-5 validation positives made the F1-best cut-off "everything positive"."""
    rng = np.random.default_rng(0)
    y_true = np.zeros((200, 3), dtype=np.uint8)
    y_true[:2, 0] = 1  # rare: two positives, both scored lowest, so F1-best would be ~0.0
    y_true[:100, 1] = 1  # frequent and well separated
    y_true[:60, 2] = 1  # frequent, best cut-off far below the lower bound
    y_score = np.column_stack(
        [
            np.r_[0.001, 0.002, rng.uniform(0.01, 0.9, 198)],
            np.r_[rng.uniform(0.6, 1.0, 100), rng.uniform(0.0, 0.4, 100)],
            np.r_[rng.uniform(0.02, 0.04, 60), rng.uniform(0.0, 0.01, 140)],
        ]
    )
    assert tune_thresholds(y_true, y_score)[0] < 0.01  # what the old rule served
    tuned = tune_thresholds(y_true, y_score, min_positives=8, default=0.5, bounds=(0.1, 0.9))
    assert tuned[0] == 0.5
    assert 0.4 <= tuned[1] <= 0.6
    assert tuned[2] == 0.1
    from multitag.modeling.metrics import too_few_to_tune

    assert too_few_to_tune(y_true, ["rare", "common", "low"], 8) == ["rare"]
