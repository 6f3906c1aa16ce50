"""The evaluation gate: a candidate reaches users only if it proves itself, now, on the frozen
test split, against the champion scored in the same run.

Checks: (a) the user's optional absolute floors, (b) beats the champion by `gate.min_improvement`
on the primary metric, (c) no class's AP drops by more than `gate.max_class_regression`, (d) a
serving smoke test from the model URI in a fresh process within the latency budget. With no
champion yet, (b) and (c) become: beats each baseline of `gate.baselines` (class prior, frozen
feature probe; multitag/modeling/baselines.py), which needs no hand-set number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from multitag.config import GateParams
from multitag.layout import Layout
from multitag.lifecycle.predictor import Predictor
from multitag.lifecycle.smoke import run_in_fresh_process
from multitag.modeling import metrics
from multitag.modeling.baselines import Baseline

SMOKE_IMAGES = 3


@dataclass
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
    smoke: dict = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    task: str = "first model"

    def tags(self) -> dict[str, str]:
        """Flat version tags: the verdict and every number behind it."""
        out = {"gate_verdict": "passed" if self.passed else "failed", "gate_reasons": "; ".join(self.reasons) or "all checks passed"}
        out.update({f"gate_check_{k}": str(v) for k, v in self.checks.items()})
        out.update({f"gate_candidate_{k}": f"{v:.4f}" for k, v in self.candidate.items()})
        out.update({f"gate_champion_{k}": f"{v:.4f}" for k, v in (self.champion or {}).items()})
        out.update({f"gate_{k}": f"{v:.4f}" for k, v in self.baselines.items()})
        out["gate_task"] = self.task
        if self.smoke.get("latency_ms_max") is not None:
            out["gate_smoke_latency_ms"] = f"{self.smoke['latency_ms_max']:.1f}"
        return out


def test_scores(predictor: Predictor, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, scores) on the frozen test split, decoded at the model's own input size."""
    from multitag.data.manifest import label_matrix, read
    from multitag.data.preprocess import load_split
    from multitag.modeling.evaluate import predict

    x_test, y_test = load_split(layout.processed, "test")
    if x_test.shape[1] == predictor.input_size:
        return np.asarray(y_test), predict(predictor.model, x_test)
    test = read(layout.processed / "manifest.parquet").query("split == 'test'")
    images = np.stack([predictor.decode(Path(path).read_bytes()) for path in test["path"]])
    return label_matrix(test["labels"], predictor.classes), predictor.predict_arrays(images)


def summary_metrics(y_true: np.ndarray, scores: np.ndarray, predictor: Predictor) -> tuple[dict, np.ndarray]:
    """Headline metrics with the model's own thresholds, plus per-class AP."""
    result = metrics.compute_metrics(y_true, scores, predictor.thresholds, predictor.classes)
    headline = {k: float(result[k]) for k in ("mAP", "macro_f1", "micro_f1") if result[k] is not None}
    return headline, metrics.average_precision_per_class(y_true, scores)


def floor_checks(candidate: dict, params: GateParams) -> tuple[dict[str, bool], list[str]]:
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
            reasons_note = f"baseline {baseline.name} not checked ({baseline.detail})"
            reasons.append(reasons_note)
            continue
        scores[f"baseline_{baseline.name}_mAP"] = baseline.mAP
        checks[f"beats_{baseline.name}"] = candidate_map > baseline.mAP
        if not checks[f"beats_{baseline.name}"]:
            reasons.append(f"mAP {candidate_map:.4f} does not beat the {baseline.name} baseline ({baseline.mAP:.4f}; {baseline.detail})")
    return checks, reasons, scores


