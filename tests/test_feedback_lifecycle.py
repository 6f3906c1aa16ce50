"""The feedback's way into training: the latest correction of an image wins, bad items are set
aside once, leases live as long as the run, and a failed nightly run leaves no trace in the
training data. Real SQLite queue, real threads, real Prefect flow runs; no model is trained."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from corpus import encode, solid
from engines import flows_reporting_to

from multitag.config import ValidateParams, load_params
from multitag.data.manifest import Record, SourceData
from multitag.data.validation import SUPERSEDED, ValidationFailed, validate
from multitag.errors import MissingInputError, RegistryUnavailableError
from multitag.feedback.queue import ClaimLost, FeedbackQueue
from multitag.feedback.retraining import export_feedback, feedback_records, leases_renewed, open_queue, reject_invalid
from multitag.layout import Layout

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "person"]


def png(name: str) -> bytes:
    return encode(solid(name), "PNG")


def make_queue(root: Path, lease_seconds: float = 3600) -> FeedbackQueue:
    return FeedbackQueue(root / "queue.db", root / "images", lease_seconds=lease_seconds)


def exported_rows(export_dir: Path) -> list[str]:
    return (export_dir / "labels.csv").read_text().splitlines()[1:]


# -- the latest correction of an image wins ---------------------------------------------------


def test_the_latest_correction_of_an_image_is_exported_and_the_older_never_again(tmp_path):
    queue = make_queue(tmp_path)
    first = queue.add(png("a"), ["cat"]).id
    other = queue.add(png("b"), ["dog"]).id
    queue.ack("night-1", [item.id for item in queue.claim("night-1")])
    second = queue.add(png("a"), ["cat", "person"]).id  # the same image, corrected again

    exported = export_feedback(queue, queue.claim("night-2"), tmp_path / "export")
    assert [item.id for item in exported] == [other, second]
    assert [row.split(",")[:2] for row in exported_rows(tmp_path / "export")] == [
        [f"images/fb{other}.png", "dog"],
        [f"images/fb{second}.png", "cat|person"],
    ]

    queue.ack("night-2", [second])
    assert [item.id for item in export_feedback(queue, [], tmp_path / "export")] == [other, second], "every later night too"
    assert queue.list_items()[-1].id == first and queue.list_items()[-1].state == "consumed", "history is kept"


def test_validation_keeps_the_newest_feedback_row_of_an_image(tmp_path):
    """The export is one row per image now, but a folder written before (or by hand) may hold twins."""
    (tmp_path / "export" / "images").mkdir(parents=True)
    for path in (tmp_path / "x.png", tmp_path / "export" / "images" / "fb1.png", tmp_path / "export" / "images" / "fb2.png"):
        path.write_bytes(png("x"))
    (tmp_path / "export" / "labels.csv").write_text("filename,labels,split\nimages/fb1.png,cat,train\nimages/fb2.png,dog,train\n")
    source = SourceData([Record("x", str(tmp_path / "x.png"), ["person"], "train", "csv"), *feedback_records(tmp_path / "export")], CLASSES)
    result = validate(source, ValidateParams())
    assert result.manifest[["image_id", "labels"]].to_dict("records") == [{"image_id": "feedback-fb2", "labels": ["dog"]}]
    assert dict(zip(result.quarantine["image_id"], result.quarantine["reason"])) == {"x": SUPERSEDED, "feedback-fb1": SUPERSEDED}
    assert result.report["invalid_fraction"] == 0


# -- bad feedback is set aside once ------------------------------------------------------------


def test_claimed_items_validation_would_quarantine_are_rejected_with_its_reason(tmp_path):
    queue = make_queue(tmp_path)
    good = queue.add(png("good"), ["cat"]).id
    unlabeled = queue.add(png("unlabeled"), []).id  # what the API accepted before it checked min_labels
    unknown = queue.add(png("unknown"), ["unicorn"]).id
    tiny = queue.add(encode(solid("tiny", (4, 4)), "PNG"), ["dog"]).id
    older = queue.add(png("twice"), ["dog"]).id
    newer = queue.add(png("twice"), ["person"]).id
    queue.claim("night-1")

    reasons = reject_invalid(queue, "night-1", CLASSES, ValidateParams())
    assert {item_id: reason.split(":")[0] for item_id, reason in reasons.items()} == {
        unlabeled: "no_labels",
        unknown: "unknown_class",
        tiny: "too_small",
        older: SUPERSEDED,
    }
    assert {item.id: item.reason for item in queue.list_items("rejected")} == reasons
    assert [item.id for item in queue.claimed("night-1")] == [good, newer], "the run goes on with the rest"

    export_feedback(queue, queue.claimed("night-1"), tmp_path / "export")
    result = validate(SourceData(feedback_records(tmp_path / "export"), CLASSES), ValidateParams())
    assert result.report["invalid_fraction"] == 0 and len(result.manifest) == 2, "the validation stage sees only good feedback"
    queue.release("night-1")
    assert [item.id for item in queue.claim("night-2")] == [good, newer], "rejected once, never claimed again"


# -- leases live as long as the run ------------------------------------------------------------


def test_a_run_keeps_its_claims_past_the_lease_while_it_lives_and_loses_them_after(tmp_path):
    lease = 1.5
    run = make_queue(tmp_path, lease_seconds=lease)
    rival = make_queue(tmp_path, lease_seconds=lease)  # the same file: another process's view
    ids = [run.add(png(f"item{n}"), ["cat"]).id for n in range(3)]
    run.claim("long-night")
    with leases_renewed(run, "long-night"):
        time.sleep(2.5 * lease)
        assert rival.claim("next-night") == [], "a living run's items are not claimed again"
        assert rival.release_expired() == 0
    assert run.ack("long-night", ids[:1]) == 1

    time.sleep(lease + 0.2)  # no renewal after the block: the lease runs out
    assert [item.id for item in rival.claim("next-night")] == ids[1:]
    with pytest.raises(ClaimLost, match=rf"items \[{ids[1]}, {ids[2]}\]"):
        run.ack("long-night", ids[1:])


# -- a failed nightly run leaves no trace ------------------------------------------------------


@pytest.fixture(scope="module")
def nightly_stores(tmp_path_factory, prefect_api):
    """The worker's Prefect server and an MLflow registry under a temporary folder, for this module's
    flow runs. The registry holds `with-champion` (a champion whose file only needs to download:
    these runs stop before training) and `no-champion` (registered, no alias)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("nightly-stores")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_HOME", str(root / "prefect"))
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MULTITAG_REGISTRY_LOCK", str(root / "registry.lock"))
        (root / "champion").mkdir()
        (root / "champion" / "model.keras").write_bytes(b"stands in for a model")
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        for name in ("with-champion", "no-champion"):
            client.create_registered_model(name)
        version = client.create_model_version("with-champion", source=str(root / "champion"), tags={"architecture": "small_cnn"})
        client.set_registered_model_alias("with-champion", "champion", version.version)
        with flows_reporting_to(prefect_api):
            yield


