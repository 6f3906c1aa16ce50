"""Corrections belong to their task (issue 21): every item records the registered model it corrects,
and each task's pending count, claim, screen, review list, export and validation see only its own,
through a dataset switch too. Old rows stay, unassigned, until an admin adopts them. A validation
that fails says where each bad item came from, `multitag data describe` shows its quarantine, and
a failed `multitag pipeline` run leaves params.yaml as it was.

Real SQLite (and PostgreSQL where installed) queues, real validation stages on tiny PNG folders."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from corpus import encode, solid
from queue_shapes import version_1_table
from sqlalchemy import MetaData, create_engine, text
from typer.testing import CliRunner

from multitag.cli import app
from multitag.config import Params, RetrainParams, load_params
from multitag.data.validation import ValidationFailed
from multitag.feedback import review
from multitag.feedback.predictions import Answer, PredictionLog
from multitag.feedback.queue import MIGRATIONS, FeedbackQueue, OpenInAnotherTask
from multitag.feedback.retraining import TASK_FILE, export_feedback, export_task, open_queue
from multitag.feedback.screen import screen_queue
from multitag.layout import Layout
from multitag.stages import validate_stage

PETS, VEHICLES = ["cat", "dog"], ["bus", "car"]


def png(name: str) -> bytes:
    return encode(solid(name), "PNG")


def tasks_on(queue_db: str, images: Path) -> tuple[FeedbackQueue, FeedbackQueue]:
    pets = FeedbackQueue(queue_db, images, task="pets")
    return pets, pets.for_task("vehicles")


def dataset(root: Path, classes: list[str], n: int = 8) -> Path:
    """A csv-folder dataset of `n` one-colour photos labelled in turn with each of `classes`."""
    root.mkdir(parents=True)
    rows = ["filename,labels"]
    for i in range(n):
        (root / f"{root.name}{i}.png").write_bytes(png(f"{root.name}-{i}"))
        rows.append(f"{root.name}{i}.png,{classes[i % len(classes)]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def params_for(path: Path, **validate: object) -> Params:
    return Params.model_validate({"data": {"source": "csv", "path": str(path)}, "validate": validate})


def consume(queue: FeedbackQueue, corrections: dict[str, list[str]]) -> list[int]:
    """Queue the corrections (image name -> labels) and let a nightly run consume them; their ids."""
    ids = [queue.add(png(name), labels).id for name, labels in corrections.items()]
    run = f"night-{time.time_ns()}"
    queue.ack(run, [item.id for item in queue.claim(run)])
    return ids


def feedback_rows(layout: Layout, table: str = "manifest") -> list[str]:
    frame = pd.read_parquet(layout.validated / f"{table}.parquet")
    return sorted(image_id for image_id in frame["image_id"] if image_id.startswith("feedback-"))


# -- the queue keeps tasks apart ------------------------------------------------------------------


def test_each_task_counts_claims_exports_and_rejects_only_its_own_corrections(queue_db, tmp_path):
    pets, vehicles = tasks_on(queue_db, tmp_path / "images")
    cat = pets.add(png("a"), ["cat"]).id
    dog = pets.add(png("b"), ["dog"]).id
    bus = vehicles.add(png("c"), ["bus"]).id
    car = vehicles.add(png("a"), ["car"]).id  # the same photo, corrected for the other task

    assert (pets.pending_count(), vehicles.pending_count()) == (2, 2)
    assert {item.id: item.task for item in pets.list_items()} == {cat: "pets", dog: "pets"}
    assert (pets.stats()["pending"], pets.stats()["pending_labels"]) == (2, {"cat": 1, "dog": 1})
    sha_a = pets.list_items()[-1].image_sha256
    assert pets.named_images([sha_a]) == {sha_a} and set(pets.corrections([sha_a])[sha_a].labels) == {"cat"}
    assert set(vehicles.corrections([sha_a])[sha_a].labels) == {"car"}, "each task's truth of the same photo is its own"
    assert pets.reject([bus], "not mine") == 0 and pets.hold({car: "not mine"}) == 0, "another task's items are out of reach"

    assert sorted(item.id for item in pets.claim("pets-night")) == [cat, dog]
    assert vehicles.claim("vehicles-night", limit=0) == [] and vehicles.pending_count() == 2
    exported = export_feedback(pets, pets.claimed("pets-night"), tmp_path / "export", owner="pets-night")
    assert [item.id for item in exported] == [cat, dog] and export_task(tmp_path / "export") == "pets"
    assert vehicles.ack("vehicles-night", []) == 0 and pets.ack("pets-night", [cat, dog]) == 2
    assert [item.id for item in export_feedback(vehicles, [], tmp_path / "export")] == []
    assert json.loads((tmp_path / "export" / TASK_FILE).read_text()) == {"task": "vehicles"}, "an empty export still names its task"

    assert vehicles.reject_leaked({sha_a}) == [car], "leakage into one task's test split rejects that task's items"
    assert pets.requeue(state="consumed") == 2 and vehicles.stats()["pending"] == 1


def test_one_open_correction_per_image_and_labels_holds_across_tasks(queue_db, tmp_path):
    """The unique index replicas of the previous version name in their ON CONFLICT is kept as it
    was, so the very same correction cannot be open in two tasks at once: it says so, not merges."""
    pets, vehicles = tasks_on(queue_db, tmp_path / "images")
    first = pets.add(png("a"), ["dog"]).id
    assert pets.add(png("a"), ["dog"]).merged
    with pytest.raises(OpenInAnotherTask, match=f"open in task pets \\(item {first}\\)"):
        vehicles.add(png("a"), ["dog"])
    pets.reject([first], "wrong task")
    assert not vehicles.add(png("a"), ["dog"]).merged, "once decided, the other task may have it"
    old = pets.for_task(None).add(png("b"), ["cat"]).id
    with pytest.raises(OpenInAnotherTask, match=f"open in no task \\(item {old}\\): `multitag feedback adopt {old}`"):
        pets.add(png("b"), ["cat"])
    pets.adopt([old])
    assert pets.add(png("b"), ["cat"]).merged


def test_the_screen_and_the_review_list_see_only_their_tasks_corrections(queue_db, tmp_path):
    pets, vehicles = tasks_on(queue_db, tmp_path / "images")
    pets.add(png("pet"), ["cat"])
    vehicles.add(png("vehicle"), ["car"])
    vehicles.add(png("both"), ["bus"])
    scored: list[str] = []

    def scorer(paths):
        scored.extend(paths)
        return {}

    screen_queue(pets, PETS, RetrainParams(), model_name="pets", score_images=scorer)
    assert scored == [pets.list_items()[0].image_sha256], "the screen's input is the task's pending corrections"

    log = PredictionLog(pets.database, 3600)
    sha = {name: pets.images.store(png(name)) for name in ("pet", "both")}
    for name in sha:
        log.record("pets", "1", [Answer(sha[name], ["cat"], {"cat": 0.55, "dog": 0.5})])
    items = review.suggest(log, pets, "pets", "1", {"cat": 0.5, "dog": 0.5}, n=10, max_age_s=3600)
    assert [item.image_sha256 for item in items] == [sha["both"]], "labelled for pets: not asked again; for vehicles only: still asked"


# -- old rows: kept, unassigned, adopted; a replica on the previous version keeps working --------


def test_a_version_4_queue_keeps_its_rows_unassigned_until_adopted(queue_db, tmp_path):
    images = tmp_path / "images"
    sha = FeedbackQueue(f"sqlite:///{tmp_path / 'scratch.db'}", images).images.store(png("old"))
    engine = create_engine(queue_db)
    metadata = MetaData()
    table = version_1_table(metadata)
    open_states = "state IN ('pending', 'claimed', 'held')"
    previous_insert = text(  # what a replica of the previous version runs for every correction
        "INSERT INTO feedback (image_sha256, labels, received_at, updated_at, state, origin, absent) "
        "VALUES (:sha, :labels, 1.0, 1.0, 'pending', 'upload', 'null') "
        f"ON CONFLICT (image_sha256, labels, absent) WHERE {open_states} DO NOTHING"
    )
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(text("CREATE TABLE multitag_schema (component VARCHAR(64) PRIMARY KEY, version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO multitag_schema VALUES ('feedback', 4)"))
        conn.execute(text("ALTER TABLE feedback ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'upload'"))
        conn.execute(text("ALTER TABLE feedback ADD COLUMN client VARCHAR(32)"))
        conn.execute(text("ALTER TABLE feedback ADD COLUMN absent TEXT NOT NULL DEFAULT 'null'"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE feedback DROP CONSTRAINT feedback_state"))
            conn.execute(
                text(
                    "ALTER TABLE feedback ADD CONSTRAINT feedback_state CHECK (state IN ('pending', 'claimed', 'consumed', 'rejected', 'held'))"
                )
            )
        conn.execute(text(f"CREATE UNIQUE INDEX feedback_open_once ON feedback (image_sha256, labels, absent) WHERE {open_states}"))
        conn.execute(table.insert().values(image_sha256=sha, labels='["cat"]', received_at=1.0, updated_at=1.0))
        conn.execute(table.insert().values(image_sha256=sha, labels='["dog"]', received_at=1.0, updated_at=1.0, state="consumed"))

    pets = FeedbackQueue(queue_db, images, task="pets")
    with pets.database.engine.connect() as conn:
        assert conn.scalar(text("SELECT version FROM multitag_schema WHERE component = 'feedback'")) == len(MIGRATIONS)
    unassigned = pets.for_task(None)
    assert [(item.id, item.labels, item.state, item.task) for item in unassigned.list_items()] == [
        (2, ("dog",), "consumed", None),
        (1, ("cat",), "pending", None),
    ], "old rows are kept, and belong to no task"
    assert pets.pending_count() == 0 and pets.claim("pets-night") == [] and pets.unassigned_count() == 2

    with engine.begin() as conn:  # a replica still on the previous version, during a rolling upgrade
        conn.execute(previous_insert, {"sha": sha, "labels": '["person"]'})
        conn.execute(previous_insert, {"sha": sha, "labels": '["person"]'})  # its ON CONFLICT still finds the index
    engine.dispose()
    assert [item.labels for item in unassigned.list_items("pending")] == [("person",), ("cat",)], "its rows are unassigned too"

    assert pets.adopt([1]) == 1 and pets.for_task("vehicles").adopt([1]) == 0, "adopted once, by one task"
    assert [item.id for item in pets.claim("pets-night")] == [1]
    assert pets.adopt() == 2 and pets.unassigned_count() == 0
    assert {item.labels: item.state for item in pets.list_items()} == {("cat",): "claimed", ("dog",): "consumed", ("person",): "pending"}
    FeedbackQueue(queue_db, images, task="pets")  # opening again changes nothing
    assert len(pets.list_items()) == 3


def test_feedback_list_shows_the_unassigned_items_and_adopt_gives_them_to_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"data: {{source: csv, path: {tmp_path / 'pets'}}}\n")
    queue = open_queue(load_params(tmp_path / "params.yaml"))
    queue.for_task(None).add(png("old"), ["cat"])
    queue.add(png("new"), ["dog"])
    runner = CliRunner()
    listed = runner.invoke(app, ["feedback", "list"])
    assert listed.exit_code == 0 and "dog" in listed.output and "cat" not in listed.output.split("item(s)")[0]
    assert "1 item(s) belong to no task" in " ".join(listed.output.split())
    assert "cat" in runner.invoke(app, ["feedback", "list", "--unassigned"]).output
    adopted = runner.invoke(app, ["feedback", "adopt"])
    assert adopted.exit_code == 0 and "1 items now belong to pets" in adopted.output
    assert queue.pending_count() == 2


# -- a dataset switch never mixes them ------------------------------------------------------------


def test_switching_datasets_trains_each_task_on_its_own_corrections_only(tmp_path):
    """The incident: corrections of one dataset exported into the next dataset's validation."""
    layout = Layout(root=tmp_path / "work")
    pets_params, vehicles_params = params_for(dataset(tmp_path / "pets", PETS)), params_for(dataset(tmp_path / "vehicles", VEHICLES))
    pets, vehicles = open_queue(pets_params, layout.root), open_queue(vehicles_params, layout.root)
    assert (pets.task, vehicles.task) == ("pets", "vehicles"), "the task is the registered model params resolve"
    (pet_fix,) = consume(pets, {"pet-fix": ["dog"]})
    (bus_fix,) = consume(vehicles, {"bus-fix": ["bus"]})
    export_feedback(pets, [], layout.feedback_export)  # the pets task's last nightly run exported its corrections

    validate_stage(vehicles_params, layout)
    assert feedback_rows(layout) == [f"feedback-fb{bus_fix}"] and feedback_rows(layout, "quarantine") == []
    assert export_task(layout.feedback_export) == "vehicles"

    validate_stage(pets_params, layout)
    assert feedback_rows(layout) == [f"feedback-fb{pet_fix}"], "and back: the pets task gets its own again"


