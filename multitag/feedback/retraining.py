"""What the nightly retraining needs besides the ordinary stages: feedback as training data,
the champion as a warm start, and a run-specific parameter file.

Feedback images train or validate as the export's CSV says, except a stable share of the fully
labelled ones, which preprocessing puts in the frozen test split instead (preprocess.feedback_test_share);
an image whose content is already in the frozen test split is rejected before it is claimed.
A claimed item that validation would quarantine is rejected with validation's reason before it
is exported, so one bad correction is set aside once instead of failing every nightly run.
The export holds one task's corrections and says which (TASK_FILE); a stage that finds another
task's export (the dataset was switched) rebuilds it from the queue for its own task.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from multitag.config import Params, ValidateParams
from multitag.data.images import hash_distance, informative_hash
from multitag.data.manifest import FEEDBACK_SOURCE, Record, SourceData
from multitag.data.sources.csv_folder import FULL
from multitag.errors import MissingInputError, Problem
from multitag.feedback.fingerprints import FingerprintStore
from multitag.feedback.queue import FeedbackItem, FeedbackQueue
from multitag.periodic import Every
from multitag.reports import write_json

VAL_PERCENT = 15
OWNER_FILE = "run.json"  # in the export while the run that wrote it has not finished
TASK_FILE = "task.json"  # in every export: the task (registered model) whose corrections it holds
RUN_ENV = "MULTITAG_FEEDBACK_RUN"  # the id of the retraining run in progress in this process
RENEWALS_PER_LEASE = 3  # a lease survives two missed renewals

logger = logging.getLogger(__name__)


def open_queue(params: Params, root: Path = Path(".")) -> FeedbackQueue:
    """The project's queue, wherever its settings (or the environment) put it, for the task of
    `params` (its registered model): what it reads, claims and exports are that task's corrections."""
    feedback = params.feedback
    return FeedbackQueue(feedback.database(root), feedback.images(root), feedback.lease_seconds, task=params.registry.model_name)


def feedback_split(sha: str) -> str:
    """A stable train/val choice from the content hash: the same image always lands the same way."""
    return "val" if int(sha[:8], 16) % 100 < VAL_PERCENT else "train"


def item_split(item: FeedbackItem) -> str:
    """Where an item trains: a partial correction (some classes unknown) always in train, since
    validation needs every class's answer to tune thresholds and score honestly; a full one by
    feedback_split."""
    return "train" if item.absent is not None else feedback_split(item.image_sha256)


def absent_cell(item: FeedbackItem) -> str:
    """The export's `absent` column: `*` for a full labelling, else the confirmed-absent classes."""
    return FULL if item.absent is None else "|".join(item.absent)


def export_feedback(queue: FeedbackQueue, claimed: list[FeedbackItem], export_dir: Path, owner: str | None = None) -> list[FeedbackItem]:
    """Write the latest correction of each image of the queue's task, among the consumed items and
    this run's claimed ones, as a folder + CSV dataset; returns the items written. The folder always
    names its task (TASK_FILE); with no items it holds nothing else.
    With claimed items, `owner` (the run's id) is written beside them until the run finishes
    (`finish_export`), so that an export a killed run left behind is recognised.

    Consumed feedback stays in the training data of every later run; the export is rebuilt
    from the queue each time, so it is always exactly what the queue says was learned from
    (called with no claimed items after a failed run, it takes that run's items out again).
    """
    items = latest_per_image(queue.list_items("consumed", limit=10**9) + list(claimed))
    if export_dir.exists():
        shutil.rmtree(export_dir)
    export_dir.mkdir(parents=True)
    write_json(export_dir / TASK_FILE, {"task": queue.task})
    if not items:
        return []
    (export_dir / "images").mkdir()
    rows = ["filename,labels,split,absent"]
    for item in items:
        source = queue.images.path(item.image_sha256)
        target = export_dir / "images" / f"{export_name(item)}{source.suffix}"
        shutil.copyfile(source, target)
        rows.append(f"images/{target.name},{'|'.join(item.labels)},{item_split(item)},{absent_cell(item)}")
    (export_dir / "labels.csv").write_text("\n".join(rows) + "\n")
    if owner is not None:
        write_json(export_dir / OWNER_FILE, {"run": owner})
    return items


