"""reports/gate.md: the gate's verdict as a person reads it (each check, the numbers behind it,
the gain's interval, the baselines and the export's parity), from the Verdict gate.py returns."""

from __future__ import annotations

from multitag.lifecycle.gate import Verdict
from multitag.reports import markdown_table


def verdict_markdown(verdict: Verdict) -> str:
    """The gate report a person reads: verdict, each check, and the numbers behind it."""
    lines = [
        f"# Gate verdict: {'PASSED' if verdict.passed else 'FAILED'}",
        "",
        f"- candidate: `{verdict.candidate_uri}`",
        f"- champion: version {verdict.champion_version or 'none yet'}",
        f"- judged as: {verdict.task}",
        f"- primary metric: {verdict.primary_metric}",
        f"- judged on: {verdict.test_images} frozen test photos, {verdict.test_from_corrections} of them users' corrections",
        *_gain_lines(verdict),
        f"- decision rule: {verdict.rule}",
        "",
        *markdown_table(["check", "result"], ((name, "pass" if ok else "FAIL") for name, ok in verdict.checks.items())),
        "",
        *markdown_table(
            ["metric", "candidate", "champion"],
            ((k, f"{v:.4f}", f"{(verdict.champion or {}).get(k, float('nan')):.4f}") for k, v in verdict.candidate.items()),
        ),
        "",
        *_unjudged_lines(verdict.unjudged_drops),
        *_baseline_lines(verdict.baselines),
        "Reasons: " + ("; ".join(verdict.reasons) or "all checks passed"),
        *(["", verdict.export.summary()] if verdict.export else []),
    ]
    return "\n".join(lines) + "\n"


def _gain_lines(verdict: Verdict) -> list[str]:
    interval = verdict.gain_interval
    if interval is None:
        return []
    return [
        f"- {interval.metric} gain over the champion: {interval.gain:+.4f}, {interval.confidence:.0%} interval "
        f"[{interval.low:+.4f}, {interval.high:+.4f}] (paired bootstrap: {interval.resamples} resamples of the "
        f"{interval.n_images} test photos, the same for both models)"
    ]


def _unjudged_lines(drops: dict[str, float]) -> list[str]:
    if not drops:
        return []
    listed = ", ".join(f"{name} (-{drop:.3f})" for name, drop in drops.items())
    return [f"AP drops not judged (too few test positives; gate.min_class_positives): {listed}", ""]


def _baseline_lines(baselines: dict[str, float]) -> list[str]:
    if not baselines:
        return []
    scored = ", ".join(f"{name.removeprefix('baseline_').removesuffix('_mAP')} mAP {value:.4f}" for name, value in baselines.items())
    return [f"Baselines on the frozen test split: {scored}", ""]
