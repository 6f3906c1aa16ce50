"""The promotion policy: numbers in, a decision out. No model, no file, no registry here, so the
rule that decides what reaches users can be read in one place and tested without training.

The gate (gate.py) measures; this module decides. Checks: (a) the user's optional absolute
floors, (b) beats the champion by `gate.min_improvement` on the primary metric (with
`gate.require_confident_gain`, the lower bound of the gain's paired-bootstrap interval must clear
it too: the gain is then unlikely to be luck of the test draw), (c) no class's AP drops by more
than `gate.max_class_regression` (judged on classes with `gate.min_class_positives` test
positives), (d) the serving smoke test passed within the latency budget (run only for a candidate that passes (a)-(c): `needs_serving_checks`).
With no champion yet, (b) and (c) become: beats each baseline that could be scored (class prior,
frozen-feature probe), which needs no hand-set number.

It also holds the rules around the decision: which candidate the gate judges (the best on
validation, `select_candidate`), whether a verdict is about the candidates at hand before
anything is registered on it (`judged_candidate`, the stale-verdict rule), and when a person's
promotion of the challenger is refused on its shadow record (`shadow_refusals`). The alias move
itself is compare-and-set in registry.promote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from multitag.config import GateParams
from multitag.errors import StaleVerdictError
from multitag.lifecycle.candidates import Candidate, Candidates
from multitag.lifecycle.gate_record import GateRecord
from multitag.modeling.baselines import Baseline
from multitag.modeling.bootstrap import BOOTSTRAP_CONFIDENCE, GainInterval


@dataclass(frozen=True)
class CandidateScores:
    """What the gate measured of the candidate itself."""

    metrics: dict[str, float]  # headline metrics on all its classes, at its own thresholds
    baselines: list[Baseline] = field(default_factory=list)  # only consulted with no champion
    # {"ok", "latency_ms_max", "error"} of the fresh-process test; None: not run yet (`needs_serving_checks`)
    smoke: dict | None = field(default_factory=dict)


@dataclass(frozen=True)
class ChampionScores:
    """Candidate and champion on the classes both know, scored in the same run."""

    version: str
    task: str  # "same classes as the champion", or the class-list migration in words
    candidate: dict[str, float] = field(default_factory=dict)  # headline metrics on the shared classes
    champion: dict[str, float] = field(default_factory=dict)
    candidate_ap: dict[str, float] = field(default_factory=dict)  # per shared class
    champion_ap: dict[str, float] = field(default_factory=dict)
    gain_interval: GainInterval | None = None  # of the primary metric's gain, candidate over champion, on the shared classes
    dropped: tuple[str, ...] = ()  # the champion's classes the candidate does not tag at all
    test_positives: dict[str, int] = field(default_factory=dict)  # per shared class: its positives in the test split

    @property
    def comparable(self) -> bool:
        return bool(self.candidate_ap)


@dataclass(frozen=True)
class Decision:
    passed: bool
    checks: dict[str, bool]
    reasons: list[str]
    class_regressions: dict[str, float]
    baseline_scores: dict[str, float]
    unjudged_drops: dict[str, float] = field(default_factory=dict)  # drops over the limit on classes with too few test positives


def decide(candidate: CandidateScores, champion: ChampionScores | None, params: GateParams, primary: str) -> Decision:
    """Apply every check; the candidate passes only if all of them pass."""
    checks, reasons = floor_checks(candidate.metrics, params)
    baseline_scores: dict[str, float] = {}
    regressions: dict[str, float] = {}
    unjudged: dict[str, float] = {}
    if champion is None:
        passed, why, baseline_scores = baseline_checks(candidate.metrics.get("mAP", 0.0), candidate.baselines)
        checks.update(passed)
        reasons += why
    elif not champion.comparable:
        checks["comparable_to_champion"] = False
        reasons.append(
            f"{champion.task}: no class in common with champion version {champion.version}; "
            "register this task under its own model name (`multitag pipeline --model-name NAME`)"
        )
    else:
        passed, why, regressions, unjudged = champion_checks(champion, params, primary)
        checks.update(passed)
        reasons += why
        if champion.dropped:
            checks["keeps_the_champions_classes"] = params.allow_dropping_classes
            reasons += [] if params.allow_dropping_classes else [dropping_classes(champion)]
    if candidate.smoke is not None:
        checks["smoke_test"], why = smoke_check(candidate.smoke, params)
        reasons += why
    return Decision(all(checks.values()), checks, reasons, regressions, baseline_scores, unjudged)


def needs_serving_checks(decision: Decision) -> bool:
    """Whether a decision made without the serving checks (the TFLite export, the smoke test through
    it: about a minute on 2 cores) could still pass with them. A candidate refused on its scores
    never serves, so it is not exported: most retrainings on a small test split are refused, and
    the export was a third of a nightly (issue 21)."""
    return decision.passed


def floor_checks(candidate: dict[str, float], params: GateParams) -> tuple[dict[str, bool], list[str]]:
    """The user's optional absolute floors (null in params: no floor)."""
    checks, reasons = {}, []
    for metric, floor in (("mAP", params.min_mAP), ("macro_f1", params.min_macro_f1)):
        if floor is None:
            continue
        checks[f"floor_{metric}"] = candidate.get(metric, 0.0) >= floor
        if not checks[f"floor_{metric}"]:
            reasons.append(f"{metric} {candidate.get(metric, 0):.4f} below floor {floor}")
    return checks, reasons