def finish_export(export_dir: Path) -> None:
    """The run that wrote the export succeeded: its items are consumed, the export is plain data."""
    (export_dir / OWNER_FILE).unlink(missing_ok=True)


def unfinished_export_owner(export_dir: Path) -> str | None:
    """The run that wrote this export and did not finish (killed, or still running elsewhere), or
    None when the export is plain data or belongs to the run in progress in this process."""
    owner_file = export_dir / OWNER_FILE
    if not owner_file.exists():
        return None
    owner = json.loads(owner_file.read_text())["run"]
    return None if owner == os.environ.get(RUN_ENV) else owner


@contextmanager
def owning_export(run_id: str) -> Iterator[None]:
    """Mark this process as retraining run `run_id`: its own unfinished export is valid data."""
    os.environ[RUN_ENV] = run_id
    try:
        yield
    finally:
        os.environ.pop(RUN_ENV, None)


def export_task(export_dir: Path) -> str | None:
    """The task whose corrections the export holds; None when it names none (written before exports did)."""
    task_file = export_dir / TASK_FILE
    return json.loads(task_file.read_text())["task"] if task_file.exists() else None


def refresh_feedback_export(params: Params, export_dir: Path, root: Path = Path(".")) -> str | None:
    """Rebuild the export from this task's consumed items when it cannot be used as it is: a run
    that did not finish left it (a SIGKILLed nightly cannot clean up after itself), or it holds
    another task's corrections (the dataset was switched) or names no task; why, or None.

    No export at all means nothing was ever exported here, and stays so."""
    task = params.registry.model_name
    if (owner := unfinished_export_owner(export_dir)) is not None:
        why = f"it was left by retraining run {owner}, which did not finish: rebuilt without its items"
    elif export_dir.exists() and (found := export_task(export_dir)) != task:
        whose = f"task {found}" if found else "no task (exported before corrections recorded theirs)"
        why = f"it held the corrections of {whose}: rebuilt with those of {task}"
    else:
        return None
    logger.warning("the feedback export %s: %s", export_dir, why)
    export_feedback(open_queue(params, root), [], export_dir)
    return why


def latest_per_image(items: list[FeedbackItem]) -> list[FeedbackItem]:
    """The newest item (highest id: ids increase in arrival order) of each image, oldest first.

    A user who corrects an image twice means the second answer; the older one stays in the
    queue's history but no longer trains.
    """
    latest = {item.image_sha256: item for item in sorted(items, key=lambda i: i.id)}
    return sorted(latest.values(), key=lambda i: i.id)


def export_name(item: FeedbackItem) -> str:
    """The item's file stem in the export; its manifest image_id is `feedback-<stem>`."""
    return f"fb{item.id}"


def reject_invalid(queue: FeedbackQueue, run_id: str, classes: list[str], params: ValidateParams) -> dict[int, str]:
    """Reject the run's claimed items that the validation stage would quarantine; {id: reason}.

    The same checks as the validation stage (image, class list, label count, duplicates among
    them), run before the export, so bad feedback never reaches the stage's invalid fraction:
    each bad item is rejected once, with validation's reason, and the run goes on without it.
    """
    from multitag.data.validation import validate

    claimed = queue.claimed(run_id)
    if not claimed:
        return {}
    records = [_record(queue, item) for item in claimed]
    never_fail = params.model_copy(update={"max_invalid_fraction": 1.0})
    quarantine = validate(SourceData(records, classes), never_fail).quarantine
    ids = {f"{FEEDBACK_SOURCE}-{export_name(item)}": item.id for item in claimed}
    reasons = {ids[row.image_id]: str(Problem(row.reason, row.detail)) for row in quarantine.itertuples()}
    for item_id, reason in reasons.items():
        queue.reject([item_id], reason)
    return reasons


