"""Where a model is wrong (lifecycle/results.py): per-class results and the photos behind each error,
from the answers stored with a model, written as a static page and read in a real Chromium."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from corpus import encode, solid
from test_browser import CHROMIUM, CHROMIUM_ARGS, page  # noqa: F401  (the Chromium page fixture)

from multitag.lifecycle import results, scores

CLASSES = ["cat", "dog", "person"]
THRESHOLDS = np.array([0.5, 0.5, 0.3])


def photo_table(tmp_path, labels: list[list[str]], answers: list[list[float]], split: str = "test") -> scores.ScoreTable:
    """A stored-answers table over real JPEG files, one colour each."""
    paths = []
    for index in range(len(labels)):
        paths.append(tmp_path / f"photo-{index}.jpg")
        paths[-1].write_bytes(encode(solid(f"photo-{index}", (160, 120)), "JPEG"))
    rows = pd.DataFrame(
        {
            "sha256": [f"{i:064x}" for i in range(len(labels))],
            "split": split,
            "image_id": [f"photo-{i}" for i in range(len(labels))],
            "path": list(map(str, paths)),
            "labels": labels,
        }
    )
    return scores.table(rows, np.array(answers), CLASSES, 32, "stretch")


LABELS = [["cat"], ["cat", "person"], ["dog"], ["dog"], ["person"], []]
ANSWERS = [
    [0.9, 0.1, 0.1],  # right
    [0.4, 0.2, 0.8],  # cat missed (0.4)
    [0.7, 0.9, 0.1],  # cat false positive, sure (0.7): really a dog
    [0.6, 0.2, 0.1],  # dog missed (0.2) and cat false positive (0.6): really a dog
    [0.1, 0.1, 0.2],  # person missed (0.2)
    [0.2, 0.1, 0.35],  # person false positive (0.35): really nothing
]


def test_each_class_lists_its_false_positives_and_negatives_most_confident_first(tmp_path):
    found = results.results(photo_table(tmp_path, LABELS, ANSWERS), THRESHOLDS, "m v1").by_name()
    cat, dog, person = found["cat"], found["dog"], found["person"]
    assert [m.image_id for m in cat.false_positives] == ["photo-2", "photo-3"] and cat.false_positives[0].score == 0.7
    assert [m.image_id for m in cat.false_negatives] == ["photo-1"] and cat.positives == 2
    assert cat.really() == [("dog", 2)], "what the cat false positives really showed"
    assert [m.image_id for m in dog.false_negatives] == ["photo-3"] and dog.false_positives == []
    assert [m.image_id for m in person.false_negatives] == ["photo-4"] and person.really() == [("(nothing)", 1)]
    assert person.threshold == 0.3 and cat.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))


def test_only_the_test_rows_count_and_two_models_are_compared_on_the_photos_both_were_scored_on(tmp_path):
    table = photo_table(tmp_path, LABELS, ANSWERS, split="val")
    assert results.results(table, THRESHOLDS, "m").photos == 0
    shared = {f"{i:064x}" for i in (2, 3)}
    found = results.results(photo_table(tmp_path, LABELS, ANSWERS), THRESHOLDS, "m", only=shared)
    assert found.photos == 2 and [m.image_id for m in found.by_name()["cat"].false_positives] == ["photo-2", "photo-3"]
    assert found.by_name()["cat"].false_negatives == [], "photo-1 is not among the shared photos"


def test_the_page_escapes_what_users_wrote_and_shows_two_models_side_by_side(tmp_path):
    hostile = [["cat"], ["<script>alert(1)</script>"]]
    table = photo_table(tmp_path, hostile, [[0.2, 0.1, 0.1], [0.9, 0.1, 0.1]])
    table.frame.loc[1, "labels"] = ["<script>alert(1)</script>"]
    one = results.results(scores.table(table.frame, np.stack(table.frame["scores"]), CLASSES, 32, "stretch"), THRESHOLDS, "m v1")
    page_text = results.html_report([one, one], "t")
    assert "<script>alert" not in page_text and "&lt;script&gt;" in page_text
    assert page_text.count("(2 test photos)") == 2, "a column group per model"


def test_the_report_reads_in_chromium_with_each_mistake_s_photo(tmp_path, page):  # noqa: F811
    champion = results.results(photo_table(tmp_path, LABELS, ANSWERS), THRESHOLDS, "m v1 (champion)")
    better = np.array(ANSWERS)
    better[2, 0] = 0.1  # the challenger no longer calls the dog a cat
    challenger = results.results(photo_table(tmp_path, LABELS, better.tolist()), THRESHOLDS, "m v2 (challenger)")
    report = results.write_report([champion, challenger], "Where m is wrong", tmp_path / "results.html")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(report.as_uri())
    assert page.locator("#classes tr").count() == 2 + len(CLASSES)
    cat_row = page.locator("#classes tr", has_text="cat").first.inner_text().split("\t")
    assert cat_row[5:8] == ["2", "1", "dog ×2"] and cat_row[12:15] == ["1", "1", "dog ×1"], f"FP, FN, what the FP were: {cat_row}"
    page.click("a[href='#class-cat']")
    strips = page.locator("#class-cat .strip")
    assert strips.count() == 4  # false positives and negatives, each for both models
    assert (
        "(champion), false positives: 2" in strips.nth(0).inner_text() and "(challenger), false positives: 1" in strips.nth(1).inner_text()
    )
    loaded = page.eval_on_selector_all("#class-cat img", "images => images.map(i => i.complete && i.naturalWidth > 0)")
    assert loaded and all(loaded), "every mistake's thumbnail decodes"
    page.select_option("#outcome", "false-negatives")  # the filter by outcome
    assert [strips.nth(i).is_visible() for i in range(4)] == [False, False, True, True]
    page.select_option("#outcome", "all")
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    assert not errors


def test_the_page_s_results_view_shows_where_the_served_model_is_wrong(
    registry_env,
    fresh_model_name,
    live_server,
    serve_params,
    page,  # noqa: F811
    tmp_path,
):
    """GET /results through the web page's Results view, in Chromium: the served champion's stored answers."""
    import time

    import httpx
    from served_graphs import log_model, served_model

    from multitag.lifecycle import registry

    model_uri = log_model(served_model("small_cnn", seed=0))  # the same three classes, thresholds 0.5
    scores.log_with_model(model_uri, photo_table(tmp_path, LABELS, ANSWERS))
    registry.promote(fresh_model_name, registry.register(model_uri, fresh_model_name, {}))
    server = live_server(serve_params(fresh_model_name))
    deadline = time.monotonic() + 60
    while httpx.get(f"{server.url}/model", timeout=30).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.2)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server.url}/#model-results")
    frame = page.frame_locator("#model-results-frame")
    frame.locator("#class-cat").wait_for()
    assert frame.locator("#classes tr").count() == 2 + len(CLASSES)
    assert "(champion), false positives: 2" in frame.locator("#class-cat .strip").nth(0).inner_text()
    loaded = frame.locator("#class-cat img").evaluate_all("images => images.map(i => i.complete && i.naturalWidth > 0)")
    assert loaded and all(loaded)
    assert page.locator("nav a.active").inner_text() == "Results"
    page.screenshot(path=str(tmp_path / "results-view.png"), full_page=True)
    assert not errors


def test_the_per_class_numbers_agree_with_scikit_learn(tmp_path):
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(3)
    labels = [[c for c in CLASSES if rng.random() < 0.4] for _ in range(40)]
    answers = rng.random((40, len(CLASSES))).round(3)
    found = results.results(photo_table(tmp_path, labels, answers.tolist()), THRESHOLDS, "m").by_name()
    y = np.array([[c in row for c in CLASSES] for row in labels])
    for column, name in enumerate(CLASSES):
        predicted = answers[:, column] >= THRESHOLDS[column]
        assert found[name].ap == pytest.approx(average_precision_score(y[:, column], answers[:, column]))
        assert found[name].f1 == pytest.approx(f1_score(y[:, column], predicted, zero_division=0))
        assert len(found[name].false_positives) == int((predicted & ~y[:, column]).sum())
        assert len(found[name].false_negatives) == int((~predicted & y[:, column]).sum()) and found[name].positives == int(
            y[:, column].sum()
        )