def baseline_checks(candidate_map: float, baselines: list[Baseline]) -> tuple[dict[str, bool], list[str], dict[str, float]]:
    """A first model must rank better than each baseline that could be scored (strictly)."""
    checks, reasons, scores = {}, [], {}
    for baseline in baselines:
        if baseline.mAP is None:
            reasons.append(f"baseline {baseline.name} not checked ({baseline.detail})")
            continue
        scores[f"baseline_{baseline.name}_mAP"] = baseline.mAP
        checks[f"beats_{baseline.name}"] = candidate_map > baseline.mAP
        if not checks[f"beats_{baseline.name}"]:
            reasons.append(f"mAP {candidate_map:.4f} does not beat the {baseline.name} baseline ({baseline.mAP:.4f}; {baseline.detail})")
    return checks, reasons, scores


def champion_checks(
    champion: ChampionScores, params: GateParams, primary: str
) -> tuple[dict[str, bool], list[str], dict[str, float], dict[str, float]]:
    """Beat the champion by the required margin, and lose no class by more than allowed. A class with
    fewer than `gate.min_class_positives` test positives is not judged on its drop (returned apart,
    for the report): on 2-3 positives one photo moving a few ranks moves AP by 0.1-0.3, so such a
    "regression" refused better models at random (issue 21's journeys: diningtable, 2-3 positives)."""
    checks, reasons = {}, []
    ours, theirs = champion.candidate.get(primary, 0.0), champion.champion.get(primary, 0.0)
    gain = ours - theirs
    checks["beats_champion"] = gain >= params.min_improvement
    if not checks["beats_champion"]:
        reasons.append(f"{primary} {ours:.4f} vs champion {theirs:.4f}: gain {gain:+.4f} < required {params.min_improvement:+.4f}")
    if params.require_confident_gain:
        checks["confident_gain"], why = confident_gain_check(champion.gain_interval, params)
        reasons += why
    drops = {c: champion.champion_ap[c] - ap for c, ap in champion.candidate_ap.items() if c in champion.champion_ap}
    over = {c: float(d) for c, d in drops.items() if not math.isnan(d) and d > params.max_class_regression}
    few = {c for c, n in champion.test_positives.items() if n < params.min_class_positives}
    regressions = {c: d for c, d in over.items() if c not in few}
    unjudged = {c: d for c, d in over.items() if c in few}
    checks["no_class_regression"] = not regressions
    if regressions:
        listed = ", ".join(f"{c} ({d:.3f})" for c, d in regressions.items())
        reasons.append(f"AP dropped more than {params.max_class_regression:.2f} on: {listed}")
    return checks, reasons, regressions, unjudged


def confident_gain_check(interval: GainInterval | None, params: GateParams) -> tuple[bool, list[str]]:
    """The gain's interval lies clear of `min_improvement`: its lower bound reaches it."""
    if interval is None or math.isnan(interval.low):
        return False, ["no confidence interval of the gain could be computed (gate.require_confident_gain needs one)"]
    if interval.low >= params.min_improvement:
        return True, []
    return False, [
        f"{interval.metric} gain {interval.gain:+.4f} is not confident: its {interval.confidence:.0%} interval "
        f"[{interval.low:+.4f}, {interval.high:+.4f}] on {interval.n_images} test photos reaches below the required "
        f"{params.min_improvement:+.4f} (gate.require_confident_gain); more test photos narrow it"
    ]


