"""How much evidence the gate's verdict rests on (issue 21): the paired-bootstrap interval of the
primary metric's gain over the champion, the number of test photos (and of corrections among
them), and `gate.require_confident_gain`, which promotes only when the interval's lower bound
clears `gate.min_improvement`. Pure functions on constructed scores; the gate itself runs on a
tiny processed test split with stand-in models (no Keras model, no registry)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from multitag.config import GateParams
from multitag.lifecycle.policy import CandidateScores, ChampionScores, decide
from multitag.modeling.bootstrap import GainInterval, paired_bootstrap_gain, weighted_metric
from multitag.modeling.metrics import compute_metrics

CLASSES = ["cat", "dog", "person"]
THRESHOLDS = np.array([0.4, 0.5, 0.6])
SMOKE_OK = {"ok": True, "latency_ms_max": 40.0}


def labels(n: int, seed: int = 0) -> np.ndarray:
    y = (np.random.default_rng(seed).random((n, len(CLASSES))) < [0.3, 0.2, 0.5]).astype(np.uint8)
    y[0] = 1  # every class has a positive
    return y


def noisy_scores(y: np.ndarray, signal: float, seed: int) -> np.ndarray:
    """Scores that rank positives higher the larger `signal` is; rounded, so that ties occur."""
    noise = np.random.default_rng(seed).random(y.shape)
    return np.round(np.clip(signal * y + (1 - signal) * noise, 0, 1), 2)


@pytest.mark.parametrize("metric", ["mAP", "macro_f1", "micro_f1"])
def test_a_weighting_scores_what_compute_metrics_scores_on_those_rows(metric):
    y, scores = labels(80), noisy_scores(labels(80), 0.3, 1)
    ones = np.ones((1, len(y)))
    assert weighted_metric(y, scores, THRESHOLDS, ones, metric)[0] == pytest.approx(compute_metrics(y, scores, THRESHOLDS, CLASSES)[metric])
    drawn = np.random.default_rng(5).integers(0, len(y), len(y))  # one bootstrap resample, rows repeated
    counts = np.bincount(drawn, minlength=len(y))[None]
    resampled = compute_metrics(y[drawn], scores[drawn], THRESHOLDS, CLASSES)[metric]
    assert weighted_metric(y, scores, THRESHOLDS, counts, metric)[0] == pytest.approx(resampled)


def test_identical_models_gain_nothing_and_a_clearly_better_one_clears_zero():
    y = labels(150)
    champion, better = noisy_scores(y, 0.15, 1), noisy_scores(y, 0.6, 2)
    same = paired_bootstrap_gain(y, champion, THRESHOLDS, champion, THRESHOLDS, "mAP")
    assert same.gain == 0 and same.contains(0.0) and same.n_images == 150 and same.resamples == 1000
    clear = paired_bootstrap_gain(y, better, THRESHOLDS, champion, THRESHOLDS, "mAP")
    expected = compute_metrics(y, better, THRESHOLDS, CLASSES)["mAP"] - compute_metrics(y, champion, THRESHOLDS, CLASSES)["mAP"]
    assert clear.gain == pytest.approx(expected) and clear.low > 0 and clear.low < clear.gain < clear.high
    assert clear == paired_bootstrap_gain(y, better, THRESHOLDS, champion, THRESHOLDS, "mAP"), "seeded: the same interval every run"
    for metric in ("macro_f1", "micro_f1"):
        assert paired_bootstrap_gain(y, better, THRESHOLDS, champion, THRESHOLDS, metric).low > 0


def test_the_interval_narrows_as_the_test_split_grows():
    """What feeding corrections into the test split buys: the same two models, judged on more photos."""
    widths = []
    for n in (60, 960):
        y = labels(n, seed=3)
        interval = paired_bootstrap_gain(y, noisy_scores(y, 0.32, 4), THRESHOLDS, noisy_scores(y, 0.3, 5), THRESHOLDS, "mAP")
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2.5, widths


def interval(gain: float, low: float, high: float, n: int = 230) -> GainInterval:
    return GainInterval("mAP", gain, low, high, 0.95, 1000, n)


def champion_scores(gain: float, bounds: tuple[float, float] | None) -> ChampionScores:
    ap = {"cat": 0.7, "dog": 0.7}
    ci = interval(gain, *bounds) if bounds else None
    return ChampionScores("3", "same classes as the champion", {"mAP": 0.70 + gain}, {"mAP": 0.70}, ap, ap, ci)


def test_with_require_confident_gain_a_gain_within_the_noise_is_refused():
    lucky = champion_scores(0.012, (-0.018, 0.041))  # passes min_improvement, but the interval reaches below it
    candidate = CandidateScores({"mAP": 0.712}, [], SMOKE_OK)
    assert decide(candidate, lucky, GateParams(), "mAP").passed, "by default the interval is reported, not required"
    refused = decide(candidate, lucky, GateParams(require_confident_gain=True), "mAP")
    assert not refused.passed and refused.checks["beats_champion"] and not refused.checks["confident_gain"]
    assert refused.reasons == [
        "mAP gain +0.0120 is not confident: its 95% interval [-0.0180, +0.0410] on 230 test photos reaches below the required "
        "+0.0000 (gate.require_confident_gain); more test photos narrow it"
    ]
    sure = decide(candidate, champion_scores(0.012, (0.006, 0.019)), GateParams(require_confident_gain=True), "mAP")
    assert sure.passed and sure.checks["confident_gain"]
    missing = decide(candidate, champion_scores(0.012, None), GateParams(require_confident_gain=True), "mAP")
    assert not missing.passed and "no confidence interval" in missing.reasons[0]


def test_min_improvement_must_be_a_possible_gain():
    from pydantic import ValidationError

    assert GateParams(min_improvement=-1.0).min_improvement == -1.0  # never refuses on the gain (the tiny test projects)
    for impossible in (-1.5, 2.0):
        with pytest.raises(ValidationError):
            GateParams(min_improvement=impossible)


# -- the gate's report ------------------------------------------------------------------------------


class LookupModel:
    """Stands in for a Keras model: each test image carries its row number in its first pixel."""

    def __init__(self, scores: np.ndarray):
        self.scores = scores

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self.scores[batch[:, 0, 0, 0].astype(int)]


def processed_test_split(root, y: np.ndarray, corrections: int) -> None:
    """data/processed with a test split of len(y) photos, the first `corrections` of them users'
    corrections, and ten training photos (which must not count)."""
    import pandas as pd

    from multitag.data import manifest

    processed = root / "data" / "processed"
    processed.mkdir(parents=True)
    images = np.zeros((len(y), 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(y))
    np.save(processed / "test_x.npy", images)
    np.save(processed / "test_y.npy", y)
    rows = [
        {"image_id": f"img{i}", "path": f"img{i}.png", "sha256": f"{i:064x}", "width": 4, "height": 4, "labels": ["cat"], "unknown": []}
        | {"split": "test" if i < len(y) else "train", "source": "feedback" if i < corrections or i >= len(y) else "csv"}
        for i in range(len(y) + 10)
    ]
    manifest.write(pd.DataFrame(rows), processed / "manifest.parquet")


def judged(tmp_path, monkeypatch, candidate: np.ndarray, champion: np.ndarray | None, y: np.ndarray, params: GateParams):
    from multitag.layout import Layout
    from multitag.lifecycle import gate
    from multitag.lifecycle.predictor import Predictor

    predictors = {"cand": Predictor(LookupModel(candidate), CLASSES, THRESHOLDS, 4)}
    if champion is not None:
        predictors["champ"] = Predictor(LookupModel(champion), CLASSES, THRESHOLDS, 4)
    monkeypatch.setattr(Predictor, "from_uri", lambda uri, runtime="auto": predictors[uri])
    monkeypatch.setattr(gate, "export_for_serving", lambda *args: None)
    monkeypatch.setattr(gate, "smoke_test", lambda uri, layout: SMOKE_OK)
    return gate.judge(
        "cand", "champ" if champion is not None else None, "3" if champion is not None else None, params, "mAP", Layout(tmp_path)
    )


def test_the_gate_report_shows_the_gain_its_interval_the_photos_and_the_rule(tmp_path, monkeypatch):
    from multitag.lifecycle.candidates import Candidate, Candidates
    from multitag.lifecycle.gate_record import GateRecord
    from multitag.lifecycle.gate_report import verdict_markdown
    from multitag.lifecycle.registration import Registration
    from multitag.stages import gate_record, outcome_message

    y = labels(120)
    processed_test_split(tmp_path, y, corrections=18)
    verdict = judged(tmp_path, monkeypatch, noisy_scores(y, 0.6, 2), noisy_scores(y, 0.15, 1), y, GateParams(require_confident_gain=True))
    ci = verdict.gain_interval
    assert verdict.passed and ci.n_images == verdict.test_images == 120 and verdict.test_from_corrections == 18
    assert ci.gain == pytest.approx(verdict.candidate["mAP"] - verdict.champion["mAP"]) and ci.low > 0.005
    report = verdict_markdown(verdict)
    assert "- judged on: 120 frozen test photos, 18 of them users' corrections" in report
    assert f"- mAP gain over the champion: {ci.gain:+.4f}, 95% interval [{ci.low:+.4f}, {ci.high:+.4f}] (paired bootstrap: 1000" in report
    assert "- decision rule: promote when the lower bound of the mAP gain's 95% interval is at least +0.0000" in report
    judged_one = Candidate("small_cnn", "r", "cand", {})
    record = gate_record(Candidates("p", "h", "c", [judged_one]), judged_one, verdict)
    assert record.verdict["gain_interval"]["n_images"] == 120 and record.verdict["test_from_corrections"] == 18
    assert record.tags["gate_test_images"] == "120" and record.tags["gate_gain_low"] == f"{ci.low:+.4f}"
    assert "on 120 test photos (18 from users' corrections); rule: promote when" in record.evidence
    record.write(tmp_path / "gate.json")
    assert GateRecord.read(tmp_path / "gate.json") == record, "the record reads back as it was written"
    registration = Registration("m", {"small_cnn": "4"}, "small_cnn", "4", "passed", [], record.evidence, champion_version="4")
    assert record.evidence in outcome_message(registration)


def test_the_gate_refuses_a_gain_its_test_photos_cannot_tell_from_noise(tmp_path, monkeypatch):
    y = labels(60, seed=7)
    champion = noisy_scores(y, 0.2, 8)
    candidate = np.round(np.clip(champion + 0.02 * y * (np.arange(len(y)) % 3 == 0)[:, None], 0, 1), 2)  # a little better on a third
    processed_test_split(tmp_path, y, corrections=0)
    default = judged(tmp_path, monkeypatch, candidate, champion, y, GateParams(max_class_regression=1.0))
    ci = default.gain_interval
    assert ci.gain >= GateParams().min_improvement > ci.low, f"the constructed case needs a passing gain with a low bound below it: {ci}"
    assert default.passed and "confident_gain" not in default.checks
    strict = judged(tmp_path, monkeypatch, candidate, champion, y, GateParams(max_class_regression=1.0, require_confident_gain=True))
    assert not strict.passed and strict.checks == {"beats_champion": True, "no_class_regression": True, "confident_gain": False}
    assert strict.export is None and strict.smoke["ok"] is None, "refused on its scores: neither exported nor smoke-tested"


def test_a_first_model_s_report_shows_its_photos_and_its_own_rule(tmp_path, monkeypatch):
    from multitag.lifecycle.gate_report import verdict_markdown

    y = labels(40)
    processed_test_split(tmp_path, y, corrections=5)
    verdict = judged(tmp_path, monkeypatch, noisy_scores(y, 0.6, 2), None, y, GateParams(require_confident_gain=True))
    assert verdict.passed and verdict.gain_interval is None and (verdict.test_images, verdict.test_from_corrections) == (40, 5)
    report = verdict_markdown(verdict)
    assert "- judged on: 40 frozen test photos, 5 of them users' corrections" in report and "gain over the champion" not in report
    assert "- decision rule: a first model: promote when its mAP beats every baseline" in report
    assert verdict.evidence().startswith("judged on 40 test photos (5 from users' corrections); rule: a first model")


def test_the_report_lists_the_class_drops_too_few_test_positives_could_judge():
    from multitag.lifecycle.gate import Verdict
    from multitag.lifecycle.gate_report import verdict_markdown

    checks = {"beats_champion": True, "no_class_regression": True}
    verdict = Verdict(
        passed=True, candidate_uri="c", champion_version="1", primary_metric="mAP", candidate={}, champion={}, checks=checks, reasons=[]
    )
    assert "not judged" not in verdict_markdown(verdict)
    unjudged = replace(verdict, unjudged_drops={"diningtable": 0.139})
    assert "AP drops not judged (too few test positives; gate.min_class_positives): diningtable (-0.139)" in verdict_markdown(unjudged)
