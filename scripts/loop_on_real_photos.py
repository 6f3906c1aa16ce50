"""The learning loop as one photographer meets it: real photos sent to the served model from one
address, their true labels sent back as corrections, and what changed on photos nobody corrected.

Run from a project that serves a champion (`multitag serve`), with held-out VOC photos listed by
scripts/voc_pool.py:

    .venv/bin/python scripts/loop_on_real_photos.py correct --ids data/raw/voc-real-part.pool.txt
    .venv/bin/python scripts/loop_on_real_photos.py score --ids data/raw/voc-real-part.unseen.txt --out reports/unseen-v1.json
    .venv/bin/python scripts/loop_on_real_photos.py score --model models:/voc-real-part/2 --ids ... --out reports/unseen-v2.json
    .venv/bin/python scripts/loop_on_real_photos.py compare reports/unseen-v1.json reports/unseen-v2.json

`correct` posts each photo to /predict as a user would, then its annotation's labels to /feedback
by the photo's hash (a full labelling). `score` asks the served model about each photo and scores
its answers against the annotations: mAP of the served scores, macro-F1 of the served labels,
per-class AP. `compare` prints the change between two scores, class by class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import numpy as np

from multitag.data.sources.voc import parse_labels
from multitag.modeling.metrics import average_precision_per_class

DEFAULT_SOURCE = Path("../shared/datasets/voc-real")


def photos(source: Path, ids_file: Path) -> list[tuple[Path, list[str]]]:
    """(photo, its true labels) per listed id; `difficult` objects count, as in the pipeline."""
    ids = [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    return [(source / "JPEGImages" / f"{i}.jpg", parse_labels(source / "Annotations" / f"{i}.xml", True)[0]) for i in ids]


def predict(client: httpx.Client, photo: Path) -> dict:
    response = client.post("/predict", files=[("files", (photo.name, photo.read_bytes(), "image/jpeg"))])
    response.raise_for_status()
    return response.json()["predictions"][0]


def correct(client: httpx.Client, listed: list[tuple[Path, list[str]]]) -> None:
    """Predict, then correct with the true labels, photo by photo, from this one client."""
    accepted = 0
    for number, (photo, truth) in enumerate(listed, 1):
        answer = predict(client, photo)
        sent = client.post(
            "/feedback", data={"image_sha256": answer["image_sha256"], "labels": "|".join(truth), "model_version": answer["model_version"]}
        )
        if sent.status_code != 202:
            raise SystemExit(f"{photo.name}: /feedback answered {sent.status_code}: {sent.text[:300]}")
        accepted += 1
        if number % 50 == 0 or number == len(listed):
            print(f"corrected {number}/{len(listed)} photos")
    print(f"{accepted} corrections accepted (202) from one client")


def registry_answers(model_uri: str, listed: list[tuple[Path, list[str]]]) -> list[dict]:
    """A registry version's answers as the server would give them (its TFLite export where it has
    one), for a version that does not serve: one the gate refused, say."""
    from multitag.lifecycle.predictor import Predictor

    predictor = Predictor.from_uri(model_uri)
    version = model_uri.rsplit("/", 1)[-1]
    answers = []
    for start in range(0, len(listed), 16):
        for answer in predictor.predict_bytes([photo.read_bytes() for photo, _ in listed[start : start + 16]]):
            answers.append({"labels": answer.labels, "probabilities": answer.probabilities, "model_version": version})
    return answers


def score(answers: list[dict], listed: list[tuple[Path, list[str]]]) -> dict:
    """A model's answers on `listed` against their true labels."""
    classes = sorted(answers[0]["probabilities"])
    truth = np.array([[name in labels for name in classes] for _, labels in listed], dtype=int)
    scores = np.array([[a["probabilities"][name] for name in classes] for a in answers])
    said = np.array([[name in a["labels"] for name in classes] for a in answers], dtype=int)
    ap = average_precision_per_class(truth, scores)
    tp, fp, fn = (truth & said).sum(0), ((1 - truth) & said).sum(0), (truth & (1 - said)).sum(0)
    f1 = np.where(truth.sum(0) > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return {
        "model_version": answers[0]["model_version"],
        "photos": len(listed),
        "mAP": float(np.nanmean(ap)),
        "macro_f1": float(np.nanmean(f1)),
        "micro_f1": float(micro),
        "per_class": {
            name: {"ap": None if np.isnan(ap[k]) else float(ap[k]), "positives": int(truth[:, k].sum())} for k, name in enumerate(classes)
        },
    }


def compare(before: dict, after: dict) -> None:
    print(f"{before['photos']} unseen photos: version {before['model_version']} -> {after['model_version']}")
    for metric in ("mAP", "macro_f1", "micro_f1"):
        print(f"  {metric:9s} {before[metric]:.4f} -> {after[metric]:.4f} ({after[metric] - before[metric]:+.4f})")
    for name, row in before["per_class"].items():
        new = after["per_class"][name]["ap"]
        if row["ap"] is not None and new is not None:
            print(f"  {name:12s} AP {row['ap']:.3f} -> {new:.3f} ({new - row['ap']:+.3f}), {row['positives']} positives")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["correct", "score", "compare"])
    parser.add_argument("files", nargs="*", type=Path, help="compare: two score files")
    parser.add_argument("--ids", type=Path, help="one VOC image id a line (scripts/voc_pool.py)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, help="score: where to write the result (JSON)")
    parser.add_argument("--model", help="score: this registry version (models:/NAME/N) instead of the served one")
    args = parser.parse_args()
    if args.step == "compare":
        compare(*(json.loads(path.read_text()) for path in args.files))
        return
    with httpx.Client(base_url=args.url, timeout=120) as client:
        listed = photos(args.source, args.ids)
        if args.step == "correct":
            correct(client, listed)
            return
        answers = registry_answers(args.model, listed) if args.model else [predict(client, photo) for photo, _ in listed]
        result = score(answers, listed)
    print(f"version {result['model_version']} on {result['photos']} photos: mAP {result['mAP']:.4f}, macro-F1 {result['macro_f1']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
