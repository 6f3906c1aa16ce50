"""The evaluation gate: a candidate reaches users only if it proves itself, now, on the frozen
test split, against the champion scored in the same run.

Checks: (a) absolute floors, (b) beats the champion by `gate.min_improvement` on the primary
metric, (c) no class's AP drops by more than `gate.max_class_regression`, (d) a serving smoke
test from the model URI in a fresh process within the latency budget. With no champion yet,
(a) and (d) decide.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from multitag import metrics
from multitag.config import GateParams
from multitag.layout import Layout
from multitag.predictor import Predictor
from multitag.smoke import run_in_fresh_process

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

    def tags(self) -> dict[str, str]:
        """Flat version tags: the verdict and every number behind it."""
        out = {"gate_verdict": "passed" if self.passed else "failed", "gate_reasons": "; ".join(self.reasons) or "all checks passed"}
        out.update({f"gate_check_{k}": str(v) for k, v in self.checks.items()})
        out.update({f"gate_candidate_{k}": f"{v:.4f}" for k, v in self.candidate.items()})
        out.update({f"gate_champion_{k}": f"{v:.4f}" for k, v in (self.champion or {}).items()})
        if self.smoke.get("latency_ms_max") is not None:
            out["gate_smoke_latency_ms"] = f"{self.smoke['latency_ms_max']:.1f}"
        return out


def test_scores(predictor: Predictor, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, scores) on the frozen test split, decoded at the model's own input size."""
    from multitag.evaluate import predict
    from multitag.manifest import label_matrix, read
    from multitag.preprocess import load_split

    x_test, y_test = load_split(layout.processed, "test")
    if x_test.shape[1] == predictor.input_size:
        return np.asarray(y_test), predict(predictor.model, x_test)
    test = read(layout.processed / "manifest.parquet").query("split == 'test'")
    images = np.stack([predictor.decode(open(path, "rb").read()) for path in test["path"]])
    return label_matrix(test["labels"], predictor.classes), predictor.predict_arrays(images)


def summary_metrics(y_true: np.ndarray, scores: np.ndarray, predictor: Predictor) -> tuple[dict, np.ndarray]:
    """Headline metrics with the model's own thresholds, plus per-class AP."""
    result = metrics.compute_metrics(y_true, scores, predictor.thresholds, predictor.classes)
    headline = {k: float(result[k]) for k in ("mAP", "macro_f1", "micro_f1") if result[k] is not None}
    return headline, metrics.average_precision_per_class(y_true, scores)


def judge(candidate_uri: str, champion_uri: str | None, champion_version: str | None, params: GateParams, primary: str, layout: Layout = Layout()) -> Verdict:
    """Score candidate and champion on the same data now, then apply the policy."""
    candidate = Predictor.from_uri(candidate_uri)
    y_true, scores = test_scores(candidate, layout)
    cand_metrics, cand_ap = summary_metrics(y_true, scores, candidate)
    checks = {
        "floor_mAP": cand_metrics.get("mAP", 0.0) >= params.min_mAP,
        "floor_macro_f1": cand_metrics.get("macro_f1", 0.0) >= params.min_macro_f1,
    }
    reasons = [f"{name.removeprefix('floor_')} {cand_metrics.get(name.removeprefix('floor_'), 0):.4f} below floor {getattr(params, 'min_' + name.removeprefix('floor_'))}" for name, ok in checks.items() if not ok]
    champ_metrics, regressions = None, {}
    if champion_uri is not None:
        champion = Predictor.from_uri(champion_uri)
        if champion.classes != candidate.classes:
            reasons.append(f"class list differs from the champion's ({len(champion.classes)} vs {len(candidate.classes)} classes)")
            checks["same_classes"] = False
        else:
            y_champ, champ_scores = test_scores(champion, layout)
            champ_metrics, champ_ap = summary_metrics(y_champ, champ_scores, champion)
            gain = cand_metrics.get(primary, 0.0) - champ_metrics.get(primary, 0.0)
            checks["beats_champion"] = gain >= params.min_improvement
            if not checks["beats_champion"]:
                reasons.append(f"{primary} {cand_metrics.get(primary, 0):.4f} vs champion {champ_metrics.get(primary, 0):.4f}: gain {gain:+.4f} < required {params.min_improvement:+.4f}")
            drops = pd.Series(champ_ap - cand_ap, index=candidate.classes).dropna()
            regressions = {c: float(d) for c, d in drops.items() if d > params.max_class_regression}
            checks["no_class_regression"] = not regressions
            if regressions:
                reasons.append("AP dropped more than {:.2f} on: {}".format(params.max_class_regression, ", ".join(f"{c} ({d:.3f})" for c, d in regressions.items())))
    smoke = smoke_test(candidate_uri, layout)
    checks["smoke_test"] = bool(smoke.get("ok")) and smoke.get("latency_ms_max", 1e9) <= params.smoke_latency_ms
    if not checks["smoke_test"]:
        reasons.append(f"smoke test failed: {smoke.get('error') or 'latency {:.0f} ms over budget {:.0f} ms'.format(smoke['latency_ms_max'], params.smoke_latency_ms)}")
    return Verdict(all(checks.values()), candidate_uri, champion_version, primary, cand_metrics, champ_metrics, checks, reasons, regressions, smoke)


def smoke_test(model_uri: str, layout: Layout) -> dict:
    """Load the model in a fresh process and answer a few real test images."""
    from multitag.manifest import read

    test = read(layout.processed / "manifest.parquet").query("split == 'test'")
    return run_in_fresh_process(model_uri, list(test["path"].head(SMOKE_IMAGES)))


def verdict_markdown(verdict: Verdict, version: str | None) -> str:
    """The gate report a person reads: verdict, each check, and the numbers behind it."""
    lines = [
        f"# Gate verdict: {'PASSED' if verdict.passed else 'FAILED'}",
        "",
        f"- candidate: `{verdict.candidate_uri}` (registered version {version or 'n/a'})",
        f"- champion: version {verdict.champion_version or 'none yet'}",
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
        "Reasons: " + ("; ".join(verdict.reasons) or "all checks passed"),
    ]
    return "\n".join(lines) + "\n"


def as_dict(verdict: Verdict) -> dict:
    return asdict(verdict)
