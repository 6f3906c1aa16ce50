"""The TFLite export: it covers the whole served graph of every architecture, the gate logs it with
the candidate only when it answers like the Keras model on the frozen test split, and a version
carrying it is served through it (by the Predictor, the smoke test and the API) from any thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from served_graphs import CLASSES, SIZE, labelled_images, log_model, served_model

from multitag.lifecycle import export

TEST_IMAGES = 24


def export_folder(model_uri: str) -> Path:
    from multitag.lifecycle import tracking

    return tracking.download_model(model_uri) / export.EXPORT_DIR


def test_parity_holds_within_the_tolerances_and_fails_beyond_them_or_on_nan():
    _, labels = labelled_images(TEST_IMAGES, seed=2)
    reference = np.random.default_rng(3).uniform(0.01, 0.99, labels.shape)
    close = export.check_parity(labels, reference, reference + export.MAX_SCORE_DIFFERENCE / 2, CLASSES)
    assert close.passed and close.max_score_difference == pytest.approx(export.MAX_SCORE_DIFFERENCE / 2)
    assert not export.check_parity(labels, reference, reference + 2 * export.MAX_SCORE_DIFFERENCE, CLASSES).passed
    reference[:, 1] = 0.5 * labels[:, 1] + 0.4 * reference[:, 1]  # ranks "dog" perfectly: AP 1
    reranked = reference.copy()
    reranked[:, 1] = 1 - reference[:, 1]  # the same scores upside down: dog's AP falls
    moved = export.check_parity(labels, reference, reranked, CLASSES, max_score_difference=1.0)
    assert not moved.passed and moved.worst_class == "dog" and moved.max_ap_difference > export.MAX_AP_DIFFERENCE
    broken = export.check_parity(labels, reference, np.full_like(reference, np.nan), CLASSES)
    assert not broken.passed and "NaN" in broken.error


def test_the_export_of_another_model_fails_parity(tmp_path):
    """The check itself, on a real export that does not match: another initialisation of the same graph."""
    from multitag.lifecycle.tflite import TFLiteModel

    images, labels = labelled_images(TEST_IMAGES, seed=4)
    reference = served_model("small_cnn", seed=0).predict_on_batch(images.astype("float32"))
    other = TFLiteModel(export.to_tflite(served_model("small_cnn", seed=1), tmp_path / "model.tflite")).predict_on_batch(images)
    parity = export.check_parity(labels, reference, other, CLASSES)
    assert not parity.passed and parity.max_score_difference > export.MAX_SCORE_DIFFERENCE


@dataclass(frozen=True)
class Gated:
    """A tiny candidate judged by the real gate and registered with the verdict's tags."""

    name: str
    version: str
    verdict: object
    images: np.ndarray


