"""Try the served champion as a user would: start `multitag serve`, send it held-out photos,
compare its labels with the true ones, and drop one photo on the web page in headless Chromium.
Then the learning loop on those answers: the review list (GET /review, and the page's Review view
in Chromium), the shadow report when a challenger exists (GET /shadow) and drift (GET /drift).

Run from a project where the pipeline has registered a champion (the photos come from that
project's frozen test split, which no model trained on):

    .venv/bin/python scripts/try_real_photos.py --photos 40 --screenshot reports/page.png

Starts the server on a free loopback port and stops exactly that process (by pid) at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pandas as pd

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_model(url: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            model = httpx.get(f"{url}/model", timeout=5)
            if model.status_code == 200:
                return model.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit(f"no model served at {url} after {timeout_s:.0f} s")


def held_out_photos(count: int, only_class: str | None = None) -> pd.DataFrame:
    """`count` photos of the frozen test split, spread over it; with `only_class`, only photos of
    that class (a shifted stream, which GET /drift should flag)."""
    frame = pd.read_parquet("data/processed/manifest.parquet")
    test = frame[frame["split"] == "test"].sort_values("image_id")
    if only_class is not None:
        test = test[test["labels"].map(lambda labels: only_class in list(labels))]
    return test.iloc[:: max(1, len(test) // count)].head(count)


def send(url: str, photos: pd.DataFrame) -> list[dict]:
    answers = []
    for path in photos["path"]:
        with open(path, "rb") as handle:
            response = httpx.post(f"{url}/predict", files=[("files", (Path(path).name, handle.read(), "image/jpeg"))], timeout=60)
        response.raise_for_status()
        answers.append(response.json()["predictions"][0])
    return answers


def screenshot(url: str, photo: str, target: Path, review_target: Path) -> None:
    """The page with `photo` dropped on it, then its Review view."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"], headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.wait_for_selector("#model-status[data-version]")
        page.set_input_files("#file-input", photo)
        page.locator(".result").first.wait_for()
        page.wait_for_timeout(500)
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), full_page=True)
        page.goto(f"{url}/#review")
        page.wait_for_timeout(3000)
        page.screenshot(path=str(review_target), full_page=False)
        browser.close()


def learning_loop(url: str) -> None:
    """What the loop sees of the answers just sent: the review list, the shadow report, drift."""
    review = httpx.get(f"{url}/review", params={"n": 8}, timeout=60).json()
    print(f"\nreview list ({len(review['items'])} of n=8):")
    for item in review["items"]:
        print(f"  {item['image_sha256'][:10]}  {item['reason']}")
    shadow = httpx.get(f"{url}/shadow", timeout=60).json()
    report = shadow.get("report")
    if not shadow["enabled"] or shadow["challenger_version"] is None:
        print("shadow: no challenger, nothing shadowed")
    elif report:
        print(
            f"shadow: challenger v{shadow['challenger_version']} on {report['images']} images, agreement {report['agreement']}, "
            f"exact label sets {report['exact_agreement']}; scoring {shadow['scoring']}"
        )
    drift = httpx.get(f"{url}/drift", timeout=60).json()
    print(
        f"drift: {drift['status']} over {drift['predictions']} answers: {drift['message']} (drifted: {', '.join(drift['drifted_classes']) or 'none'})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--screenshot", type=Path, default=Path("reports/page.png"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--only-class", help="send only photos of this class: a shifted stream for the drift check")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "multitag.cli", "serve", "--port", str(port), "--params", args.params],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        model = wait_for_model(url)
        print(f"served: {model.get('name')} version {model.get('version')} ({model.get('architecture')}, through {model.get('runtime')})")
        photos = held_out_photos(args.photos, args.only_class)
        answers = send(url, photos)
        predicted, true = Counter(), Counter()
        for (_, row), answer in zip(photos.iterrows(), answers):
            labels = list(row["labels"])
            predicted.update(answer["labels"])
            true.update(labels)
            print(f"{row['image_id']}: served {', '.join(answer['labels']) or '(none)'}  | true {', '.join(labels)}")
        n = len(answers)
        print(f"\n{n} held-out photos: {sum(predicted.values()) / n:.2f} labels per photo served, {sum(true.values()) / n:.2f} true")
        print("per class (served/true): " + ", ".join(f"{c} {predicted[c]}/{true[c]}" for c in sorted(set(predicted) | set(true))))
        time.sleep(3)  # the shadow worker scores the last requests off the response path
        learning_loop(url)
        if CHROMIUM.exists():
            review_shot = args.screenshot.with_name(f"{args.screenshot.stem}-review{args.screenshot.suffix}")
            screenshot(url, str(photos["path"].iloc[0]), args.screenshot, review_shot)
            print(f"page with {photos['image_id'].iloc[0]} dropped on it: {args.screenshot}; its Review view: {review_shot}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