def nightly_project(root: Path, model_name: str) -> str:
    """A project whose dataset is 3 rows of missing images (validation fails); returns its params path."""
    data = root / "data" / "own"
    data.mkdir(parents=True)
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (data / "labels.csv").write_text("filename,labels\n" + "".join(f"missing{n}.png,cat\n" for n in range(3)))
    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    settings["data"].update(source="csv", path=str(data))
    settings["registry"]["model_name"] = model_name
    settings["retrain"]["min_feedback"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(settings))
    return str(root / "params.yaml")


@pytest.mark.parametrize(
    ("model_name", "failure", "message"),
    [("no-champion", MissingInputError, "no champion"), ("with-champion", ValidationFailed, "3 of 6 images")],
)
def test_a_failed_nightly_run_leaves_no_export_and_its_items_pending(nightly_stores, tmp_path, monkeypatch, model_name, failure, message):
    """No champion: the run stops before the export. A champion: it exports (validation counts the
    3 corrections: 6 images), then validation fails. Either way the export goes with the claim, or
    the next training run would learn from corrections no run consumed."""
    from flows.nightly_retraining import nightly_retraining

    monkeypatch.chdir(tmp_path)
    params_path = nightly_project(tmp_path, model_name)
    queue = open_queue(load_params(params_path))
    ids = [queue.add(png(f"fix{n}"), ["dog"]).id for n in range(3)]
    before = {item.id: item.updated_at for item in queue.list_items()}

    with pytest.raises(failure, match=message):
        nightly_retraining(params_path=params_path)

    items = queue.list_items()
    assert {item.id: (item.state, item.claimed_by) for item in items} == dict.fromkeys(ids, ("pending", None))
    assert all(item.updated_at > before[item.id] for item in items), "the run claimed them, then gave them back"
    assert feedback_records(Layout().feedback_export) == [], "a failed run leaves no feedback in the training data"


