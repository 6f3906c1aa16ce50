"""The web page's Review view in a real Chromium (issue 13, part 2): it lists the images the server
ranks most worth a look with their thumbnails and score bars, and a correction sent from it reaches
the queue marked origin=review. Saves the view as review-view.png under the test's tmp folder and
copies it to /tmp/review-view.png.

Same Chromium and skips as test_browser.py, whose page fixture it uses.
"""

from __future__ import annotations

import json
import shutil

import pytest
from corpus import encode, solid
from test_browser import CHROMIUM, bar_share, form_field, page  # noqa: F401  (page: the Chromium page fixture)

from multitag.feedback.predictions import CHALLENGER, Answer, PredictionLog
from multitag.feedback.retraining import open_queue

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: run `bash scripts/install_test_deps.sh` as root")

SCORES = {  # tiny thresholds: cat 0.3, dog 0.5, person 0.7
    "sure": {"cat": 0.02, "dog": 0.03, "person": 0.98},
    "unsure": {"cat": 0.33, "dog": 0.1, "person": 0.2},
    "disputed": {"cat": 0.05, "dog": 0.9, "person": 0.4},
}


def test_the_review_view_lists_images_and_sends_corrections_marked_review(registry_env, live_server, serve_params, page, tmp_path):  # noqa: F811
    params = serve_params(registry_env.name)
    server = live_server(params)
    queue = open_queue(params)
    sha = {name: queue.images.store(encode(solid(f"review-{name}", (160, 120)), "PNG")) for name in SCORES}
    log, thresholds = PredictionLog(queue.database, 3600), dict(zip(registry_env.classes, registry_env.thresholds))
    for name, scores in SCORES.items():
        labels = [c for c, s in scores.items() if s >= thresholds[c]]
        log.record(registry_env.name, registry_env.version, [Answer(sha[name], labels, scores)])
    log.record(registry_env.name, "7", [Answer(sha["disputed"], ["person"], {"cat": 0.1, "dog": 0.2, "person": 0.8})], role=CHALLENGER)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{server.url}/#review")
    page.wait_for_selector(f"#model-status[data-version='{registry_env.version}']")
    cards = page.locator("#review-list .review-item")
    cards.first.wait_for()
    assert [cards.nth(i).get_attribute("data-sha256") for i in range(cards.count())] == [sha["disputed"], sha["unsure"], sha["sure"]]
    assert page.locator("#tag-view").is_hidden() and page.locator(".views a.active").inner_text() == "Review"
    assert cards.first.locator(".filename").inner_text() == "champion and challenger (v7) disagree on dog, person"
    assert "challenger v7: person" in cards.first.locator(".predicted").inner_text()
    page.wait_for_function("[...document.querySelectorAll('#review-list .thumb')].every((img) => img.complete && img.naturalWidth > 0)")
    unsure = cards.nth(1)
    for name, probability in SCORES["unsure"].items():
        row = unsure.locator(f".class-row[data-class='{name}']")
        assert bar_share(row, ".fill") == pytest.approx(probability, abs=0.01), name
        assert bar_share(row, ".threshold", edge="left") == pytest.approx(thresholds[name], abs=0.01), name
        assert row.get_attribute("data-mark") == "unknown" and not row.locator(".label-box").is_checked(), name

    for name in ("cat", "dog"):
        unsure.locator(f".class-row[data-class='{name}'] .label-box").click()
    with page.expect_response("**/feedback") as sent:
        unsure.locator(".send").click()
    assert sent.value.status == 202, sent.value.text()
    body = sent.value.request.post_data_buffer
    assert (form_field(body, "image_sha256"), json.loads(form_field(body, "labels")), form_field(body, "origin")) == (
        sha["unsure"],
        ["cat", "dog"],
        "review",
    )
    unsure.locator(".sent:has-text('Queued as')").wait_for()
    page.screenshot(path=str(tmp_path / "review-view.png"), full_page=True)
    shutil.copy(tmp_path / "review-view.png", "/tmp/review-view.png")
    (queued,) = queue.list_items()
    assert (queued.image_sha256, queued.labels, queued.absent, queued.origin) == (sha["unsure"], ("cat", "dog"), (), "review")

    page.click("#review-refresh")
    page.wait_for_function("document.querySelectorAll('#review-list .review-item').length === 2")
    assert page.locator(f"#review-list .review-item[data-sha256='{sha['unsure']}']").count() == 0, (
        "a corrected image is not asked for again"
    )
    page.click(".views a[data-view='tag']")
    page.locator("#drop-zone").wait_for()
    assert page.locator("#review-view").is_hidden()
    assert errors == []


def test_with_a_reviewer_token_set_the_review_view_asks_for_it_and_shows_the_photos(
    registry_env,
    live_server,
    serve_params,
    page,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    """Issue 22: other users' photos need the reviewer token; the page asks for it, keeps it for the
    tab, and fetches the thumbnails with it (an <img src> alone would be refused)."""
    monkeypatch.setenv("MULTITAG_REVIEWER_TOKEN", "let-me-review")
    params = serve_params(registry_env.name)
    server = live_server(params)
    queue = open_queue(params)
    sha = queue.images.store(encode(solid("review-with-token", (160, 120)), "PNG"))
    scores = SCORES["unsure"]
    thresholds = dict(zip(registry_env.classes, registry_env.thresholds))
    labels = [c for c, s in scores.items() if s >= thresholds[c]]
    PredictionLog(queue.database, 3600).record(registry_env.name, registry_env.version, [Answer(sha, labels, scores)])
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{server.url}/#review")
    page.locator("#review-token-form").wait_for()
    assert page.locator("#review-list .review-item").count() == 0, "nothing is shown before the token"
    page.fill("#review-token", "a-guess")
    page.click("#review-token-form button")
    page.locator("#review-message:has-text('That reviewer token was refused')").wait_for()
    page.fill("#review-token", "let-me-review")
    page.click("#review-token-form button")
    card = page.locator(f"#review-list .review-item[data-sha256='{sha}']")
    card.wait_for()
    page.wait_for_function("[...document.querySelectorAll('#review-list .thumb')].every((img) => img.complete && img.naturalWidth > 0)")
    assert page.locator("#review-token-form").is_hidden()
    page.screenshot(path=str(tmp_path / "review-token.png"), full_page=True)
    shutil.copy(tmp_path / "review-token.png", "/tmp/review-token.png")
    page.reload()
    card.wait_for()  # the token is kept for the tab
    assert errors == []
