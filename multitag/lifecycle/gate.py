"""The evaluation gate: a candidate reaches users only if it proves itself, now, on the frozen
test split, against the champion scored in the same run. This module measures (test scores,
read through evidence.py; the champion on the shared classes; for a candidate that passes on its
scores, its TFLite export against its own Keras scores and the fresh-process smoke test);
policy.py decides. Both models are scored through Keras, the reference graph; the export's parity
bounds how far serving may differ from it. A candidate refused on its scores is neither exported
nor smoke-tested: it never serves, and those checks were a third of a nightly retraining.

The verdict also says how much evidence it rests on: how many test photos (how many of them
users' corrections, which make the split grow; preprocess.feedback_test_share) and the 95%
paired-bootstrap interval of the primary metric's gain over the champion.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from multitag.config import GateParams
from multitag.layout import Layout
from multitag.lifecycle import policy
from multitag.lifecycle.evidence import TestPhotos, corrections_in_test, matches_graph, test_scores, test_split
from multitag.lifecycle.export import Base, Parity, export_for_serving, served_export
from multitag.lifecycle.predictor import Predictor
from multitag.lifecycle.smoke import run_in_fresh_process
from multitag.modeling import bootstrap, metrics
from multitag.modeling.baselines import Baseline

SMOKE_IMAGES = 3
SMOKE_NOT_RUN = "not run: refused on its scores, so never served (no export either)"

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Verdict:
    passed: bool
    candidate_uri: str
    champion_version: str | None
    primary_metric: str
    candidate: dict
    champion: dict | None
    checks: dict[str, bool]
    reasons: list[str]
    class_regressions: dict[str, float] = field(default_factory=dict)
    unjudged_drops: dict[str, float] = field(default_factory=dict)  # AP drops on classes with too few test positives to judge
    smoke: dict = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    task: str = "first model"
    export: Parity | None = None  # the TFLite export's parity check; it never decides the verdict
    test_images: int = 0  # frozen test photos judged on
    test_from_corrections: int = 0  # of which users' corrections
    gain_interval: bootstrap.GainInterval | None = None  # the primary metric's gain over the champion
    rule: str = ""  # the promotion rule, in words

    def evidence(self) -> str:
        """One line: what the verdict rests on (the gain, its interval, the photos) and the rule."""
        photos = f"{self.test_images} test photos ({self.test_from_corrections} from users' corrections)"
        interval = self.gain_interval
        if interval is None:
            return f"judged on {photos}; rule: {self.rule}"
        return (
            f"{interval.metric} gain {interval.gain:+.4f}, {interval.confidence:.0%} interval [{interval.low:+.4f}, {interval.high:+.4f}] "
            f"(paired bootstrap, {interval.resamples} resamples) on {photos}; rule: {self.rule}"
        )

    def tags(self) -> dict[str, str]:
        """Flat version tags: the verdict and every number behind it."""
        out = {"gate_verdict": "passed" if self.passed else "failed", "gate_reasons": "; ".join(self.reasons) or "all checks passed"}
        out.update({f"gate_check_{k}": str(v) for k, v in self.checks.items()})
        out.update({f"gate_candidate_{k}": f"{v:.4f}" for k, v in self.candidate.items()})
        out.update({f"gate_champion_{k}": f"{v:.4f}" for k, v in (self.champion or {}).items()})
        out.update({f"gate_{k}": f"{v:.4f}" for k, v in self.baselines.items()})
        out["gate_task"] = self.task
        out["gate_test_images"] = str(self.test_images)
        out["gate_test_from_corrections"] = str(self.test_from_corrections)
        if self.gain_interval is not None:
            out.update({f"gate_gain_{k}": f"{getattr(self.gain_interval, k):+.4f}" for k in ("low", "high")})
        if self.smoke.get("latency_ms_max") is not None:
            out["gate_smoke_latency_ms"] = f"{self.smoke['latency_ms_max']:.1f}"
        out.update(self.export.tags() if self.export else {})
        return out


def checked_export(
    candidate: Predictor, candidate_uri: str, photos: TestPhotos, scores: np.ndarray, champion: Predictor | None = None
) -> tuple[np.ndarray, Parity | None]:
    """The candidate's TFLite export, checked against its test scores on every test photo, and the
    scores the verdict should rest on.

    Should parity fail against the given scores, the model is scored now and exported again: a stale
    table can never decide a verdict (the new scores are returned, and the caller decides again). A
    quick refit of the champion is exported from the champion's own export (export.refitted_probe_export).
    """
    from multitag.modeling.evaluate import predict

    base = champion_export(champion)
    parity = export_for_serving(candidate.model, candidate_uri, photos.images, photos.y_true, scores, candidate.classes, base)
    if parity is None or parity.passed or parity.error or candidate.folder is None:
        return scores, parity
    fresh = predict(candidate.model, photos.images)
    if np.array_equal(fresh, scores):
        return scores, parity
    log.warning("%s: stored test scores differ from the model's own; scored now and exported again", candidate_uri)
    return fresh, export_for_serving(candidate.model, candidate_uri, photos.images, photos.y_true, fresh, candidate.classes, base)


def refused_unchecked(tags: dict[str, str]) -> bool:
    """Whether a registered version's gate tags say it was refused on its scores, before the serving checks ran."""
    return tags.get("gate_verdict") == "failed" and "gate_check_smoke_test" not in tags


