"""The `gate` stage: the best candidate by validation judged against the champion (lifecycle/gate.py
measures, lifecycle/policy.py decides); reports/gate.json names the exact candidate judged."""

from __future__ import annotations

from multitag.config import Params
from multitag.layout import Layout
from multitag.lifecycle.candidates import Candidate, Candidates
from multitag.lifecycle.gate_record import GateRecord


def gate_stage(params: Params, layout: Layout = Layout()) -> GateRecord:
    """Pick the best candidate by validation score and judge it against the champion.

    Selection uses validation, never test, so the gate's test comparison stays unbiased.
    Writes reports/gate.json (naming the exact candidate judged: `Candidates.identity`) and
    reports/gate.md. A registry that cannot be read stops the gate (RegistryUnavailableError):
    judging as if there were no champion would let any candidate through.
    """
    from multitag.lifecycle import gate, gate_report, policy, registry
    from multitag.modeling.baselines import score_baselines

    record = Candidates.read(layout.candidates)
    best = policy.select_candidate(record.candidates, params.evaluate.primary_metric)
    champion = registry.alias_version(params.registry.model_name, registry.CHAMPION)
    champion_uri = f"models:/{params.registry.model_name}/{champion.version}" if champion else None
    baselines = [] if champion else score_baselines(params.gate.baselines, layout.processed, params.train.seed)
    verdict = gate.judge(
        best.model_uri,
        champion_uri,
        champion.version if champion else None,
        params.gate,
        params.evaluate.primary_metric,
        layout,
        baselines,
    )
    result = gate_record(record, best, verdict)
    result.write(layout.gate_record)
    layout.gate_report.write_text(gate_report.verdict_markdown(verdict))
    return result


def gate_record(record: Candidates, best: Candidate, verdict) -> GateRecord:
    """reports/gate.json: the verdict, the version tags behind it, and the exact candidate judged."""
    from multitag.lifecycle import gate

    return GateRecord(best.architecture, record.identity(best), gate.as_dict(verdict), verdict.evidence(), verdict.tags())
