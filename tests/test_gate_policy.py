"""The gate's decisions that need no model: baselines for a first model, the user's optional
floors, and how a class-list change is named in the verdict."""

from __future__ import annotations

import numpy as np

from multitag.config import GateParams
from multitag.lifecycle.gate import baseline_checks, class_list_change, floor_checks
from multitag.modeling.baselines import Baseline, class_prior_scores, mean_ap


def test_the_class_prior_ranks_no_better_than_the_test_prevalence():
    rng = np.random.default_rng(0)
    y_fit = (rng.random((300, 4)) < [0.5, 0.2, 0.05, 0.3]).astype(np.uint8)
    y_test = (rng.random((100, 4)) < [0.5, 0.2, 0.05, 0.3]).astype(np.uint8)
    scores = class_prior_scores(y_fit, len(y_test))
    assert scores.shape == y_test.shape and np.allclose(scores[0], y_fit.mean(axis=0))
    assert mean_ap(y_test, scores) == np.mean(y_test.mean(axis=0))  # tied scores: AP is the prevalence


def test_a_first_model_must_beat_every_scored_baseline():
    baselines = [Baseline("class_prior", 0.12, "prevalence"), Baseline("probe", 0.46, "frozen features")]
    checks, reasons, scores = baseline_checks(0.40, baselines)
    assert checks == {"beats_class_prior": True, "beats_probe": False}
    assert scores == {"baseline_class_prior_mAP": 0.12, "baseline_probe_mAP": 0.46}
    assert "does not beat the probe baseline (0.4600" in reasons[0]
    checks, reasons, _ = baseline_checks(0.50, baselines)
    assert all(checks.values()) and not reasons


def test_an_unavailable_baseline_is_reported_not_silently_passed():
    checks, reasons, scores = baseline_checks(0.5, [Baseline("probe", None, "unavailable: no ImageNet weights")])
    assert checks == {} and scores == {}
    assert reasons == ["baseline probe not checked (unavailable: no ImageNet weights)"]


def test_floors_apply_only_when_the_user_sets_them():
    assert floor_checks({"mAP": 0.1, "macro_f1": 0.1}, GateParams()) == ({}, [])
    checks, reasons = floor_checks({"mAP": 0.45, "macro_f1": 0.5}, GateParams(min_mAP=0.5, min_macro_f1=0.4))
    assert checks == {"floor_mAP": False, "floor_macro_f1": True} and reasons == ["mAP 0.4500 below floor 0.5"]


def test_a_class_list_change_names_what_was_added_and_removed():
    text = class_list_change(["cat", "dog", "person"], ["cat", "dog", "sofa", "tvmonitor"])
    assert text == "class-list migration, judged on the 2 shared classes; added sofa, tvmonitor; removed person"


def test_the_gate_selects_the_candidate_by_the_primary_metric_on_validation():
    from multitag.stages import select_candidate

    candidates = [
        {"architecture": "a", "val_mAP": 0.70, "val_macro_f1": 0.40, "test_mAP": 0.99},
        {"architecture": "b", "val_mAP": 0.60, "val_macro_f1": 0.55, "test_mAP": 0.10},
        {"architecture": "c", "val_mAP": None, "val_macro_f1": None},
    ]
    assert select_candidate(candidates, "mAP")["architecture"] == "a"
    assert select_candidate(candidates, "macro_f1")["architecture"] == "b"
