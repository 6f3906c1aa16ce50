"""Benchmark tagging a library: `multitag tag`'s loop (tagging.tag_library: a thread pool reading
and decoding, one model call per batch of 32, rows appended per batch) against a fair loop of
`multitag predict`-style single calls (read a photo, `Predictor.predict_bytes([data])`, write its
row), on the same model and the same VOC photos, in interleaved rounds.

The model: MobileNetV2 224 (ImageNet) + an untrained 20-class head, served through Keras (the cost
of the graph, not its accuracy). Each round tags into a fresh output file, so nothing is skipped.

    .venv/bin/python bench/tag.py               # 300 photos, 2 rounds

Writes bench/results/tag.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import RESULTS_DIR, ROOT, machine_info, require_shared_data
from serve import INPUT_SIZE, JPEG_DIR, build_model, stage_weights

from multitag.data.sources.voc import VOC_CLASSES
from multitag.lifecycle.predictor import Predictor
from multitag.tagging import tag_library

RESULTS_PATH = RESULTS_DIR / "tag.json"


def single_calls(predictor: Predictor, photos: list[Path], out: Path) -> None:
    """The baseline: one photo per model call, as `multitag predict` does, one CSV row each."""
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels", *VOC_CLASSES])
        for path in photos:
            result = predictor.predict_bytes([path.read_bytes()])[0]
            writer.writerow([str(path), "|".join(result.labels), *(f"{result.probabilities[c]:.4f}" for c in VOC_CLASSES)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    require_shared_data()
    keras_home = Path(os.environ.get("KERAS_HOME", ROOT / ".keras"))
    os.environ["KERAS_HOME"] = str(keras_home)
    stage_weights(keras_home)
    predictor = Predictor(build_model(), list(VOC_CLASSES), np.full(len(VOC_CLASSES), 0.5), INPUT_SIZE)
    predictor.warm_up()
    photos = sorted(JPEG_DIR.glob("*.jpg"))[: args.photos]
    scratch = Path(tempfile.mkdtemp(prefix="multitag-bench-tag-"))
    times: dict[str, list[float]] = {"project": [], "baseline": []}
    for round_number in range(args.rounds):
        for variant in ("project", "baseline"):
            out = scratch / f"{variant}-{round_number}.csv"
            started = time.perf_counter()
            if variant == "project":
                tag_library(predictor, "bench", "1", photos, out)
            else:
                single_calls(predictor, photos, out)
            times[variant].append(time.perf_counter() - started)
            print(f"round {round_number + 1} {variant}: {len(photos) / times[variant][-1]:.1f} photos/s", flush=True)
    rates = {variant: len(photos) / min(seconds) for variant, seconds in times.items()}
    summary = {
        "photos": len(photos),
        "rounds": args.rounds,
        "photos_per_s_best_round": {k: round(v, 1) for k, v in rates.items()},
        "speedup": round(rates["project"] / rates["baseline"], 2),
        "seconds": times,
        "machine": machine_info(),
    }
    print(f"multitag tag {rates['project']:.1f} photos/s, single calls {rates['baseline']:.1f} photos/s: {summary['speedup']}x")
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results written to {RESULTS_PATH}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
