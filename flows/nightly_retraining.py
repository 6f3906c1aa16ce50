"""nightly_retraining and quick_retraining: turn users' corrections into a better model, or change nothing.

Two flows, one story: the nightly fine-tunes the champion on everything labelled (the full
retrain); the quick path (minutes, on a short interval) refits only the champion's cheap member (its probe, else its head)
on cached features, so corrections take effect the same hour, and the next nightly then trains
them in full.

First the queue forgets what no run needs (feedback retention), then the screen holds suspicious pending corrections for review (likely label errors, a flooding
client, contradictions; multitag/feedback/screen.py). With enough pending feedback left: claim it
(renewing the claim while the run lives), reject the items validation would quarantine, add the
rest to the data (train/val; a stable share of the fully labelled ones joins the frozen test split),
retrain warm-started from the champion, evaluate on the frozen test split, gate, register, and only then mark the feedback consumed. Any failure puts
the claimed items back to pending and takes them out of the feedback export again.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from multitag.feedback.retraining import owning_export
from multitag.feedback.screen_rules import summary as held_summary
from multitag.lifecycle.registration import Registration
from multitag.stages import outcome_message
from multitag.workspace import exclusive_run
from tasks import feedback as fb
from tasks import pipeline as t
from tasks.context import RunContext


@flow(name="nightly-retraining", log_prints=True)
def nightly_retraining(params_path: str = "params.yaml", min_feedback: int | None = None) -> dict:
    """The full retrain: fine-tune the champion on everything labelled, corrections included.
    It also runs with no pending feedback when the last retraining was a quick refit (promoted or
    not): no network has fine-tuned on the corrections it consumed."""
    return retrain(params_path, min_feedback, quick=False)


@flow(name="quick-retraining", log_prints=True)
def quick_retraining(params_path: str = "params.yaml", min_feedback: int | None = None) -> dict:
    """Corrections in minutes: refit only the champion's cheap member (its probe, else its head) on cached features of all
    labelled data, then the same gate, registration and hot reload as the nightly."""
    return retrain(params_path, min_feedback, quick=True)


def retrain(params_path: str, min_feedback: int | None, quick: bool) -> dict:
    """The story both flows share; `quick` changes only what trains."""
    logger = get_run_logger()
    kind = "quick" if quick else "full"
    context = RunContext(params_path)  # params, queue, prediction log and class list, read once for the run
    needed = min_feedback if min_feedback is not None else context.params.retrain.min_feedback
    fb.expire(context)
    leaked = fb.reject_leaked(context)
    held = fb.screen(context)
    if held:
        logger.info("held %d feedback items for review (%s): see `multitag feedback list --state held`", len(held), held_summary(held))
    pending = fb.pending_count(context)
    owed = 0 if quick else fb.corrections_owed(context)
    if pending < needed and not owed:
        logger.info("nothing to do: %d pending feedback items, %d needed (retrain.min_feedback)", pending, needed)
        return {"status": "nothing to do", "pending": pending, "needed": needed, "rejected_leakage": leaked, "held": held}
    if owed:
        logger.info(
            "fine-tuning on the %d correction(s) quick refits consumed since the last full retraining (%d pending too)", owed, pending
        )
    run_id = flow_run.get_id() or "local"
    with exclusive_run(f"{kind} retraining flow"), owning_export(run_id):
        fb.claim(context, run_id)
        with fb.leases_renewed(context, run_id):
            try:
                invalid = fb.reject_invalid(context, run_id)
                run = fb.prepare(context, run_id, quick)
                t.validate(run.params_path)
                t.preprocess(run.params_path)
                for architecture in run.architectures:
                    t.train(architecture, run.params_path, init_model=run.warm_start_for(architecture), quick=quick)
                used = run.feedback_ids
                tags = {
                    "feedback_ids": ",".join(map(str, used)),
                    "retraining_run": run_id,
                    "warm_start_version": run.champion_version,
                    fb.RETRAIN_TAG: kind,
                }
                t.evaluate(run.params_path, run_name=f"{kind}-retraining", extra_tags=tags)
                t.gate(run.params_path)
                registration = t.register(run.params_path, extra_tags=tags)
            except BaseException:  # a cancelled run gives its items back too
                fb.release(context, run_id)
                raise
            fb.ack(context, run_id, used)
    logger.info(
        "%s retraining used %d feedback items (%d rejected as invalid); gate %s (%s); champion is version %s",
        kind,
        len(used),
        len(invalid),
        registration.verdict,
        registration.evidence,
        registration.champion_version,
    )
    return {
        "status": "retrained",
        "kind": kind,
        "feedback_ids": used,
        "owed": owed,
        "rejected_leakage": leaked,
        "held": held,
        "rejected_invalid": invalid,
        **registration.to_json(),
    }


def outcome(result: dict) -> str:
    """How `multitag retrain --now/--quick` ends: what the run trained and what is served now, or why
    nothing ran and what to do next."""
    held = result.get("held") or {}
    held_note = f"; {len(held)} held for review (`multitag feedback list --state held`)" if held else ""
    if result["status"] != "retrained":
        return (
            f"Nothing to do: {result['pending']} pending correction(s), {result['needed']} needed (retrain.min_feedback){held_note}. "
            "Next: correct more photos on the page, or lower retrain.min_feedback."
        )
    rejected = len(result["rejected_invalid"]) + len(result["rejected_leakage"])
    rejected_note = f"; {rejected} rejected (invalid, or in the test split)" if rejected else ""
    owed = result["owed"]
    owed_note = f", and fine-tuned on the {owed} a quick refit trained only its cheap member on" if owed else ""
    trained = f"{result['kind'].capitalize()} retraining trained on {len(result['feedback_ids'])} new correction(s){owed_note}{held_note}{rejected_note}."
    return f"{trained}\n{outcome_message(Registration.from_json(result))}"


if __name__ == "__main__":  # python -m flows.nightly_retraining [PARAMS_PATH] [--quick]
    (quick_retraining if "--quick" in sys.argv else nightly_retraining)(*[a for a in sys.argv[1:2] if a != "--quick"])
