"""Benchmark the leakage check on real photos: how many re-encoded copies of test photos it
catches, and how many distinct photos it mistakes for copies, against the exact-hash check alone.

- project: sha256, then the difference hash within `retrain.near_duplicate_bits` (what each
  retraining runs: FeedbackQueue.reject_leaked, then retraining.reject_near_duplicates);
- baseline: sha256 only (the check before near-duplicates).

Copies: each of the first `--copies` VOC photos resized to 60% and saved as JPEG quality 70 (what
a phone or a chat app does to a photo). False matches: every pair of distinct VOC photos.

    .venv/bin/python bench/leakage.py            # 300 copies, all 1,522 photos pairwise

Writes bench/results/leakage.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import time
from pathlib import Path

from harness import RESULTS_DIR, VOC_DIR, machine_info, require_shared_data

from multitag.config import RetrainParams
from multitag.data.images import difference_hash, hash_distance, informative_hash

RESULTS_PATH = RESULTS_DIR / "leakage.json"


def reencoded(path: Path) -> bytes:
    """The photo at 60% of its size as JPEG quality 70."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").resize((image.width * 6 // 10, image.height * 6 // 10))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=300)
    args = parser.parse_args()
    require_shared_data()
    bits = RetrainParams().near_duplicate_bits
    photos = sorted((VOC_DIR / "JPEGImages").glob("*.jpg"))
    started = time.perf_counter()
    hashes = [difference_hash(path) for path in photos]
    ms_per_photo = (time.perf_counter() - started) / len(photos) * 1000
    informative = [value for value in hashes if informative_hash(value)]
    false_pairs = sum(hash_distance(a, b) <= bits for a, b in itertools.combinations(informative, 2))
    pairs = len(informative) * (len(informative) - 1) // 2

    caught = {"project": 0, "baseline": 0}
    for path, original in zip(photos[: args.copies], hashes):
        copy = reencoded(path)
        caught["baseline"] += hashlib.sha256(copy).hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
        caught["project"] += informative_hash(original) and hash_distance(difference_hash(io.BytesIO(copy)), original) <= bits
    copies = min(args.copies, len(photos))
    summary = {
        "near_duplicate_bits": bits,
        "copies": copies,
        "copies_caught": caught,
        "distinct_pairs": pairs,
        "distinct_pairs_matched_by_project": false_pairs,
        "flat_photos_never_compared": len(photos) - len(informative),
        "hash_ms_per_photo": round(ms_per_photo, 2),
        "machine": machine_info(),
    }
    print(f"re-encoded copies of test photos caught: project {caught['project']}/{copies}, exact sha256 only {caught['baseline']}/{copies}")
    print(f"distinct photo pairs taken for copies: project {false_pairs} of {pairs:,} (baseline 0)")
    print(f"difference hash: {ms_per_photo:.1f} ms per photo; {summary['flat_photos_never_compared']} flat photo(s) never compared")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results written to {RESULTS_PATH}")


if __name__ == "__main__":
    main()