def test_an_export_that_names_no_task_is_rebuilt_for_the_task_in_params(tmp_path):
    """An export written before exports named their task cannot be trusted to be this task's."""
    layout = Layout(root=tmp_path / "work")
    params = params_for(dataset(tmp_path / "pets", PETS))
    queue = open_queue(params, layout.root)
    consume(queue.for_task(None), {"whose": ["unicorn"]})
    export_feedback(queue.for_task(None), [], layout.feedback_export)
    assert (layout.feedback_export / "labels.csv").exists()
    validate_stage(params, layout)
    assert feedback_rows(layout) == [] and export_task(layout.feedback_export) == "pets"


# -- a failed validation says where its bad items came from; describe shows them ------------------


def test_a_failed_validation_names_the_feedback_export_as_the_source_of_its_bad_items(tmp_path, monkeypatch):
    layout = Layout(root=tmp_path / "work")
    params = params_for(dataset(tmp_path / "pets", PETS), max_invalid_fraction=0.1)
    (tmp_path / "pets" / "labels.csv").open("a").write("missing.png,cat\n")
    queue = open_queue(params, layout.root)
    consume(queue, {f"odd-{i}": ["unicorn"] for i in range(3)})
    export_feedback(queue, [], layout.feedback_export)
    validate_stage(
        params_for(tmp_path / "pets", max_invalid_fraction=0.5), layout
    )  # a good run first: its manifest must not outlive the failure
    assert (layout.validated / "manifest.parquet").exists()

    with pytest.raises(ValidationFailed) as failure:
        validate_stage(params, layout)
    message = str(failure.value)
    assert "4 of 12 images" in message
    assert "By origin: dataset (csv): 1 (missing_file: 1); feedback export: 3 (unknown_class: 3)" in message
    assert not (layout.validated / "manifest.parquet").exists(), "no manifest from a failed run, not even the last one"

    monkeypatch.chdir(layout.root)
    described = CliRunner().invoke(app, ["data", "describe"])
    output = " ".join(described.output.split())
    assert described.exit_code == 0, described.output
    assert "The last validation failed" in output and "feedback export: 3 (unknown_class: 3)" in output
    for image_id in feedback_rows(layout, "quarantine"):
        assert f"{image_id} feedback export unknown_class" in output
    assert "missing dataset (csv) missing_file" in output