def write_test_split(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The frozen test split as preprocessing leaves it: uint8 arrays plus the manifest's test photos
    (the smoke test reads a few files)."""
    import pandas as pd
    from PIL import Image

    processed = root / "data" / "processed"
    processed.mkdir(parents=True)
    np.save(processed / "test_x.npy", images)
    np.save(processed / "test_y.npy", labels)
    paths = []
    for index, image in enumerate(images):
        paths.append(str(root / f"test-{index}.png"))
        Image.fromarray(image).save(paths[-1])
    names = [[c for c, on in zip(CLASSES, row) if on] for row in labels]
    hashes = [f"{index:064x}" for index in range(len(images))]
    rows = {"path": paths, "labels": names, "split": "test", "sha256": hashes, "image_id": [f"test-{i}" for i in range(len(images))]}
    pd.DataFrame(rows).to_parquet(processed / "manifest.parquet")


@pytest.fixture(scope="module")
def gated(tiny_champion, tmp_path_factory) -> Gated:
    from multitag.config import GateParams
    from multitag.layout import Layout
    from multitag.lifecycle import gate, registry

    root = tmp_path_factory.mktemp("export-gate")
    images, labels = labelled_images(TEST_IMAGES, seed=5)
    write_test_split(root, images, labels)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in tiny_champion.env.items():
            patch.setenv(key, value)
        model_uri = log_model(served_model("small_cnn", seed=0))
        verdict = gate.judge(model_uri, None, None, GateParams(), "mAP", Layout(root))
        name = f"export-{time.time_ns()}"
        version = registry.register(model_uri, name, verdict.tags())
        registry.promote(name, version)
    return Gated(name, version, verdict, images)


def test_the_gate_logs_a_matching_export_and_the_registered_version_serves_through_it(gated, registry_env):
    from multitag.lifecycle import registry
    from multitag.lifecycle.predictor import Predictor

    parity = gated.verdict.export
    assert parity.passed and parity.images == TEST_IMAGES and parity.max_score_difference <= export.MAX_SCORE_DIFFERENCE
    assert gated.verdict.smoke["ok"] and gated.verdict.smoke["runtime"] == export.RUNTIME, "the fresh process served the export"
    (version,) = [v for v in registry.list_versions(gated.name) if v.version == gated.version]
    assert version.tags["export_parity"] == "passed" and float(version.tags["export_max_score_difference"]) <= export.MAX_SCORE_DIFFERENCE
    folder = export_folder(f"models:/{gated.name}/{gated.version}")
    assert (folder / export.EXPORT_FILE).exists() and json.loads((folder / export.RECORD_FILE).read_text())["passed"] is True

    served = Predictor.from_uri(f"models:/{gated.name}/{gated.version}")
    keras_served = Predictor.from_uri(f"models:/{gated.name}/{gated.version}", runtime="keras")
    assert served.info["runtime"] == export.RUNTIME and keras_served.info["runtime"] == "keras"
    scores = served.predict_arrays(gated.images)
    assert scores.dtype == np.float64 and scores.shape == (TEST_IMAGES, len(CLASSES))
    np.testing.assert_allclose(scores, keras_served.predict_arrays(gated.images), atol=export.MAX_SCORE_DIFFERENCE, rtol=0)
    assert "parity held" in gated.verdict.export.summary()


def test_a_process_that_serves_an_export_never_imports_tensorflow(gated, registry_env):
    """The server and the gate's smoke test load an exported version through LiteRT alone: no 5 s
    TensorFlow import, about 500 MB less memory (tflite.py)."""
    script = (
        "import sys; from multitag.lifecycle.predictor import Predictor; "
        f"p = Predictor.from_uri({f'models:/{gated.name}/{gated.version}'!r}); p.warm_up(); "
        "print(p.info['runtime'], sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **registry_env.env}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == f"{export.RUNTIME} []", done.stdout[-2000:]


def test_a_version_refused_on_its_scores_is_exported_and_smoke_tested_before_a_person_promotes_it(registry_env, tmp_path, monkeypatch):
    """The gate skips the serving checks for a candidate its scores refuse (it is not to serve); a
    person who promotes it anyway (`multitag registry promote`) gets them run first."""
    import yaml
    from typer.testing import CliRunner

    from multitag.cli import app
    from multitag.config import GateParams
    from multitag.layout import Layout
    from multitag.lifecycle import gate, registry

    images, labels = labelled_images(TEST_IMAGES, seed=5)
    write_test_split(tmp_path, images, labels)
    monkeypatch.chdir(tmp_path)  # the project whose test split the checks read
    model_uri = log_model(served_model("small_cnn", seed=0))
    verdict = gate.judge(model_uri, None, None, GateParams(min_mAP=1.0), "mAP", Layout(tmp_path))  # a floor no model reaches
    assert not verdict.passed and verdict.export is None and "smoke_test" not in verdict.checks
    name = f"refused-{time.time_ns()}"
    version = registry.register(model_uri, name, verdict.tags())
    assert not (export_folder(f"models:/{name}/{version}") / export.EXPORT_FILE).exists()

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"registry": {"model_name": name}}))
    result = CliRunner().invoke(app, ["registry", "promote", version, "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    assert "never exported: exporting" in result.output
    assert (export_folder(f"models:/{name}/{version}") / export.EXPORT_FILE).exists(), "exported before it serves"
    assert registry.alias_version(name, registry.CHAMPION).version == version


def test_a_candidate_whose_export_fails_parity_is_registered_without_it_and_keras_serves(registry_env, monkeypatch):
    """An honest failure: the converter is handed another initialisation of the same graph, so the
    file is a real, working export that answers differently from the candidate."""
    from multitag.lifecycle import registry
    from multitag.lifecycle.predictor import Predictor

    real_to_tflite, impostor = export.to_tflite, served_model("small_cnn", seed=1)
    monkeypatch.setattr(export, "to_tflite", lambda model, path: real_to_tflite(impostor, path))
    model = served_model("small_cnn", seed=0)
    model_uri = log_model(model)
    images, labels = labelled_images(TEST_IMAGES, seed=6)
    parity = export.export_for_serving(model, model_uri, images, labels, model.predict_on_batch(images.astype("float32")), CLASSES)
    assert not parity.passed and parity.max_score_difference > export.MAX_SCORE_DIFFERENCE and "FAILED" in parity.summary()

    name = f"export-failed-{time.time_ns()}"
    version = registry.register(model_uri, name, parity.tags())
    assert registry.list_versions(name)[0].tags["export_parity"] == "failed"
    folder = export_folder(f"models:/{name}/{version}")
    assert not (folder / export.EXPORT_FILE).exists(), "no export without parity"
    assert json.loads((folder / export.RECORD_FILE).read_text())["passed"] is False, "the numbers are recorded either way"
    assert Predictor.from_uri(f"models:/{name}/{version}").info["runtime"] == "keras"


def test_a_later_failed_check_of_the_same_model_stops_its_earlier_export_from_serving(registry_env, monkeypatch):
    from multitag.lifecycle.predictor import Predictor

    model = served_model("small_cnn", seed=0)
    model_uri = log_model(model)
    images, labels = labelled_images(TEST_IMAGES, seed=7)
    reference = model.predict_on_batch(images.astype("float32"))
    assert export.export_for_serving(model, model_uri, images, labels, reference, CLASSES).passed
    assert Predictor.from_uri(model_uri).info["runtime"] == export.RUNTIME

    def crash(model, path: Path) -> Path:
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(export, "to_tflite", crash)
    failed = export.export_for_serving(model, model_uri, images, labels, reference, CLASSES)
    assert not failed.passed and "converter crashed" in failed.error
    assert (export_folder(model_uri) / export.EXPORT_FILE).exists(), "the earlier file is still there ..."
    assert Predictor.from_uri(model_uri).info["runtime"] == "keras", "... but the record says it no longer serves"


def test_concurrent_callers_with_different_batch_sizes_each_get_their_own_rows(gated, registry_env):
    from multitag.lifecycle.predictor import Predictor

    predictor = Predictor.from_uri(f"models:/{gated.name}/{gated.version}")
    assert predictor.info["runtime"] == export.RUNTIME
    expected = np.concatenate([predictor.predict_arrays(gated.images[i : i + 1]) for i in range(TEST_IMAGES)])
    requests = [(start, size) for size in (1, 2, 3, 5, 8) for start in range(0, TEST_IMAGES - size, 3)]

    def answer(request: tuple[int, int]) -> tuple[int, int, np.ndarray]:
        start, size = request
        return start, size, predictor.predict_arrays(gated.images[start : start + size])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(answer, requests * 3))
    for start, size, scores in results:
        np.testing.assert_array_equal(scores, expected[start : start + size])


def test_the_api_reports_the_runtime_that_serves_and_serve_runtime_keras_forces_keras(gated, registry_env, serve_params, live_server):
    import httpx

    for setting, runtime in (("auto", export.RUNTIME), ("keras", "keras")):
        server = live_server(serve_params(gated.name, runtime=setting))
        deadline = time.monotonic() + 60
        while (answer := httpx.get(f"{server.url}/model", timeout=30)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["runtime"] == runtime, (setting, answer.text)


def test_the_gate_reuses_the_test_scores_stored_with_each_model_and_never_trusts_a_wrong_table(registry_env, tmp_path, monkeypatch):
    """lifecycle/scores.py: the candidate's scores from `evaluate` are checked through its export's
    parity, the champion scores only the test photos its table lacks, and a table that does not
    match its model is replaced by the model's own answers."""
    import pandas as pd

    from multitag.config import GateParams
    from multitag.layout import Layout
    from multitag.lifecycle import gate, scores
    from multitag.lifecycle.tflite import TFLiteModel
    from multitag.modeling import evaluate

    images, labels = labelled_images(TEST_IMAGES, seed=8)
    write_test_split(tmp_path, images, labels)
    rows = pd.read_parquet(tmp_path / "data" / "processed" / "manifest.parquet")
    candidate, champion = served_model("small_cnn", seed=0), served_model("small_cnn", seed=2)
    answers = {
        name: model.predict_on_batch(images.astype("float32")).astype("float64")
        for name, model in (("cand", candidate), ("champ", champion))
    }
    candidate_uri, champion_uri = log_model(candidate), log_model(champion)
    scores.log_with_model(champion_uri, scores.table(rows.iloc[4:], answers["champ"][4:], CLASSES, SIZE, "stretch"))

    predicted = []  # rows each Keras model was asked about (the TFLite export's own check is not counted)
    real_predict, real_served_scores = evaluate.predict, evaluate.served_scores

    def counted(model, x, **kw):
        if not isinstance(model, TFLiteModel):
            predicted.append(len(x))
        return real_predict(model, x, **kw)

    def counted_by_member(model, x, cache=None):
        predicted.append(len(x))
        return real_served_scores(model, x, cache)

    monkeypatch.setattr(evaluate, "predict", counted)
    monkeypatch.setattr(evaluate, "served_scores", counted_by_member)

    def judge(table_scores: np.ndarray, params: GateParams):
        predicted.clear()
        scores.log_with_model(candidate_uri, scores.table(rows, table_scores, CLASSES, SIZE, "stretch"))
        return gate.judge(candidate_uri, champion_uri, "1", params, "mAP", Layout(tmp_path))

    wrong = answers["cand"].copy()
    wrong[:, 0] = 1 - wrong[:, 0]
    # a candidate that passes on its scores is exported, and its parity checks every stored score;
    # one refused on them is not exported, and a sample scored through the whole graph checks the table
    serves, refused = GateParams(min_improvement=-1.0, max_class_regression=1.0), GateParams(min_improvement=1.0)
    for params in (serves, refused):
        honest = judge(answers["cand"], params)
        assert predicted == [4], "the candidate's stored scores reused; only the champion's 4 missing photos scored"
        tampered = judge(wrong, params)
        assert predicted == [TEST_IMAGES, 4], "a table that is not the model's own: the candidate is scored now"
        assert tampered.candidate == honest.candidate and tampered.champion == honest.champion
        assert honest.passed == tampered.passed == (params is serves)
        assert (honest.export is not None and honest.export.passed) == (params is serves), "only a candidate that can serve is exported"


def test_a_quick_refit_is_exported_from_the_champions_export_and_anything_else_is_converted(tmp_path, monkeypatch):
    """export.refitted_probe_export: the champion's file with the refitted probe's weights written in,
    proven by the same parity check; a model whose network changed is converted as before."""
    from multitag.lifecycle.tflite import TFLiteModel
    from multitag.modeling import models

    champion = served_model("small_cnn", seed=0)
    champion_file = export.to_tflite(champion, tmp_path / "champion.tflite")
    probe = champion.get_layer("probe_branch")
    kernel, bias = probe.get_layer("probe_logits").get_weights()
    refitted = models.probe_branch(probe.get_layer("probe_features"), kernel[:, ::-1] * 2, bias - 0.3)
    quick = models.with_sigmoid(champion.get_layer("multitag_logits"), flip_average=True, probe=refitted, network_weight=0.5)
    images, labels = labelled_images(TEST_IMAGES, seed=9)
    base = export.Base(champion, champion_file)

    converted = []
    real_to_tflite = export.to_tflite
    monkeypatch.setattr(export, "to_tflite", lambda model, path: converted.append(model) or real_to_tflite(model, path))
    parity = export.export_checked(quick, images, labels, quick.predict_on_batch(images.astype("float32")), CLASSES, tmp_path, base)
    assert parity.passed and parity.made == export.REFITTED_PROBE and not converted, parity
    derived = TFLiteModel(tmp_path / export.EXPORT_FILE).predict_on_batch(images)
    assert np.abs(derived - quick.predict_on_batch(images.astype("float32"))).max() <= export.MAX_SCORE_DIFFERENCE
    assert np.abs(derived - champion.predict_on_batch(images.astype("float32"))).max() > 0.01, "not the champion's answers"

    other = served_model("small_cnn", seed=3)  # another network: nothing to derive from
    assert export.refitted_probe_export(other, base) is None
    parity = export.export_checked(other, images, labels, other.predict_on_batch(images.astype("float32")), CLASSES, tmp_path, base)
    assert parity.passed and parity.made == export.CONVERTED and converted == [other]
