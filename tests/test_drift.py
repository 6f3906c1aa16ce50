"""Drift you can see (issue 13, part 6): the served version's recent answers against the per-class
positive rates it had on the frozen test split, in GET /drift, and, with retrain.on_drift, an
early retraining when they drift."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import test_browser
from corpus import encode, solid

from multitag.config import Params, RetrainParams
from multitag.feedback.predictions import Answer, PredictionLog
from multitag.feedback.retraining import open_queue
from multitag.lifecycle import drift
from multitag.serving.drift_watch import DriftRetrain

page = test_browser.page  # the headless Chromium page fixture, for the drift panel
CLASSES = ["cat", "dog", "person"]
RATES = {"cat": 0.5, "dog": 0.2, "person": 0.1}  # the reference: share of test images predicted positive
REFERENCE = drift.Reference(RATES, rows=300)


def stream(n: int, rates: dict[str, float], seed: int | None = None) -> list[list[str]]:
    """`n` answers naming each class at `rates`: exactly (seed None) or drawn at random."""
    rng = np.random.default_rng(seed)
    positive = {name: (rng.random(n) < rate) if seed is not None else (np.arange(n) < round(rate * n)) for name, rate in rates.items()}
    return [[name for name in rates if positive[name][i]] for i in range(n)]


def judge(answers: list[list[str]], reference: drift.Reference | None = REFERENCE, min_predictions: int = 50) -> drift.DriftReport:
    return drift.compare(reference, answers, CLASSES, min_predictions, alpha=0.01)


# --- the statistics -------------------------------------------------------------------------


def test_a_shifted_stream_drifts_on_the_shifted_class_only():
    report = judge(stream(500, {**RATES, "dog": 0.4}))
    assert report.status == "drift" and report.drifted_classes == ["dog"]
    dog = next(c for c in report.classes if c.name == "dog")
    assert (dog.live_rate, dog.reference_rate, dog.live_positives, dog.reference_positives) == (0.4, 0.2, 200, 60)
    assert dog.adjusted_p_value < 0.01 and "dog 20.0% -> 40.0%" in report.message


def test_an_unshifted_stream_of_the_same_size_does_not_drift():
    for answers in (stream(500, RATES), stream(500, RATES, seed=0)):
        report = judge(answers)
        assert report.status == "no_drift" and report.drifted_classes == [], report.message
        assert [c.name for c in report.classes] == CLASSES and all(c.adjusted_p_value > 0.01 for c in report.classes)


def test_false_alarms_stay_below_alpha_across_classes_and_real_shifts_are_found():
    """Holm keeps the chance of any false alarm (over all classes) at alpha: random unshifted
    windows almost never alarm, while a class predicted 2.5 times as often is found almost every time."""
    false_alarms = sum(judge(stream(500, RATES, seed=seed)).status == "drift" for seed in range(60))
    found = sum(judge(stream(500, {**RATES, "person": 0.25}, seed=seed)).drifted_classes == ["person"] for seed in range(20))
    assert false_alarms <= 2, f"{false_alarms} of 60 unshifted windows raised drift at alpha 0.01"
    assert found >= 18, f"the shifted class was found in only {found} of 20 windows"


def test_too_few_answers_is_not_enough_data_not_a_verdict():
    report = judge(stream(49, {**RATES, "dog": 1.0}))
    assert report.status == "not_enough_data" and report.drifted_classes == []
    assert "49 answer(s)" in report.message and "50 needed" in report.message
    assert next(c for c in report.classes if c.name == "dog").live_rate == 1.0, "the rates are shown, without a verdict"


def test_no_reference_says_how_to_get_one():
    report = judge(stream(500, RATES), reference=None)
    assert report.status == "no_reference" and report.classes == [] and "multitag pipeline" in report.message


def test_holm_adjusts_step_down_and_keeps_the_order():
    assert drift.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def test_the_reference_counts_a_score_at_its_threshold_as_predicted():
    scores = np.array([[0.5, 0.1], [0.49, 0.9], [0.7, 0.2], [0.1, 0.3]])
    reference = drift.reference_from_scores(scores, [0.5, 0.3], ["cat", "dog"])
    assert reference == drift.Reference({"cat": 0.5, "dog": 0.5}, rows=4)
    assert drift.Reference.from_metadata({drift.METADATA_KEY: reference.as_metadata()}) == reference
    assert drift.Reference.from_metadata({"classes": ["cat"]}) is None, "a model logged before references existed"


# --- early retraining -------------------------------------------------------------------------


class Fakes:
    def __init__(self, status: str = "drift", pending: int = 10):
        self.status, self.pending_items, self.now, self.started = status, pending, 0.0, []

    def retrain(self) -> DriftRetrain:
        report = lambda: drift.DriftReport(self.status, "dog drifted", 500, 300, [])  # noqa: E731
        trigger = lambda: self.started.append(self.now) or {"via": "test"}  # noqa: E731
        params = RetrainParams(on_drift=True, min_feedback=10, drift_cooldown_hours=1)
        return DriftRetrain(report, lambda: self.pending_items, trigger, params, clock=lambda: self.now)


def test_drift_starts_the_retraining_once_per_cooldown_and_only_with_work_to_do(caplog):
    fakes = Fakes(pending=3)
    retrain = fakes.retrain()
    assert retrain.run() is None and fakes.started == [], "3 corrections pending, 10 needed: the flow would do nothing"
    assert "correct some recent images" in caplog.text
    fakes.pending_items = 10
    assert retrain.run() == {"via": "test"} and fakes.started == [0.0]
    fakes.now = 3599.0
    assert retrain.run() is None, "within the cool-down: drift stays until a new champion serves"
    fakes.now = 3600.0
    assert retrain.run() == {"via": "test"} and fakes.started == [0.0, 3600.0]


def test_no_drift_or_no_verdict_never_starts_the_retraining():
    for status in ("no_drift", "not_enough_data", "no_reference", "no_log"):
        fakes = Fakes(status=status)
        assert fakes.retrain().run() is None and fakes.started == [], status


# --- registration and the live API -------------------------------------------------------------


@pytest.fixture(scope="module")
def referenced_champion(tiny_champion, tmp_path_factory):
    """A version logged through the evaluate stage's metadata (tracking.model_metadata), so it
    carries the drift reference every newly registered model has: RATES on 300 test images."""
    import keras
    import mlflow

    from multitag.lifecycle import registry, tracking
    from multitag.modeling import models
    from multitag.modeling.evaluate import Evaluation

    thresholds = [0.5, 0.5, 0.5]
    scores = np.array([[0.9 if name in labels else 0.1 for name in CLASSES] for labels in stream(300, RATES)])
    evaluation = Evaluation("small_cnn", CLASSES, thresholds, [], {}, {}, 1.0, 1.0, np.zeros_like(scores), scores, scores)
    name = f"drift-{time.time_ns()}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tiny_champion.env.items():
            patch.setenv(key, value)
        patch.chdir(tmp_path_factory.mktemp("drift-model"))
        keras.utils.set_random_seed(0)
        features = models.build_feature_extractor("small_cnn", tiny_champion.input_size, None)
        model = models.with_sigmoid(models.assemble(features, models.build_head(features.output_shape[-1], len(CLASSES), [], 0.0)))
        tracking.configure()
        with mlflow.start_run(run_name="drift-reference") as run:
            batch = np.zeros((1, tiny_champion.input_size, tiny_champion.input_size, 3), dtype="float32")
            metadata = tracking.model_metadata(evaluation, tiny_champion.input_size, "stretch")
            model_uri = tracking.log_keras_model(model, batch, metadata).format(run_id=run.info.run_id)
        version = registry.register(model_uri, name, {"architecture": "small_cnn"})
        registry.promote(name, version)
    return name, version


def test_a_registered_model_carries_its_reference_and_the_predictor_reads_it_back(referenced_champion, registry_env):
    from multitag.lifecycle.predictor import Predictor

    name, version = referenced_champion
    assert Predictor.from_uri(f"models:/{name}/{version}", "keras").drift_reference == REFERENCE
    assert Predictor.from_uri(registry_env.model_uri, "keras").drift_reference is None, "the tiny champion predates references"


def log_answers(params: Params, name: str, version: str, answers: list[list[str]]) -> None:
    """Answers as /predict logs them (a fake hash per image), in one request's insert."""
    rows = [Answer(f"{i:064x}", labels, {c: float(c in labels) for c in CLASSES}) for i, labels in enumerate(answers)]
    PredictionLog(open_queue(params).database, 3600).record(name, version, rows)