def judge(
    candidate_uri: str,
    champion_uri: str | None,
    champion_version: str | None,
    params: GateParams,
    primary: str,
    layout: Layout = Layout(),
    baselines: list[Baseline] = (),  # type: ignore[assignment]
) -> Verdict:
    """Score candidate and champion on the same data now, then apply the policy.

    A champion with another class list is compared on the classes both know (a class-list
    migration, named in the verdict); with no class in common there is nothing to compare,
    which the verdict says instead of blocking in silence.
    """
    candidate = Predictor.from_uri(candidate_uri)
    y_true, scores = test_scores(candidate, layout)
    cand_metrics, cand_ap = summary_metrics(y_true, scores, candidate)
    checks, reasons = floor_checks(cand_metrics, params)
    baseline_passed, baseline_reasons, baseline_scores = baseline_checks(cand_metrics.get("mAP", 0.0), baselines)
    checks.update(baseline_passed)
    reasons += baseline_reasons
    champ_metrics, regressions, task = None, {}, "first model" if champion_uri is None else "same classes as the champion"
    if champion_uri is not None:
        champion = Predictor.from_uri(champion_uri)
        shared = [c for c in candidate.classes if c in champion.classes]
        if champion.classes != candidate.classes:
            task = class_list_change(champion.classes, candidate.classes)
        if not shared:
            checks["comparable_to_champion"] = False
            reasons.append(
                f"{task}: no class in common with champion version {champion_version}; register this task under its own model name (`multitag pipeline --model-name NAME`)"
            )
        else:
            _, champ_scores = test_scores(champion, layout)
            cand_cols = [candidate.classes.index(c) for c in shared]
            champ_cols = [champion.classes.index(c) for c in shared]
            shared_candidate = Predictor(candidate.model, shared, candidate.thresholds[cand_cols], candidate.input_size)
            shared_champion = Predictor(champion.model, shared, champion.thresholds[champ_cols], champion.input_size)
            y_shared = y_true[:, cand_cols]
            cand_shared, cand_ap = summary_metrics(y_shared, scores[:, cand_cols], shared_candidate)
            champ_metrics, champ_ap = summary_metrics(y_shared, champ_scores[:, champ_cols], shared_champion)
            gain = cand_shared.get(primary, 0.0) - champ_metrics.get(primary, 0.0)
            checks["beats_champion"] = gain >= params.min_improvement
            if not checks["beats_champion"]:
                reasons.append(
                    f"{primary} {cand_shared.get(primary, 0):.4f} vs champion {champ_metrics.get(primary, 0):.4f}: gain {gain:+.4f} < required {params.min_improvement:+.4f}"
                )
            drops = pd.Series(champ_ap - cand_ap, index=shared).dropna()
            regressions = {c: float(d) for c, d in drops.items() if d > params.max_class_regression}
            checks["no_class_regression"] = not regressions
            if regressions:
                reasons.append(
                    "AP dropped more than {:.2f} on: {}".format(
                        params.max_class_regression, ", ".join(f"{c} ({d:.3f})" for c, d in regressions.items())
                    )
                )
    smoke = smoke_test(candidate_uri, layout)
    checks["smoke_test"] = bool(smoke.get("ok")) and smoke.get("latency_ms_max", 1e9) <= params.smoke_latency_ms
    if not checks["smoke_test"]:
        reasons.append(
            f"smoke test failed: {smoke.get('error') or 'latency {:.0f} ms over budget {:.0f} ms'.format(smoke['latency_ms_max'], params.smoke_latency_ms)}"
        )
    return Verdict(
        all(checks.values()),
        candidate_uri,
        champion_version,
        primary,
        cand_metrics,
        champ_metrics,
        checks,
        reasons,
        regressions,
        smoke,
        baseline_scores,
        task,
    )


def class_list_change(old: list[str], new: list[str]) -> str:
    """How the candidate's class list differs from the champion's, in words for the report."""
    added, removed = [c for c in new if c not in old], [c for c in old if c not in new]
    shared = len(new) - len(added)
    parts = [f"class-list migration, judged on the {shared} shared classes"]
    parts += [f"added {', '.join(added)}"] if added else []
    parts += [f"removed {', '.join(removed)}"] if removed else []
    return "; ".join(parts)


def smoke_test(model_uri: str, layout: Layout) -> dict:
    """Load the model in a fresh process and answer a few real test images."""
    from multitag.data.manifest import read

    test = read(layout.processed / "manifest.parquet").query("split == 'test'")
    return run_in_fresh_process(model_uri, list(test["path"].head(SMOKE_IMAGES)))


def verdict_markdown(verdict: Verdict, version: str | None) -> str:
    """The gate report a person reads: verdict, each check, and the numbers behind it."""
    lines = [
        f"# Gate verdict: {'PASSED' if verdict.passed else 'FAILED'}",
        "",
        f"- candidate: `{verdict.candidate_uri}` (registered version {version or 'n/a'})",
        f"- champion: version {verdict.champion_version or 'none yet'}",
        f"- judged as: {verdict.task}",
        f"- primary metric: {verdict.primary_metric}",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in verdict.checks.items()],
        "",
        "| metric | candidate | champion |",
        "|---|---|---|",
        *[f"| {k} | {v:.4f} | {(verdict.champion or {}).get(k, float('nan')):.4f} |" for k, v in verdict.candidate.items()],
        "",
        *_baseline_lines(verdict.baselines),
        "Reasons: " + ("; ".join(verdict.reasons) or "all checks passed"),
    ]
    return "\n".join(lines) + "\n"


def _baseline_lines(baselines: dict[str, float]) -> list[str]:
    if not baselines:
        return []
    scored = ", ".join(f"{name.removeprefix('baseline_').removesuffix('_mAP')} mAP {value:.4f}" for name, value in baselines.items())
    return [f"Baselines on the frozen test split: {scored}", ""]


def as_dict(verdict: Verdict) -> dict:
    return asdict(verdict)