def decision_rule(params: GateParams, primary: str, champion: ChampionScores | None) -> str:
    """The promotion rule this verdict applied, in words for the report (floors aside)."""
    if champion is None:
        return "a first model: promote when its mAP beats every baseline that could be scored and the smoke test passes"
    if not champion.comparable:
        return "no class in common with the champion: nothing to compare, register it under its own model name"
    if params.require_confident_gain:
        gain = f"the lower bound of the {primary} gain's {BOOTSTRAP_CONFIDENCE:.0%} interval is at least {params.min_improvement:+.4f}"
    else:
        gain = f"the {primary} gain is at least {params.min_improvement:+.4f} (the interval is reported, not required)"
    return (
        f"promote when {gain}, no class with {params.min_class_positives}+ test positives loses more than "
        f"{params.max_class_regression:.2f} AP, and the smoke test passes"
    )


def smoke_check(smoke: dict, params: GateParams) -> tuple[bool, list[str]]:
    """The model loads from its URI in a fresh process and answers within the latency budget."""
    ok = bool(smoke.get("ok")) and smoke.get("latency_ms_max", 1e9) <= params.smoke_latency_ms
    if ok:
        return True, []
    why = smoke.get("error") or f"latency {smoke.get('latency_ms_max', float('nan')):.0f} ms over budget {params.smoke_latency_ms:.0f} ms"
    return False, [f"smoke test failed: {why}"]


def dropping_classes(champion: ChampionScores) -> str:
    """Why a candidate that tags fewer classes does not replace the champion on its own."""
    return (
        f"it does not tag {', '.join(champion.dropped)}, which champion version {champion.version} tags: judged on the shared "
        "classes only, it would silently stop tagging them; set gate.allow_dropping_classes: true to replace the champion anyway"
    )


def class_list_change(old: list[str], new: list[str]) -> str:
    """How the candidate's class list differs from the champion's, in words for the report."""
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    shared = len(new) - len(added)
    parts = [f"class-list migration, judged on the {shared} shared classes"]
    parts += [f"added {', '.join(added)}"] if added else []
    parts += [f"removed {', '.join(removed)}"] if removed else []
    return "; ".join(parts)


# -- which candidate a verdict is about ---------------------------------------------------------


def select_candidate(candidates: list[Candidate], primary_metric: str) -> Candidate:
    """The candidate with the best validation value of the primary metric (undefined counts as
    worst). Validation, never test, so the gate's test comparison stays unbiased."""
    key = f"val_{primary_metric}"
    return max(candidates, key=lambda c: c.scores[key] if c.scores.get(key) is not None else -1.0)


def judged_candidate(record: Candidates, gated: GateRecord) -> Candidate:
    """The candidate of metrics/candidates.json that reports/gate.json judged.

    A verdict that names none of them (a new `multitag evaluate` since the gate, or a gate that
    crashed and left an older gate.json) is refused: it must never promote a model nobody gated.
    """
    judged = gated.candidate
    for candidate in record.candidates:
        if judged == record.identity(candidate):
            return candidate
    runs = ", ".join(c.run_id for c in record.candidates)
    raise StaleVerdictError(
        f"reports/gate.json judged {judged or 'a candidate it does not name'}, but metrics/candidates.json holds run(s) {runs} "
        f"on data {record.data_hash}: that verdict is not about these candidates. Run `multitag gate`, then `multitag register`"
    )


class ShadowNumbers(Protocol):
    """What the shadow rules read of a challenger's shadow report (feedback/shadow.py ShadowReport)."""

    challenger_version: str
    images: int
    agreement: float | None
    feedback_images: int
    champion_correct: int
    challenger_correct: int


def shadow_refusals(report: ShadowNumbers, gate: GateParams) -> list[str]:
    """Why the gate's shadow settings refuse to promote this challenger ([]: they do not): the rule
    `multitag registry promote` applies to a challenger, read from its shadow report (feedback/shadow.py)."""
    reasons = []
    if gate.shadow_min_agreement is not None:
        if report.agreement is None:
            reasons.append(f"no shadow answers of version {report.challenger_version} yet, and gate.shadow_min_agreement is set")
        elif report.agreement < gate.shadow_min_agreement:
            reasons.append(
                f"agreement with the champion {report.agreement:.3f} over {report.images} image(s) is below "
                f"gate.shadow_min_agreement {gate.shadow_min_agreement:.3f}"
            )
    if gate.shadow_require_feedback_win:
        if report.feedback_images == 0:
            reasons.append("no shadowed image has a correction yet, and gate.shadow_require_feedback_win is set")
        elif report.challenger_correct <= report.champion_correct:
            reasons.append(
                f"on {report.feedback_images} corrected image(s) the challenger was right {report.challenger_correct} time(s), "
                f"the champion {report.champion_correct} (gate.shadow_require_feedback_win needs more)"
            )
    return reasons


def requires_shadow(gate: GateParams) -> bool:
    return gate.shadow_min_agreement is not None or gate.shadow_require_feedback_win