def predict(url: str, *names: str) -> httpx.Response:
    files = [("files", (f"{n}.png", encode(solid(n, (24, 20)), "PNG"), "image/png")) for n in names]
    return httpx.post(f"{url}/predict", files=files, timeout=30)


def test_get_drift_judges_the_served_versions_last_answers(referenced_champion, registry_env, live_server, serve_params):
    name, version = referenced_champion
    params = serve_params(name, drift_window=200, drift_min_predictions=50)
    server = live_server(params)
    assert predict(server.url, "first", "second").status_code == 200
    early = httpx.get(f"{server.url}/drift").json()
    assert (early["status"], early["predictions"], early["model_version"]) == ("not_enough_data", 2, version), early

    log_answers(params, name, version, stream(200, RATES))
    log_answers(params, name, "0", stream(200, {"cat": 1.0, "dog": 1.0, "person": 1.0}))  # another version's answers never count
    calm = httpx.get(f"{server.url}/drift").json()
    assert (calm["status"], calm["predictions"], calm["drifted_classes"], calm["reference_rows"]) == ("no_drift", 200, [], 300), calm

    log_answers(params, name, version, stream(200, {**RATES, "person": 0.35}))  # the window now holds only these
    shifted = httpx.get(f"{server.url}/drift").json()
    assert (shifted["status"], shifted["drifted_classes"], shifted["window"]) == ("drift", ["person"], 200), shifted
    person = next(c for c in shifted["classes"] if c["name"] == "person")
    assert (person["live_rate"], person["reference_rate"], person["drifted"]) == (0.35, 0.1, True)
    assert shifted["test"] == "fisher_exact" and shifted["correction"] == "holm"


