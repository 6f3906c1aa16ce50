"""Serving smoke test, run in a fresh process: load a model from its URI alone and answer a
few canned images, through the runtime the API would use (`runtime` in the result). Prints one
JSON line; exit code 0 only if every answer is well-formed.

    python -m multitag.lifecycle.smoke MODEL_URI IMAGE [IMAGE ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run_in_fresh_process(model_uri: str, images: list[str], timeout_s: float = 300) -> dict:
    """Run the smoke test in a new interpreter; any failure becomes {"ok": False, "error": ...}."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "multitag.lifecycle.smoke", model_uri, *images], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"ok": False, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(lines[-1])


def main(model_uri: str, images: list[str]) -> dict:
    from multitag.lifecycle.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor.from_uri(model_uri)
    load_s = time.perf_counter() - started
    predictor.warm_up()
    latencies = []
    for path in images:
        t0 = time.perf_counter()
        (result,) = predictor.predict_bytes([Path(path).read_bytes()])
        latencies.append((time.perf_counter() - t0) * 1000)
        values = np.array(list(result.probabilities.values()))
        if len(values) != len(predictor.classes) or not np.all((values >= 0) & (values <= 1)):
            return {"ok": False, "error": f"malformed probabilities for {path}"}
    return {
        "ok": True,
        "runtime": predictor.info["runtime"],
        "load_seconds": load_s,
        "latency_ms_max": max(latencies),
        "latency_ms_p50": float(np.median(latencies)),
        "images": len(images),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2:])))
