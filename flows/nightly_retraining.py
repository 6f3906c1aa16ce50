"""nightly_retraining: turn users' corrections into a better model, or change nothing.

First the screen holds suspicious pending corrections for review (likely label errors, a flooding
client, contradictions; multitag/feedback/screen.py). With enough pending feedback left: claim it
(renewing the claim while the run lives), reject the items validation would quarantine, add the
rest to the training data (train/val only), retrain warm-started from the champion, evaluate on
the frozen test split, gate, register, and only then mark the feedback consumed. Any failure puts
the claimed items back to pending and takes them out of the feedback export again.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from multitag.config import load_params
from multitag.feedback.retraining import owning_export
from multitag.feedback.screen import summary as held_summary
from multitag.workspace import exclusive_run
from tasks import feedback as fb
from tasks import pipeline as t


@flow(name="nightly-retraining", log_prints=True)
def nightly_retraining(params_path: str = "params.yaml", min_feedback: int | None = None) -> dict:
    """Retrain from pending feedback if there is enough of it."""
    logger = get_run_logger()
    needed = min_feedback if min_feedback is not None else load_params(params_path).retrain.min_feedback
    leaked = fb.reject_leaked(params_path)
    held = fb.screen(params_path)
    if held:
        logger.info("held %d feedback items for review (%s): see `multitag feedback list --state held`", len(held), held_summary(held))
    pending = fb.pending_count(params_path)
    if pending < needed:
        logger.info("nothing to do: %d pending feedback items, %d needed (retrain.min_feedback)", pending, needed)
        return {"status": "nothing to do", "pending": pending, "needed": needed, "rejected_leakage": leaked, "held": held}
    run_id = flow_run.get_id() or "local"
    with exclusive_run("nightly-retraining flow"), owning_export(run_id):
        fb.claim(params_path, run_id)
        with fb.leases_renewed(params_path, run_id):
            try:
                invalid = fb.reject_invalid(params_path, run_id)
                run = fb.prepare(params_path, run_id)
                t.validate(run["params_path"])
                t.preprocess(run["params_path"])
                for architecture in run["architectures"]:
                    warm_start = run["init_model"] if architecture == run["champion_architecture"] else None
                    t.train(architecture, run["params_path"], init_model=warm_start)
                used = run["feedback_ids"]
                tags = {"feedback_ids": ",".join(map(str, used)), "retraining_run": run_id, "warm_start_version": run["champion_version"]}
                t.evaluate(run["params_path"], run_name="nightly-retraining", extra_tags=tags)
                t.gate(run["params_path"])
                registration = t.register(run["params_path"], extra_tags=tags)
            except BaseException:  # a cancelled run gives its items back too
                fb.release(params_path, run_id)
                raise
            fb.ack(params_path, run_id, used)
    logger.info(
        "used %d feedback items (%d rejected as invalid); gate %s; champion is version %s",
        len(used),
        len(invalid),
        registration["verdict"],
        registration["champion_version"],
    )
    return {
        "status": "retrained",
        "feedback_ids": used,
        "rejected_leakage": leaked,
        "held": held,
        "rejected_invalid": invalid,
        **registration,
    }


if __name__ == "__main__":  # python -m flows.nightly_retraining [PARAMS_PATH]
    nightly_retraining(*sys.argv[1:2])
