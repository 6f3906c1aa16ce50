"""Partial labels (issue 13, part 3): a class the user did not touch is unknown, not absent.

The queue stores confirmed-present, confirmed-absent and (by elimination) unknown classes per
correction; the export and the CSV source carry them as an `absent` column; validation and
splitting keep partial rows in train; preprocessing writes manifest.UNKNOWN there; and every loss
make_loss builds, the positive weights, the class prior and the probe ignore those entries.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tensorflow as tf
from corpus import csv_row, encode, solid, write_bytes, write_csv
from queue_shapes import version_1_table
from sqlalchemy import MetaData, create_engine, text

from multitag.config import DataParams, PreprocessParams, TrainParams, ValidateParams
from multitag.data import manifest
from multitag.data.manifest import UNKNOWN, SourceData
from multitag.data.preprocess import load_split, preprocess
from multitag.data.sources import read_source
from multitag.data.validation import validate, write_outputs
from multitag.feedback.queue import MIGRATIONS, FeedbackQueue
from multitag.feedback.retraining import export_feedback, feedback_records
from multitag.modeling import baselines
from multitag.modeling.losses import make_loss, positive_weights
from multitag.modeling.train import read_history, train_architecture

CLASSES = ["cat", "dog", "person"]
KINDS = ["none", "positive_weights", "asymmetric"]
PARTIAL = np.array([[1, UNKNOWN, 0], [UNKNOWN, UNKNOWN, 1], [0, 1, 0]], dtype="float32")
LOGITS = np.array([[2.0, -1.0, 0.5], [-0.5, 3.0, 1.0], [0.2, -0.7, -2.0]], dtype="float32")


def png(name: str) -> bytes:
    return encode(solid(name), "PNG")


def loss_and_gradient(kind: str, y: np.ndarray, logits: np.ndarray) -> tuple[float, np.ndarray]:
    loss = make_loss(kind, np.array([2.0, 3.0, 4.0], dtype="float32"))
    logits = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = tf.reduce_mean(loss(tf.constant(y), logits))
    return float(value), tape.gradient(value, logits).numpy()


# -- the loss mask -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_entries_change_neither_the_loss_nor_its_gradient(kind):
    unknown = PARTIAL == UNKNOWN
    loss, gradient = loss_and_gradient(kind, PARTIAL, LOGITS)
    moved = LOGITS + np.where(unknown, 5.0, 0.0).astype("float32")  # another guess where nobody answered
    assert loss_and_gradient(kind, PARTIAL, moved)[0] == pytest.approx(loss, abs=1e-6)
    assert np.all(gradient[unknown] == 0), "no gradient flows from an unknown entry"
    assert np.all(gradient[~unknown] != 0), "every known entry trains"
    flipped = PARTIAL.copy()
    flipped[0, 0] = 0  # a known answer changed
    assert loss_and_gradient(kind, flipped, LOGITS)[0] != pytest.approx(loss, abs=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_a_known_entry_weighs_what_it_weighs_in_a_fully_labelled_image(kind):
    """Unknown entries count zero, and each known one exactly what it counts when nothing is unknown."""
    unknown = PARTIAL == UNKNOWN
    as_zero, as_one = np.where(unknown, 0, PARTIAL), np.where(unknown, 1, PARTIAL)
    _, full_zero = loss_and_gradient(kind, as_zero, LOGITS)
    _, full_one = loss_and_gradient(kind, as_one, LOGITS)
    _, partial = loss_and_gradient(kind, PARTIAL, LOGITS)
    np.testing.assert_allclose(partial[~unknown], full_zero[~unknown], rtol=1e-6)
    np.testing.assert_allclose(partial[~unknown], full_one[~unknown], rtol=1e-6)


def test_positive_weights_class_prior_and_probe_ignore_unknown_entries():
    y = np.array([[1, 0], [0, UNKNOWN], [0, 1], [UNKNOWN, 0], [1, UNKNOWN], [0, 1]], dtype=np.uint8)
    np.testing.assert_allclose(positive_weights(y), [3 / 2, 2 / 2])  # cat: 2 positives, 3 negatives; dog: 2 and 2
    np.testing.assert_allclose(baselines.class_prior_scores(y, 1), [[2 / 5, 2 / 4]])

    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 4))
    probes = baselines.fit_probe(features, y, c=1.0)
    for k, probe in enumerate(probes):
        known = y[:, k] != UNKNOWN
        alone = baselines.fit_probe(features[known], y[known][:, [k]], c=1.0)[0]
        assert probe.classes_.tolist() == [0, 1], "an unknown row is not a third class"
        np.testing.assert_allclose(probe.coef_, alone.coef_)
    scores = baselines.probe_scores(probes, features)
    assert 0 < baselines.mean_ap(y, scores) <= 1


# -- the queue -----------------------------------------------------------------------------------


def test_absent_is_part_of_a_corrections_identity(tmp_path):
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    full = queue.add(png("a"), ["cat"])
    partial = queue.add(png("a"), ["cat"], absent=["dog"])
    assert not partial.merged and partial.id != full.id, "the same present labels with another absent set is another correction"
    assert queue.add(png("a"), ["cat"], absent=["dog"]).merged
    assert queue.add(png("a"), ["cat"], absent=[]).id not in (full.id, partial.id), "nothing confirmed absent: all else unknown"
    by_id = {item.id: item for item in queue.list_items()}
    assert by_id[full.id].absent is None and by_id[partial.id].absent == ("dog",)
    with pytest.raises(ValueError, match="both present and absent"):
        queue.add(png("b"), ["cat"], absent=["cat"])


@pytest.mark.parametrize("version", [1, 3])
def test_an_older_queue_gains_absent_and_keeps_its_rows_as_full_labellings(queue_db, tmp_path, version):
    """A queue of schema version 1 (no origin, client, held nor absent) or 3 (all but absent), on both engines."""
    images = tmp_path / "images"
    sha = FeedbackQueue(f"sqlite:///{tmp_path / 'scratch.db'}", images).images.store(png("old"))
    engine = create_engine(queue_db)
    metadata = MetaData()
    table = version_1_table(metadata)
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(text("CREATE TABLE multitag_schema (component VARCHAR(64) PRIMARY KEY, version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO multitag_schema VALUES ('feedback', :v)"), {"v": version})
        open_states = "('pending', 'claimed')"
        if version == 3:
            conn.execute(text("ALTER TABLE feedback ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'upload'"))
            conn.execute(text("ALTER TABLE feedback ADD COLUMN client VARCHAR(32)"))
            open_states = "('pending', 'claimed', 'held')"
        conn.execute(text(f"CREATE UNIQUE INDEX feedback_open_once ON feedback (image_sha256, labels) WHERE state IN {open_states}"))
        conn.execute(table.insert().values(image_sha256=sha, labels='["cat"]', received_at=1.0, updated_at=1.0))
    engine.dispose()

    queue = FeedbackQueue(queue_db, images)
    (old,) = queue.list_items()
    assert (old.id, old.labels, old.absent) == (1, ("cat",), None), "an old row was labelled in full"
    assert queue.add(png("old"), ["cat"]).merged, "and is the same correction as a full one sent again"
    assert not queue.add(png("old"), ["cat"], absent=["dog"]).merged
    with queue.database.engine.connect() as conn:
        assert conn.scalar(text("SELECT version FROM multitag_schema WHERE component = 'feedback'")) == len(MIGRATIONS)
    FeedbackQueue(queue_db, images)  # opening again changes nothing
    assert len(queue.list_items()) == 2


# -- the CSV source and validation ---------------------------------------------------------------


def test_the_csv_absent_column_gives_unknown_classes_and_keeps_them_out_of_val(tmp_path):
    rows = [
        csv_row("full.png", ["cat"], "train") + b",*",
        csv_row("partial.png", ["cat"], "train") + b",dog",
        csv_row("nothing_absent.png", ["dog"], "") + b",",
        csv_row("in_val.png", ["cat"], "val") + b",person",
        csv_row("contradiction.png", ["cat"], "train") + b",cat",
    ]
    for name in ("full", "partial", "nothing_absent", "in_val", "contradiction"):
        write_bytes(tmp_path / f"{name}.png", png(name))
    write_csv(tmp_path, rows, CLASSES, header=b"filename,labels,split,absent")
    result = validate(read_source(DataParams(source="csv", path=tmp_path)), ValidateParams(max_invalid_fraction=1.0))
    assert dict(zip(result.manifest["image_id"], result.manifest["unknown"])) == {
        "full": [],
        "partial": ["person"],
        "nothing_absent": ["cat", "person"],
    }
    reasons = dict(zip(result.quarantine["image_id"], result.quarantine["reason"]))
    assert reasons == {"in_val": "partial_labels_outside_train", "row6": "bad_csv_row"}


# -- from the queue to a training step -----------------------------------------------------------


def test_partial_feedback_reaches_training_as_masked_entries_of_train_only(tmp_path):
    dataset = tmp_path / "dataset"
    base = {f"img{i:02d}": [CLASSES[i % 3], *([CLASSES[(i + 1) % 3]] if i % 4 == 0 else [])] for i in range(30)}
    for image_id in base:
        write_bytes(dataset / f"{image_id}.png", png(image_id))
    write_csv(dataset, [csv_row(f"{i}.png", labels) for i, labels in base.items()], CLASSES)

    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    partial = [queue.add(png(f"fb{i}"), ["dog"], absent=["cat"]).id for i in range(6)]  # person: unknown
    full = queue.add(png("fb-full"), ["cat", "person"]).id
    exported = export_feedback(queue, queue.claim("night"), tmp_path / "export")
    assert {item.id for item in exported} == {*partial, full}
    assert "images/fb1.png,dog,train,cat" in (tmp_path / "export" / "labels.csv").read_text(), "partial items train only"

    source = read_source(DataParams(source="csv", path=dataset))
    data = SourceData(source.records + feedback_records(tmp_path / "export"), source.classes)
    paths = write_outputs(validate(data, ValidateParams()), tmp_path / "validated")
    processed = tmp_path / "processed"
    preprocess(paths["manifest"], paths["classes"], processed, PreprocessParams(image_size=16, workers=1), tmp_path / "frozen.json")

    frame = manifest.read(processed / "manifest.parquet")
    rows = frame[frame["split"] == "train"].reset_index(drop=True)
    _, y_train = load_split(processed, "train")
    expected = np.zeros_like(y_train, dtype=bool)
    for row in rows.itertuples():
        if row.image_id in {f"feedback-fb{i}" for i in partial}:
            expected[row.Index, CLASSES.index("person")] = True
    assert expected.sum() == len(partial), "every partial correction trains"
    np.testing.assert_array_equal(y_train == UNKNOWN, expected)
    for split in ("val", "test"):
        assert not (load_split(processed, split)[1] == UNKNOWN).any()

    params = TrainParams(
        batch_size=8,
        small_cnn_epochs=1,
        class_weighting="positive_weights",
        dense_units=[],
        augment=False,
        flip_average=False,
        probe_ensemble=False,
        network_weight=1.0,
    )
    train_architecture("small_cnn", processed, tmp_path / "model", params)
    (loss,) = read_history(tmp_path / "model")["fine_tune_loss"]
    assert np.isfinite(loss) and 0 < loss < 10, "unknown entries never reach the loss as a 255 target"


# -- the API -------------------------------------------------------------------------------------


def test_the_api_takes_absent_classes_and_refuses_a_class_both_present_and_absent(registry_env, serve_params, live_server, tmp_path):
    server = live_server(serve_params(registry_env.name))
    image = ("p.png", png("api"), "image/png")
    accepted = httpx.post(f"{server.url}/feedback", data={"labels": "cat", "absent": "dog"}, files={"file": image})
    assert accepted.status_code == 202, accepted.text
    legacy = httpx.post(f"{server.url}/feedback", data={"labels": "cat"}, files={"file": image})
    assert legacy.status_code == 202 and legacy.json()["id"] != accepted.json()["id"]
    both = httpx.post(f"{server.url}/feedback", data={"labels": "cat|dog", "absent": '["dog"]'}, files={"file": image})
    assert both.status_code == 422 and both.json()["detail"]["reason"] == "present_and_absent", both.text
    unknown = httpx.post(f"{server.url}/feedback", data={"labels": "cat", "absent": "yeti"}, files={"file": image})
    assert unknown.status_code == 422 and unknown.json()["detail"]["reason"] == "unknown_classes"

    queue = FeedbackQueue(tmp_path / "feedback" / "queue.db", tmp_path / "feedback" / "images", task=registry_env.name)  # the served task
    assert {item.id: item.absent for item in queue.list_items()} == {accepted.json()["id"]: ("dog",), legacy.json()["id"]: None}


def test_feedback_list_shows_what_each_correction_confirms_absent(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from multitag.cli import app

    monkeypatch.setenv("COLUMNS", "250")
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump({"feedback": {"db_path": str(tmp_path / "queue.db"), "images_dir": str(tmp_path / "images")}}))
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images", task="multitag")  # the task these params name
    queue.add(png("listed-full"), ["cat"])
    queue.add(png("listed-partial"), ["cat"], absent=["dog", "person"])
    listed = CliRunner().invoke(app, ["feedback", "list", "--params", str(params_path)])
    assert listed.exit_code == 0 and "absent" in listed.output, listed.output
    assert "dog|person" in listed.output and "(all others)" in listed.output, listed.output


def test_feedback_list_shows_a_senders_text_as_text_not_markup(tmp_path, monkeypatch):
    """`model_version` is free text any client sends with /feedback: "[/bold]" once crashed the list."""
    import yaml
    from typer.testing import CliRunner

    from multitag.cli import app

    monkeypatch.setenv("COLUMNS", "250")
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump({"feedback": {"db_path": str(tmp_path / "queue.db"), "images_dir": str(tmp_path / "images")}}))
    FeedbackQueue(tmp_path / "queue.db", tmp_path / "images", task="multitag").add(png("hostile"), ["cat"], model_version="[/bold]")
    listed = CliRunner().invoke(app, ["feedback", "list", "--params", str(params_path)])
    assert listed.exit_code == 0 and "[/bold]" in listed.output, listed.output


def test_the_screen_holds_a_partial_correction_only_for_what_it_says(tmp_path):
    """An unknown class is no claim: the screen does not hold a correction for a class its sender left alone."""
    from multitag.config import RetrainParams
    from multitag.feedback.screen import screen_queue

    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    full = queue.add(png("screen-full"), ["dog"]).id  # says: no person
    partial = queue.add(png("screen-partial"), ["dog"], absent=["cat"]).id  # person unknown
    wrong = queue.add(png("screen-wrong"), ["dog"], absent=["person"]).id  # says: no person

    def champion(paths):
        return {sha: {"cat": 0.01, "dog": 0.6, "person": 0.99} for sha in paths}

    held = screen_queue(queue, CLASSES, RetrainParams(screen_min_batch=50, screen_confidence=0.9), None, "m", champion)
    assert set(held) == {full, wrong} and partial not in held
    assert "'person' missing but the model scored it 0.99" in held[wrong]


def test_an_import_reads_the_absent_column(tmp_path):
    from multitag.feedback.importer import import_dir

    folder = tmp_path / "upload"
    for name in ("a", "b"):
        write_bytes(folder / f"{name}.png", png(f"import-{name}"))
    write_csv(
        folder, [csv_row("a.png", ["cat"], "") + b",dog", csv_row("b.png", ["dog"], "") + b",*"], header=b"filename,labels,split,absent"
    )
    queue = FeedbackQueue(tmp_path / "queue.db", tmp_path / "images")
    report = import_dir(queue, folder)
    assert not report.errors and len(report.added) == 2
    assert sorted((item.labels, item.absent) for item in queue.list_items()) == [(("cat",), ("dog",)), (("dog",), None)]