def reject_near_duplicates(queue: FeedbackQueue, frozen: Mapping[int, str], max_bits: int) -> list[int]:
    """Reject pending items whose photo is a near-duplicate of a frozen test photo (difference hashes
    at most `max_bits` apart; `frozen` is splits.frozen_fingerprints): a re-encoded or resized copy
    has another sha256, would train the candidate and inflate the gate's own test score. Exact
    copies are FeedbackQueue.reject_leaked's (which lets some through on purpose); ids rejected."""
    exact = set(frozen.values())
    pending = [item for item in queue.list_items("pending", limit=10**9) if item.image_sha256 not in exact]
    hashes = FingerprintStore(queue.database).of((item.image_sha256 for item in pending), queue.images.path)
    leaked = [
        item.id
        for item in pending
        if (fingerprint := hashes[item.image_sha256]) is not None
        and informative_hash(fingerprint)
        and any(hash_distance(fingerprint, other) <= max_bits for other in frozen)
    ]
    if leaked:
        queue.reject(leaked, "leakage: a near-duplicate of a frozen test photo")
        logger.info("rejected %d correction(s) of near-duplicates of frozen test photos", len(leaked))
    return leaked


def _record(queue: FeedbackQueue, item: FeedbackItem) -> Record:
    """The manifest record the export will give this item, or one that says its image is gone."""
    absent = None if item.absent is None else list(item.absent)
    record = Record(f"{FEEDBACK_SOURCE}-{export_name(item)}", "", list(item.labels), item_split(item), FEEDBACK_SOURCE, absent=absent)
    try:
        record.path = str(queue.images.path(item.image_sha256))
    except KeyError as err:
        record.problems.append(str(Problem("missing_file", err.args[0])))
    return record


@contextmanager
def leases_renewed(queue: FeedbackQueue, run_id: str) -> Iterator[None]:
    """Renew the run's leases RENEWALS_PER_LEASE times per lease while the block runs.

    A retraining longer than feedback.lease_seconds keeps its items; a run that dies stops
    renewing, so its items still come back when the lease ends. A failed renewal is logged and
    tried again at the next tick (ack names any item lost meanwhile).
    """

    def renew() -> None:
        try:
            queue.renew(run_id)
        except Exception:
            logger.exception("could not renew the feedback leases of run %s; trying again", run_id)

    renewer = Every(queue.lease_seconds / RENEWALS_PER_LEASE, renew, f"lease-renewal-{run_id}")
    renewer.start()
    try:
        yield
    finally:
        renewer.stop()


def feedback_records(export_dir: Path) -> list[Record]:
    """Records of an exported feedback dataset (none if nothing was exported yet)."""
    from multitag.config import DataParams
    from multitag.data.sources import csv_folder

    if not (export_dir / "labels.csv").exists():
        return []
    records = csv_folder.read(export_dir, DataParams()).records
    for record in records:
        record.source = FEEDBACK_SOURCE
        record.image_id = f"{FEEDBACK_SOURCE}-{record.image_id}"
    return records


def download_champion(model_name: str, cache: Path) -> tuple[Path, str, str]:
    """The champion's Keras file for a warm start: (path, version, architecture).

    One folder per version under `cache` (`v<N>`), reused by every run that warm-starts from that
    version; the other versions' folders are deleted, so retraining every night keeps one copy."""
    import mlflow

    from multitag.lifecycle import registry

    champion = registry.alias_version(model_name, registry.CHAMPION)
    if champion is None:
        raise MissingInputError(f"no champion for {model_name!r} yet: run the training pipeline (make demo) before retraining")
    dest = cache / f"v{champion.version}"
    for stale in (path for path in cache.glob("*") if path != dest):
        shutil.rmtree(stale, ignore_errors=True)
    keras_file = next(dest.rglob("*.keras"), None)
    if keras_file is None:  # not downloaded yet, or a download that died halfway: start over
        shutil.rmtree(dest, ignore_errors=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{champion.version}", dst_path=str(dest)))
        keras_file = next(local.rglob("*.keras"))
    return keras_file, champion.version, champion.tags.get("architecture", "")
