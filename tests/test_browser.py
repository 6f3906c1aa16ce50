"""The web UI in a real Chromium: pick an image, see labels and bars, correct them, send feedback;
and another site's page that tries to post feedback is refused.

Needs Debian's Chromium at /usr/bin/chromium (`bash scripts/install_test_deps.sh`, run by
`make test`); skips with that instruction when it is absent, which fails under CI=true
(conftest.py). Saves a screenshot of the page as browser-ui.png under the test's tmp folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from corpus import encode, solid

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: run `bash scripts/install_test_deps.sh` as root")


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed in this environment")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 800})
        finally:
            browser.close()


def test_tag_correct_and_send_feedback(tiny_server, tiny_champion, page, tmp_path):
    image = tmp_path / "kitten.png"
    image.write_bytes(encode(solid("browser-kitten", (160, 120)), "PNG"))
    stats_url = f"{tiny_server.url}/feedback/stats"
    before = httpx.get(stats_url).json()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(tiny_server.url)
    page.wait_for_selector(f"#model-status[data-version='{tiny_champion.version}']")
    with page.expect_response("**/predict") as answer:
        page.set_input_files("#file-input", str(image))  # what a drop delivers: a FileList of images
    (prediction,) = answer.value.json()["predictions"]
    card = page.locator(".result").first
    card.wait_for()
    assert card.locator(".filename").inner_text() == "kitten.png"
    rows = card.locator(".class-row")
    assert rows.count() == len(tiny_champion.classes)
    thresholds = dict(zip(tiny_champion.classes, tiny_champion.thresholds))
    for name, probability in prediction["probabilities"].items():
        row = card.locator(f".class-row[data-class='{name}']")
        assert row.locator(".probability").inner_text() == f"{round(probability * 1000) / 10:.1f}%"
        assert bar_share(row, ".fill") == pytest.approx(probability, abs=0.01), name
        assert bar_share(row, ".threshold", edge="left") == pytest.approx(thresholds[name], abs=0.01), name
        assert ("above" in row.get_attribute("class")) == (name in prediction["labels"]), "the guess shows on the bar"
        assert row.get_attribute("data-mark") == "unknown" and not row.locator(".label-box").is_checked(), "nothing is pre-ticked"
        assert row.locator(".label-box").evaluate("box => box.indeterminate"), name

    card.locator(".send").click()  # nothing marked yet: nothing is sent
    card.locator(".sent:has-text('Mark at least one class')").wait_for()
    expected = ["person"]
    clicks = {"person": 1, "cat": 2, "dog": 3}  # present; absent; present, absent, back to unknown
    for name, times in clicks.items():
        for _ in range(times):
            card.locator(f".class-row[data-class='{name}'] .label-box").click()
    assert [card.locator(f".class-row[data-class='{n}']").get_attribute("data-mark") for n in clicks] == ["present", "absent", "unknown"]
    assert card.locator(".class-row[data-class='cat'] .label-box").get_attribute("aria-label") == "cat: absent"
    with page.expect_response("**/feedback") as sent:
        card.locator(".send").click()
    assert sent.value.status == 202, sent.value.text()
    assert json.loads(form_field(sent.value.request.post_data_buffer, "labels")) == expected
    assert json.loads(form_field(sent.value.request.post_data_buffer, "absent")) == ["cat"], "dog stays unknown"
    page.wait_for_selector(".result .sent:has-text('Queued as')")
    page.wait_for_selector(f"#feedback-stats[data-total='{before['total'] + 1}']")
    page.screenshot(path=str(tmp_path / "browser-ui.png"), full_page=True)

    after = httpx.get(stats_url).json()
    assert after["total"] == before["total"] + 1
    added = {label: after["pending_labels"].get(label, 0) - before["pending_labels"].get(label, 0) for label in tiny_champion.classes}
    assert added == {label: int(label in expected) for label in tiny_champion.classes}
    assert errors == []


def test_a_correction_resends_the_photo_when_the_server_no_longer_keeps_it(tiny_server, tiny_champion, page, tmp_path):
    """The page corrects by hash; when the image has expired on the server (retention) it gets a
    404 and sends the photo it still holds instead, so the user's correction is not lost."""
    image = tmp_path / "expired.png"
    image.write_bytes(encode(solid("browser-expired", (160, 120)), "PNG"))
    page.goto(tiny_server.url)
    page.wait_for_selector(f"#model-status[data-version='{tiny_champion.version}']")
    with page.expect_response("**/predict") as answer:
        page.set_input_files("#file-input", str(image))
    (prediction,) = answer.value.json()["predictions"]
    card = page.locator(".result").first
    card.wait_for()
    tiny_server.app.state.services.queue.images.path(prediction["image_sha256"]).unlink()  # what the retention sweep does
    statuses: list[int] = []
    page.on("response", lambda response: statuses.append(response.status) if response.url.endswith("/feedback") else None)
    card.locator(".class-row[data-class='cat'] .label-box").click()
    card.locator(".send").click()
    page.wait_for_selector(".result .sent:has-text('Queued as')")
    assert statuses == [404, 202]


def test_a_page_on_another_site_cannot_post_feedback(tiny_server, page):
    """The classic cross-site request: another site's page submits a form to this API in the visitor's browser."""
    attack = f"""<form method="post" enctype="multipart/form-data" action="{tiny_server.url}/feedback">
      <input name="labels" value="cat"><input name="image_sha256" value="{"0" * 64}"></form>
      <script>document.forms[0].submit()</script>"""
    page.route("http://evil.example/**", lambda route: route.fulfill(body=attack, content_type="text/html"))
    before = httpx.get(f"{tiny_server.url}/feedback/stats").json()
    with page.expect_response(f"{tiny_server.url}/feedback") as answer:
        page.goto("http://evil.example/")
    assert answer.value.status == 403
    assert answer.value.json()["detail"]["reason"] == "cross_origin"
    assert httpx.get(f"{tiny_server.url}/feedback/stats").json() == before


def bar_share(row, part: str, edge: str = "right") -> float:
    """Where `part` of the row's bar ends (or starts, edge="left"), as a share of the bar's width."""
    return row.evaluate(
        """(row, [part, edge]) => {
          const bar = row.querySelector(".bar").getBoundingClientRect();
          const box = row.querySelector(part).getBoundingClientRect();
          return (box[edge] - bar.left) / bar.width;
        }""",
        [part, edge],
    )


def form_field(body: bytes, name: str) -> str:
    """One field's value from a multipart/form-data body."""
    match = re.search(rb'name="' + name.encode() + rb'"\r\n\r\n(.*?)\r\n--', body, re.DOTALL)
    assert match, f"no field {name!r} in the posted form"
    return match.group(1).decode()