# -- a failed pipeline run leaves params.yaml as it was -------------------------------------------


def test_a_pipeline_run_that_fails_validation_leaves_params_yaml_as_it_was(tmp_path, monkeypatch):
    import flows.training_pipeline

    monkeypatch.chdir(tmp_path)
    dataset(tmp_path / "pets", PETS)
    broken = dataset(tmp_path / "broken", VEHICLES)
    for image in broken.glob("*.png"):
        image.unlink()
    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text(
        f"# my project\ndata:\n  source: csv  # photos\n  path: {tmp_path / 'pets'}\nregistry:\n  model_name: auto  # one per dataset\ntrain:\n  batch_size: 8  # small\n"
    )
    before = params_yaml.read_text()
    seen: list[str] = []

    def pipeline_that_validates(params_path: str) -> dict:  # the flow's first stage, without a Prefect server
        seen.append(load_params(params_path).registry.model_name)
        validate_stage(load_params(params_path))
        raise AssertionError("validation should have failed")

    monkeypatch.setattr(flows.training_pipeline, "training_pipeline", pipeline_that_validates)
    result = CliRunner().invoke(app, ["pipeline", "--source", "csv", "--path", str(broken)])
    assert result.exit_code == 1 and "ValidationFailed" in result.output
    assert seen == ["broken"], "the run itself saw the new dataset"
    assert params_yaml.read_text() == before
    assert "params.yaml is back as it was before it" in " ".join(result.output.split())


# -- the API records the served model's task ------------------------------------------------------


def test_the_api_queues_corrections_for_the_served_model_and_counts_only_those(registry_env, live_server, serve_params):
    params = serve_params(registry_env.name)
    queue = open_queue(params)
    queue.for_task("another-task").add(png("elsewhere"), ["cat"])
    server = live_server(params)
    sent = httpx.post(
        f"{server.url}/feedback", data={"labels": '["dog"]'}, files={"file": ("a.png", png("served"), "image/png")}, timeout=30
    )
    assert sent.status_code == 202, sent.text
    (queued,) = queue.list_items()
    assert (queued.id, queued.task, queued.labels) == (sent.json()["id"], registry_env.name, ("dog",))
    stats = httpx.get(f"{server.url}/feedback/stats", timeout=30).json()
    assert (stats["task"], stats["total"], stats["pending_labels"]) == (registry_env.name, 1, {"dog": 1})