def prepare_to_serve(model_uri: str, champion_uri: str | None, params: GateParams, layout: Layout = Layout()) -> list[str]:
    """The serving checks for a version the gate refused on its scores, which were never run on it,
    before a person promotes it anyway (`multitag registry promote`): its TFLite export checked on
    the test split and logged when parity holds (derived from the champion's for a quick refit of
    it), then the smoke test through it. Returns why it must not serve; [] when it may."""
    candidate = Predictor.from_uri(model_uri, runtime="keras")
    champion = Predictor.from_uri(champion_uri, runtime="keras") if champion_uri else None
    photos = test_split(candidate, layout)
    checked_export(candidate, model_uri, photos, test_scores(candidate, photos), champion)
    return policy.smoke_check(smoke_test(model_uri, layout), params)[1]


def champion_export(champion: Predictor | None) -> Base | None:
    """The champion's model with its checked export, if it has one: what a quick refit of it is exported from."""
    exported = served_export(champion.folder) if champion is not None and champion.folder is not None else None
    return Base(champion.model, exported) if exported is not None else None


def summary_metrics(y_true: np.ndarray, scores: np.ndarray, predictor: Predictor) -> tuple[dict, np.ndarray]:
    """Headline metrics with the model's own thresholds, plus per-class AP."""
    result = metrics.compute_metrics(y_true, scores, predictor.thresholds, predictor.classes)
    headline = {k: float(result[k]) for k in ("mAP", "macro_f1", "micro_f1") if result[k] is not None}
    return headline, metrics.average_precision_per_class(y_true, scores)


def judge(
    candidate_uri: str,
    champion_uri: str | None,
    champion_version: str | None,
    params: GateParams,
    primary: str,
    layout: Layout = Layout(),
    baselines: Sequence[Baseline] = (),
) -> Verdict:
    """Score candidate and champion on the same data now, then let the policy decide.

    A champion with another class list is compared on the classes both know (a class-list
    migration, named in the verdict); with no class in common there is nothing to compare,
    which the verdict says instead of blocking in silence.

    Only a candidate that passes on its scores gets the serving checks (policy.needs_serving_checks):
    its TFLite export, checked against its Keras scores on every test photo and logged inside its
    model folder only when parity holds (export.py), then the smoke test, after the export so the
    fresh process answers through the runtime the API will serve.
    """
    candidate = Predictor.from_uri(candidate_uri, runtime="keras")
    champion = Predictor.from_uri(champion_uri, runtime="keras") if champion_uri else None
    photos = test_split(candidate, layout)
    scores = test_scores(candidate, photos)
    if not matches_graph(candidate, photos, scores):
        from multitag.modeling.evaluate import predict

        log.warning("%s: stored test scores are not the model's own; scoring it now", candidate_uri)
        scores = predict(candidate.model, photos.images)
    measured, comparison = measure(candidate, photos, scores, champion, champion_version, layout, primary, baselines)
    decision = policy.decide(measured, comparison, params, primary)
    parity = None
    if policy.needs_serving_checks(decision):
        checked, parity = checked_export(candidate, candidate_uri, photos, scores, champion)
        if checked is not scores:  # the stored table was stale after all: measure the model's own scores
            measured, comparison = measure(candidate, photos, checked, champion, champion_version, layout, primary, baselines)
        measured = replace(measured, smoke=smoke_test(candidate_uri, layout))
        decision = policy.decide(measured, comparison, params, primary)
    return Verdict(
        passed=decision.passed,
        candidate_uri=candidate_uri,
        champion_version=champion_version,
        primary_metric=primary,
        candidate=measured.metrics,
        champion=comparison.champion if comparison and comparison.comparable else None,
        checks=decision.checks,
        reasons=decision.reasons,
        class_regressions=decision.class_regressions,
        unjudged_drops=decision.unjudged_drops,
        smoke=measured.smoke if measured.smoke is not None else {"ok": None, "error": SMOKE_NOT_RUN},
        baselines=decision.baseline_scores,
        task=comparison.task if comparison else "first model",
        export=parity,
        test_images=len(photos.y_true),
        test_from_corrections=corrections_in_test(layout),
        gain_interval=comparison.gain_interval if comparison else None,
        rule=policy.decision_rule(params, primary, comparison),
    )


