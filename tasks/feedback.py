"""Prefect tasks of the feedback loop: guard against leakage, hold suspicious corrections, claim,
set bad items aside, prepare, ack or release."""

from __future__ import annotations

import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from multitag.data.splits import frozen_fingerprints, frozen_from_corrections, read_frozen_test
from multitag.feedback import retraining
from multitag.feedback.retention import expire_items
from tasks.context import RunContext
from tasks.retrying import RETRIED

RUN_PARAMS = Path(".multitag/nightly-params.yaml")
RETRAIN_TAG = "retrain"  # on a version a retraining registered: full (the nightly) or quick
# Queue work is retried on I/O errors and never cached: each call reads and changes the queue now
QUEUE_TASK = {**RETRIED, "cache_policy": NO_CACHE}


@task(**QUEUE_TASK)
def expire(context: RunContext) -> dict[str, int]:
    """Retention, also when no server sweeps: held items nobody released for feedback.held_days are
    rejected, decided ones older than feedback.retention_days deleted (retention.expire_items)."""
    return expire_items(context.queue, context.params.feedback)


@task(**QUEUE_TASK)
def reject_leaked(context: RunContext) -> list[int]:
    """Feedback images whose content is in the frozen test split never train (those a correction put
    there go to test again: splits.frozen_from_corrections), nor do near-duplicates of test photos."""
    frozen_test = context.layout.frozen_test
    exact = context.queue.reject_leaked(read_frozen_test(frozen_test) or set(), frozen_from_corrections(frozen_test))
    near = retraining.reject_near_duplicates(context.queue, frozen_fingerprints(frozen_test), context.params.retrain.near_duplicate_bits)
    return sorted(exact + near)


@task(**QUEUE_TASK)
def screen(context: RunContext) -> dict[int, str]:
    """Hold suspicious pending corrections for review instead of training on them (retrain.screen;
    multitag/feedback/screen.py); {id: reason} of those held now."""
    from multitag.feedback import screen as screening

    if not context.params.retrain.screen:
        return {}
    scorer = screening.champion_scorer(context.task)
    return screening.screen_queue(context.queue, context.classes, context.params.retrain, context.prediction_log, context.task, scorer)


@task(**QUEUE_TASK)
def pending_count(context: RunContext) -> int:
    context.queue.release_expired()
    return context.queue.pending_count()


@task(**QUEUE_TASK)
def claim(context: RunContext, run_id: str) -> list[int]:
    return [item.id for item in context.queue.claim(run_id)]


def leases_renewed(context: RunContext, run_id: str) -> AbstractContextManager[None]:
    """Keep the run's claims while the block runs (not a task: a thread beside the flow's tasks)."""
    return retraining.leases_renewed(context.queue, run_id)


@task(**QUEUE_TASK)
def reject_invalid(context: RunContext, run_id: str) -> dict[int, str]:
    """Claimed items the validation stage would quarantine are rejected with its reason, once."""
    return retraining.reject_invalid(context.queue, run_id, context.classes, context.params.validate_)


@task(**QUEUE_TASK)
def corrections_owed(context: RunContext) -> int:
    """How many corrections the quick refits since the newest full retraining consumed, promoted or
    not (0: none): they are consumed, but no network has fine-tuned on them yet, so the nightly owes
    them a full retrain. A full retrain registers a newer version (even one the gate refuses), which
    settles the debt: a refused attempt is not retried every night for nothing."""
    from multitag.lifecycle import registry

    owed = 0
    for version in (v for v in registry.list_versions(context.task) if RETRAIN_TAG in v.tags):  # newest first
        if version.tags[RETRAIN_TAG] != "quick":
            break
        owed += len([i for i in version.tags.get("feedback_ids", "").split(",") if i])
    return owed


@dataclass(frozen=True)
class RetrainRun:
    """What `prepare` sets up for one retraining run, and the flow reads back: typed, not a dict."""

    params_path: str  # this run's params file (.multitag/nightly-params.yaml)
    init_model: str  # the champion's downloaded model.keras: the warm start
    champion_version: str
    champion_architecture: str
    architectures: list[str]  # what this run trains
    feedback_ids: list[int]  # the claimed items it exported as training data

    def warm_start_for(self, architecture: str) -> str | None:
        """The champion's model for its own architecture; another architecture starts cold."""
        return self.init_model if architecture == self.champion_architecture else None


@task(cache_policy=NO_CACHE)
def prepare(context: RunContext, run_id: str, quick: bool = False) -> RetrainRun:
    """Fetch the champion, write this run's params file, then export feedback as training data.

    The export comes last, after everything that can fail before training, and a failed run's
    release takes it out again. The run trains the champion's architecture warm-started from it
    (all configured architectures when retrain.all_architectures is set; a quick run refits the
    champion alone).
    """
    from multitag.params_file import set_params

    params = context.params
    init_model, version, architecture = retraining.download_champion(context.task, Path(".multitag") / "champion")
    RUN_PARAMS.parent.mkdir(parents=True, exist_ok=True)
    RUN_PARAMS.write_text(Path(context.params_path).read_text())
    architectures = params.train.architectures if params.retrain.all_architectures and not quick else [architecture]
    set_params(RUN_PARAMS, {"train.architectures": architectures})
    claimed = context.queue.claimed(run_id)
    retraining.export_feedback(context.queue, claimed, context.layout.feedback_export, owner=run_id)
    return RetrainRun(str(RUN_PARAMS), str(init_model), version, architecture, list(architectures), [item.id for item in claimed])


@task(**QUEUE_TASK)
def ack(context: RunContext, run_id: str, ids: list[int]) -> int:
    """Mark the run's items consumed, then record the export they are in as a data version."""
    acked = context.queue.ack(run_id, ids)
    export = context.layout.feedback_export
    retraining.finish_export(export)
    if export.exists():
        subprocess.run([sys.executable, "-m", "dvc", "add", "--quiet", str(export)], check=False)
    return acked


@task(**QUEUE_TASK)
def release(context: RunContext, run_id: str) -> int:
    """Give the run's items back to pending and rebuild the export without them: a failed run
    leaves no trace in the training data."""
    released = context.queue.release(run_id)
    retraining.export_feedback(context.queue, [], context.layout.feedback_export)
    return released