def test_get_drift_without_a_reference_or_a_log_says_what_to_do(registry_env, live_server, serve_params):
    body = httpx.get(f"{live_server(serve_params(registry_env.name)).url}/drift").json()
    assert body["status"] == "no_reference" and "multitag pipeline" in body["message"] and body["classes"] == []
    unlogged = httpx.get(f"{live_server(serve_params(registry_env.name, prediction_log_hours=0)).url}/drift").json()
    assert unlogged["status"] == "no_log" and "serve.prediction_log_hours" in unlogged["message"]


def test_the_sweep_starts_the_retraining_early_on_a_drifted_stream(referenced_champion, registry_env, live_server, serve_params):
    name, version = referenced_champion
    params = serve_params(name, drift_window=100, drift_min_predictions=50, prediction_sweep_interval_s=0.1)
    params.retrain = RetrainParams(on_drift=True, min_feedback=1)
    started: list[float] = []
    live_server(params, retrain_trigger=lambda: started.append(time.time()) or {"via": "test"})
    log_answers(params, name, version, stream(100, RATES))
    open_queue(params).add(encode(solid("correction", (24, 20)), "PNG"), ["cat"])
    time.sleep(0.6)
    assert started == [], "an unshifted stream starts nothing"
    log_answers(params, name, version, stream(100, {**RATES, "cat": 0.9}))
    deadline = time.monotonic() + 10
    while not started and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # several more sweeps, all inside the cool-down
    assert len(started) == 1, f"the drifted stream started {len(started)} retraining run(s), expected exactly 1"


def test_the_cli_says_what_get_drift_says(referenced_champion, registry_env, tmp_path, monkeypatch):
    import json

    import yaml
    from typer.testing import CliRunner

    from multitag.cli import app

    name, version = referenced_champion
    monkeypatch.setenv("COLUMNS", "200")
    params_path = tmp_path / "params.yaml"
    feedback = {"db_path": str(tmp_path / "queue.db"), "images_dir": str(tmp_path / "images")}
    params_path.write_text(yaml.safe_dump({"registry": {"model_name": name}, "feedback": feedback}))
    log_answers(Params.model_validate(yaml.safe_load(params_path.read_text())), name, version, stream(500, {**RATES, "dog": 0.4}))

    as_json = CliRunner().invoke(app, ["feedback", "drift", "--json", "--params", str(params_path)])
    assert as_json.exit_code == 0, as_json.output
    assert (json.loads(as_json.output)["status"], json.loads(as_json.output)["drifted_classes"]) == ("drift", ["dog"])
    table = CliRunner().invoke(app, ["feedback", "drift", "--params", str(params_path)])
    assert table.exit_code == 0 and "DRIFT" in table.output and "dog 20.0% -> 40.0%" in table.output, table.output


@pytest.mark.skipif(
    not test_browser.CHROMIUM.exists(), reason=f"{test_browser.CHROMIUM} missing: run `bash scripts/install_test_deps.sh` as root"
)
def test_the_page_shows_the_drift_panel_with_the_drifted_class_highlighted(
    referenced_champion, registry_env, live_server, serve_params, page, tmp_path
):
    name, version = referenced_champion
    params = serve_params(name, drift_window=200, drift_min_predictions=50)
    server = live_server(params)
    log_answers(params, name, version, stream(200, {**RATES, "person": 0.35}))
    page.goto(server.url)
    page.wait_for_selector("#drift-panel[data-status='drift'][open]")
    assert page.locator("#drift-table tr.drifted").evaluate_all("rows => rows.map((row) => row.dataset.class)") == ["person"]
    assert page.locator("#drift-table tbody tr").count() == 3
    assert "person drifted" in page.locator("#drift-status").inner_text()
    page.screenshot(path=str(tmp_path / "drift-panel.png"), full_page=True)
