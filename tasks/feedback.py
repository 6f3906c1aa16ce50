"""Prefect tasks of the feedback loop: guard against leakage, hold suspicious corrections, claim,
set bad items aside, prepare, ack or release."""

from __future__ import annotations

import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from multitag.config import load_params
from multitag.data.splits import frozen_fingerprints, frozen_from_corrections, read_frozen_test
from multitag.feedback import retraining
from multitag.feedback.retention import expire_items
from multitag.layout import Layout

RUN_PARAMS = Path(".multitag/nightly-params.yaml")
RETRAIN_TAG = "retrain"  # on a version a retraining registered: full (the nightly) or quick


@task(retries=2, retry_delay_seconds=5)
def expire(params_path: str) -> dict[str, int]:
    """Retention, also when no server sweeps: held items nobody released for feedback.held_days are
    rejected, decided ones older than feedback.retention_days deleted (retention.expire_items)."""
    params = load_params(params_path)
    return expire_items(retraining.open_queue(params), params.feedback)


@task(retries=2, retry_delay_seconds=5)
def reject_leaked(params_path: str) -> list[int]:
    """Feedback images whose content is in the frozen test split never train (those a correction put
    there go to test again: splits.frozen_from_corrections), nor do near-duplicates of test photos."""
    params, frozen_test = load_params(params_path), Layout().frozen_test
    queue = retraining.open_queue(params)
    exact = queue.reject_leaked(read_frozen_test(frozen_test) or set(), frozen_from_corrections(frozen_test))
    near = retraining.reject_near_duplicates(queue, frozen_fingerprints(frozen_test), params.retrain.near_duplicate_bits)
    return sorted(exact + near)


@task(retries=2, retry_delay_seconds=5)
def screen(params_path: str) -> dict[int, str]:
    """Hold suspicious pending corrections for review instead of training on them (retrain.screen;
    multitag/feedback/screen.py); {id: reason} of those held now."""
    from multitag.data.sources import read_source
    from multitag.feedback import screen as screening
    from multitag.feedback.predictions import PredictionLog

    params = load_params(params_path)
    if not params.retrain.screen:
        return {}
    queue = retraining.open_queue(params)
    hours = params.serve.prediction_log_hours
    log = PredictionLog(queue.database, hours * 3600) if hours > 0 else None
    name, classes = params.registry.model_name, read_source(params.data).classes
    return screening.screen_queue(queue, classes, params.retrain, log, name, screening.champion_scorer(name))


@task(retries=2, retry_delay_seconds=5)
def pending_count(params_path: str) -> int:
    queue = retraining.open_queue(load_params(params_path))
    queue.release_expired()
    return queue.pending_count()


@task(retries=2, retry_delay_seconds=5)
def claim(params_path: str, run_id: str) -> list[int]:
    return [item.id for item in retraining.open_queue(load_params(params_path)).claim(run_id)]


def leases_renewed(params_path: str, run_id: str) -> AbstractContextManager[None]:
    """Keep the run's claims while the block runs (not a task: a thread beside the flow's tasks)."""
    return retraining.leases_renewed(retraining.open_queue(load_params(params_path)), run_id)


@task(retries=2, retry_delay_seconds=5)
def reject_invalid(params_path: str, run_id: str) -> dict[int, str]:
    """Claimed items the validation stage would quarantine are rejected with its reason, once."""
    from multitag.data.sources import read_source

    params = load_params(params_path)
    classes = read_source(params.data).classes
    return retraining.reject_invalid(retraining.open_queue(params), run_id, classes, params.validate_)


@task(retries=2, retry_delay_seconds=5)
def last_retrain_was_quick(params_path: str) -> bool:
    """Whether the newest retrained version came from the quick path, promoted or not: its
    corrections are consumed, but no network has fine-tuned on them yet, so the nightly owes them a
    full retrain. A full retrain registers a newer version (even one the gate refuses), which
    settles the debt: a refused attempt is not retried every night for nothing."""
    from multitag.lifecycle import registry

    retrained = [v for v in registry.list_versions(load_params(params_path).registry.model_name) if RETRAIN_TAG in v.tags]
    return bool(retrained) and retrained[0].tags[RETRAIN_TAG] == "quick"  # list_versions: newest first


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


@task
def prepare(params_path: str, run_id: str, quick: bool = False) -> RetrainRun:
    """Fetch the champion, write this run's params file, then export feedback as training data.

    The export comes last, after everything that can fail before training, and a failed run's
    release takes it out again. The run trains the champion's architecture warm-started from it
    (all configured architectures when retrain.all_architectures is set; a quick run refits the
    champion alone).
    """
    from multitag.params_file import set_params

    params = load_params(params_path)
    init_model, version, architecture = retraining.download_champion(params.registry.model_name, Path(".multitag") / "champion")
    RUN_PARAMS.parent.mkdir(parents=True, exist_ok=True)
    RUN_PARAMS.write_text(Path(params_path).read_text())
    architectures = params.train.architectures if params.retrain.all_architectures and not quick else [architecture]
    set_params(RUN_PARAMS, {"train.architectures": architectures})
    queue = retraining.open_queue(params)
    claimed = queue.claimed(run_id)
    retraining.export_feedback(queue, claimed, Layout().feedback_export, owner=run_id)
    return RetrainRun(str(RUN_PARAMS), str(init_model), version, architecture, list(architectures), [item.id for item in claimed])


@task(retries=2, retry_delay_seconds=5)
def ack(params_path: str, run_id: str, ids: list[int]) -> int:
    """Mark the run's items consumed, then record the export they are in as a data version."""
    acked = retraining.open_queue(load_params(params_path)).ack(run_id, ids)
    retraining.finish_export(Layout().feedback_export)
    if Layout().feedback_export.exists():
        subprocess.run([sys.executable, "-m", "dvc", "add", "--quiet", str(Layout().feedback_export)], check=False)
    return acked


@task(retries=2, retry_delay_seconds=5)
def release(params_path: str, run_id: str) -> int:
    """Give the run's items back to pending and rebuild the export without them: a failed run
    leaves no trace in the training data."""
    queue = retraining.open_queue(load_params(params_path))
    released = queue.release(run_id)
    retraining.export_feedback(queue, [], Layout().feedback_export)
    return released