def measure(
    candidate: Predictor,
    photos: TestPhotos,
    scores: np.ndarray,
    champion: Predictor | None,
    champion_version: str | None,
    layout: Layout,
    primary: str,
    baselines: Sequence[Baseline],
) -> tuple[policy.CandidateScores, policy.ChampionScores | None]:
    """The candidate's own metrics (the serving checks not run yet) and its comparison with the champion."""
    own, _ = summary_metrics(photos.y_true, scores, candidate)
    comparison = compare_with_champion(candidate, photos, scores, champion, champion_version, layout, primary) if champion else None
    return policy.CandidateScores(own, list(baselines), smoke=None), comparison


def compare_with_champion(
    candidate: Predictor,
    photos: TestPhotos,
    scores: np.ndarray,
    champion: Predictor,
    champion_version: str | None,
    layout: Layout,
    primary: metrics.Headline = "mAP",
) -> policy.ChampionScores:
    """Candidate and champion (loaded through Keras) on the classes both know, each at its own
    thresholds, with the paired-bootstrap interval of the primary metric's gain (both scored on
    the same resamples)."""
    same = champion.classes == candidate.classes
    task = "same classes as the champion" if same else policy.class_list_change(champion.classes, candidate.classes)
    shared = [c for c in candidate.classes if c in champion.classes]
    if not shared:
        return policy.ChampionScores(str(champion_version), task)
    champ_scores = test_scores(champion, test_split(champion, layout))
    y_true = photos.y_true
    cand_cols = [candidate.classes.index(c) for c in shared]
    champ_cols = [champion.classes.index(c) for c in shared]
    y_shared = y_true[:, cand_cols]
    ours, our_ap = summary_metrics(y_shared, scores[:, cand_cols], _on_classes(candidate, shared, cand_cols))
    theirs, their_ap = summary_metrics(y_shared, champ_scores[:, champ_cols], _on_classes(champion, shared, champ_cols))
    interval = bootstrap.paired_bootstrap_gain(
        y_shared,
        scores[:, cand_cols],
        candidate.thresholds[cand_cols],
        champ_scores[:, champ_cols],
        champion.thresholds[champ_cols],
        primary,
    )
    dropped = tuple(c for c in champion.classes if c not in candidate.classes)
    return policy.ChampionScores(
        str(champion_version),
        task,
        ours,
        theirs,
        dict(zip(shared, map(float, our_ap))),
        dict(zip(shared, map(float, their_ap))),
        interval,
        dropped,
        dict(zip(shared, map(int, (y_shared == 1).sum(axis=0)))),
    )


def _on_classes(predictor: Predictor, classes: list[str], columns: list[int]) -> Predictor:
    return Predictor(predictor.model, classes, predictor.thresholds[columns], predictor.input_size)


def smoke_test(model_uri: str, layout: Layout) -> dict:
    """Load the model in a fresh process and answer a few real test images."""
    from multitag.data.manifest import read

    test = read(layout.processed / "manifest.parquet").query("split == 'test'")
    return run_in_fresh_process(model_uri, list(test["path"].head(SMOKE_IMAGES)))


def as_dict(verdict: Verdict) -> dict:
    return asdict(verdict)