@pytest.mark.parametrize(
    ("error", "tries"),
    [
        (ValidationFailed("3 of 6 images are invalid"), 1),
        (subprocess.CalledProcessError(1, ["multitag", "train"]), 1),  # the stage's own process failed
        (RegistryUnavailableError("the tracking server did not answer"), 3),
        (OSError("the network share went away"), 3),
    ],
    ids=["validation", "stage-subprocess", "registry-unreachable", "io-error"],
)
def test_a_stage_is_tried_again_only_after_a_failure_a_retry_can_fix(nightly_stores, error, tries):
    """The flows' tasks retry twice (tasks/retrying.py), but a failure of the work itself fails the
    same way each time: a failed nightly reports it once, without two more trainings first."""
    from prefect import flow, task

    from tasks.retrying import RETRIED

    attempts: list[int] = []

    @task(**{**RETRIED, "retry_delay_seconds": 0})
    def stage() -> None:
        attempts.append(1)
        raise error

    @flow
    def run() -> None:
        stage()

    with pytest.raises(type(error)):
        run()
    assert len(attempts) == tries


def test_an_export_a_killed_run_left_behind_never_reaches_training(tmp_path, monkeypatch):
    """A SIGKILLed nightly cannot clean up: its export, with the items it had claimed, stays on
    disk. The next validate (a training-pipeline run, `dvc repro`) rebuilds it from consumed
    items only; the run in progress keeps its own."""
    from multitag.feedback.retraining import OWNER_FILE, owning_export
    from multitag.stages import validate_stage

    monkeypatch.chdir(tmp_path)
    params = load_params(REPO / "params.yaml")
    params.data.synthetic.n_images = 40
    params.data.synthetic.image_size = 32
    from multitag.stages import synthesize_stage

    synthesize_stage(params)
    queue = open_queue(params)
    consumed = queue.add(png("learned"), ["circle"]).id
    queue.ack("night-1", [item.id for item in queue.claim("night-1")])
    queue.add(png("claimed by the killed run"), ["star"])
    export = Layout().feedback_export
    export_feedback(queue, queue.claim("killed-run"), export, owner="killed-run")

    with owning_export("killed-run"):  # still running: its export is its training data
        validate_stage(params)
        assert (export / OWNER_FILE).exists() and len(exported_rows(export)) == 2

    validate_stage(params)  # later, in another run: the run that wrote it is gone
    manifest = Layout().validated / "manifest.parquet"
    import pandas as pd

    feedback_ids = sorted(i for i in pd.read_parquet(manifest)["image_id"] if i.startswith("feedback-"))
    assert feedback_ids == [f"feedback-fb{consumed}"], "only what the queue says was learned from"
    assert not (export / OWNER_FILE).exists() and len(exported_rows(export)) == 1
