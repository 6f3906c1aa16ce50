"""The `register` stage: every evaluated candidate registered with its model card, the aliases
moved by the verdict, and the sentence every run ends with (what is served now)."""

from __future__ import annotations

from multitag.config import Params
from multitag.layout import Layout
from multitag.lifecycle.candidates import Candidate, Candidates
from multitag.lifecycle.gate_record import GateRecord
from multitag.lifecycle.registration import Registration


def register_stage(params: Params, layout: Layout = Layout(), extra_tags: dict[str, str] | None = None) -> Registration:
    """Register every evaluated candidate; move aliases for the gated one by its verdict.

    Refuses a verdict about other candidates (`policy.judged_candidate`) and promotes only if the
    champion is still the one the gate judged against (compare-and-set under the registry lock).
    Safe to repeat: a candidate's run is registered once, and promoting the champion again is a
    no-op. Writes reports/registration.json (the version numbers, the verdict, the champion now).
    """
    from multitag.lifecycle import policy, registry

    record = Candidates.read(layout.candidates)
    gated = GateRecord.read(layout.gate_record)
    judged = policy.judged_candidate(record, gated)
    name = params.registry.model_name
    versions = {}
    for candidate in record.candidates:
        selected = candidate is judged
        tags = {
            "architecture": candidate.architecture,
            "data_hash": record.data_hash,
            "git_commit": record.git_commit,
            "run_id": candidate.run_id,
            "parent_run_id": record.parent_run_id,
            **{k: candidate.scores[k] for k in ("val_mAP", "test_mAP", "test_macro_f1", "latency_ms", "size_mb")},
            **(
                gated.tags
                if selected
                else {"gate_verdict": "not_selected", "gate_reasons": f"lower validation score than {gated.selected}"}
            ),
            **(extra_tags or {}),
        }
        version = versions[candidate.architecture] = registry.register_run(candidate.model_uri, name, candidate.run_id, tags)
        evidence = gated.evidence if selected else ""
        registry.describe(name, version, card(name, version, candidate, tags, evidence, layout))
    selected_version = versions[judged.architecture]
    if gated.passed:
        registry.promote(name, selected_version, expected_champion=gated.champion_version)
    elif params.gate.register_failed_as_challenger:
        registry.mark_challenger(name, selected_version)
    champion = registry.alias_version(name, registry.CHAMPION)
    result = Registration(
        model_name=name,
        versions=versions,
        selected=gated.selected,
        selected_version=selected_version,
        verdict="passed" if gated.passed else "failed",
        reasons=gated.reasons,
        evidence=gated.evidence,
        champion_version=champion.version if champion else None,
    )
    result.write(layout.registration)
    return result


def card(name: str, version: str, candidate: Candidate, tags: dict[str, str], evidence: str, layout: Layout) -> str:
    """The version's model card (lifecycle/model_card.py) from what the stages wrote: the processed
    data's summary, the training record, the run's evaluation and the gate's tags. A record that is
    missing (a workspace assembled by hand) leaves its part of the card empty: documentation never
    stops a registration."""
    import mlflow

    from multitag.data.summary import ProcessedSummary
    from multitag.lifecycle.model_card import CardFacts, model_card
    from multitag.modeling.train_record import RECORD_FILE, TrainResult

    data = ProcessedSummary.read(layout.processed)
    model_dir = layout.models / candidate.architecture
    start = TrainResult.read(model_dir).start if (model_dir / RECORD_FILE).exists() else "cold"
    try:
        test = mlflow.artifacts.load_dict(f"runs:/{candidate.run_id}/evaluation.json")["test"]["tuned"]
    except Exception:  # no evaluation logged with the run (MLflow raises its own, store-specific errors)
        test = {}
    exported = tags.get("export_parity") == "passed"
    runtime = f"TFLite (parity with Keras held, max score difference {tags.get('export_max_score_difference')})" if exported else "Keras"
    facts = CardFacts(
        name=name,
        version=str(version),
        architecture=candidate.architecture,
        run_id=candidate.run_id,
        dataset=data.dataset if data else "not recorded",
        splits=data.splits if data else {},
        test_from_corrections=data.test_from_corrections if data else 0,
        corrections_used=len([i for i in tags.get("feedback_ids", "").split(",") if i]),
        start=start,
        warm_start_version=tags.get("warm_start_version"),
        headline={k: test.get(k) for k in ("mAP", "macro_f1", "micro_f1")},
        per_class=test.get("per_class", {}),
        verdict=tags["gate_verdict"],
        reasons=tags.get("gate_reasons", ""),
        evidence=evidence,
        runtime=runtime,
    )
    return model_card(facts)


def outcome_message(registration: Registration) -> str:
    """How every run ends: what is served now, or why nothing is and what to do next."""
    name, champion = registration.model_name, registration.champion_version
    selected, version = registration.selected, registration.selected_version
    if registration.passed:
        head = f"Gate passed: {selected} (version {version}) is now the champion of {name}."
    else:
        reasons = "; ".join(registration.reasons) or "see reports/gate.md"
        head = f"Gate failed for {selected} (version {version}, now `challenger`): {reasons}."
    if registration.evidence:
        head += f"\nEvidence: {registration.evidence}."
    if champion is None:
        return (
            f"{head}\nNothing is served for {name} yet. Next: read reports/gate.md; to serve this model anyway, "
            f"`multitag registry promote {version}`; or improve it (more photos, `train` params) and run the pipeline again."
        )
    served = f"models:/{name}@champion (version {champion})"
    return (
        f"{head}\nServed now: {served}. Next: `multitag serve` and open the page, or `multitag predict models:/{name}@champion PHOTO.jpg`."
    )
