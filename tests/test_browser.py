"""The web UI in a real Chromium: pick an image, see labels and bars, correct them, send feedback.

Needs Debian's Chromium at /usr/bin/chromium (`bash scripts/install_test_browser.sh`, run by
`make test`); skips with that instruction when it is absent. Saves a screenshot of the page as
browser-ui.png under the test's tmp folder.
"""

from __future__ import annotations

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

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: run `bash scripts/install_test_browser.sh` as root")


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
    total_before = httpx.get(stats_url).json()["total"]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(tiny_server.url)
    page.wait_for_selector(f"#model-status[data-version='{tiny_champion.version}']")
    page.set_input_files("#file-input", str(image))  # what a drop delivers: a FileList of images
    card = page.locator(".result").first
    card.wait_for()
    assert card.locator(".filename").inner_text() == "kitten.png"
    rows = card.locator(".class-row")
    assert rows.count() == len(tiny_champion.classes)
    for i in range(rows.count()):
        assert rows.nth(i).locator(".fill").evaluate("el => el.getBoundingClientRect().width") >= 0
        assert rows.nth(i).locator(".probability").inner_text().endswith("%")

    cat = card.locator(".class-row[data-class='cat'] .label-box")
    dog = card.locator(".class-row[data-class='dog'] .label-box")
    cat.check()
    dog.uncheck()
    dog.check()
    dog.uncheck()
    card.locator(".send").click()
    page.wait_for_selector(".result .sent:has-text('Queued as')")
    page.wait_for_selector(f"#feedback-stats[data-total='{total_before + 1}']")
    page.screenshot(path=str(tmp_path / "browser-ui.png"), full_page=True)

    stats = httpx.get(stats_url).json()
    assert stats["total"] == total_before + 1
    assert stats["pending_labels"].get("cat", 0) >= 1
    assert errors == []
