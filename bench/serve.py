"""Benchmark serving: the project's /predict against a naive handler, on one MobileNetV2 224 model.

- project: `uvicorn --factory multitag.serving.app:create_app` serving `models:/bench@champion` from a throwaway registry:
  JPEG draft-mode decode (`multitag.data.images.decode`), one `predict_on_batch` per request for all
  its files, the model call in the threadpool, each image stored for /feedback.
- naive: a FastAPI handler in the same style as most tutorials: for every file, a full PIL
  decode, a resize, and `model.predict` on that one image, run on the event loop.

Both servers load the same registered version (ImageNet MobileNetV2 backbone + an untrained
20-class head: speed, not accuracy), run one at a time as their own uvicorn process on loopback,
and get the same requests from one client: a warm-up, then sequential single-image requests
(p50 / p95 latency, client-side, HTTP included), then repeated requests carrying a batch of
distinct photos (images per second). Photos: real VOC JPEGs from ../shared/datasets/voc-real.

    .venv/bin/python bench/serve.py                      # 200 single requests, 10 batches of 16
    .venv/bin/python bench/serve.py --requests 50 --batches 3

Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np

# At module level, not in naive_app: FastAPI resolves the naive handler's annotations here.
from fastapi import FastAPI, File, UploadFile
from harness import RESULTS_DIR, ROOT, SHARED, VOC_DIR, WEIGHTS_DIR, free_port, machine_info

from multitag.data.sources.voc import VOC_CLASSES

JPEG_DIR = VOC_DIR / "JPEGImages"
WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
RESULTS_PATH = RESULTS_DIR / "serve.json"
MODEL_NAME = "bench"
INPUT_SIZE = 224
TARGET_P50_MS = 40.0
TARGET_RATIO = 2.0


def stage_weights(keras_home: Path) -> None:
    """Keras looks in $KERAS_HOME/models/ before downloading: put the verified offline file there."""
    target = keras_home / "models" / WEIGHTS.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(WEIGHTS, target)


def register_champion(scratch: Path) -> str:
    """Build MobileNetV2 224 (ImageNet) + a 20-class head, log it the project's way, register, promote."""
    import mlflow
    import mlflow.keras.save

    from multitag.lifecycle import registry, tracking
    from multitag.modeling import models

    # Requirements inference imports TensorFlow again in a subprocess (~30 s); a bench model
    # never leaves this machine, so MLflow's default requirements are enough.
    mlflow.keras.save.infer_pip_requirements = lambda path, flavor, fallback=None, **_: fallback
    features = models.build_feature_extractor("mobilenetv2", INPUT_SIZE, "imagenet")
    model = models.with_sigmoid(models.assemble(features, models.build_head(features.output_shape[-1], len(VOC_CLASSES), [128], 0.2)))
    metadata = {
        "architecture": "mobilenetv2",
        "classes": VOC_CLASSES,
        "thresholds": [0.5] * len(VOC_CLASSES),
        "input_size": INPUT_SIZE,
        "preprocessing": {"resize": "stretch", "normalisation": "inside the model graph"},
    }
    os.chdir(scratch)  # artefacts under scratch/mlartifacts
    tracking.configure()
    with mlflow.start_run(run_name="bench-serve") as run:
        uri = tracking._log_keras_model(model, np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), "float32"), metadata)
    version = registry.register(uri.format(run_id=run.info.run_id), MODEL_NAME, {"architecture": "mobilenetv2"})
    registry.promote(MODEL_NAME, version)
    return f"models:/{MODEL_NAME}/{version}"


def naive_app(model_uri: str):
    """The baseline: per file, full PIL decode + resize + `model.predict` on one image, on the event loop."""
    import io

    import mlflow
    from PIL import Image

    import multitag.modeling.models  # noqa: F401  registers the custom layers before loading

    model = mlflow.keras.load_model(model_uri)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model_loaded": True}

    @app.post("/predict")
    async def predict(files: Annotated[list[UploadFile], File()]) -> dict:
        results = []
        for upload in files:
            image = Image.open(io.BytesIO(await upload.read())).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE))
            scores = model.predict(np.asarray(image, dtype="float32")[None], verbose=0)[0]
            results.append({"filename": upload.filename, "probabilities": dict(zip(VOC_CLASSES, scores.tolist()))})
        return {"predictions": results}

    return app


@contextlib.contextmanager
def running(command: list[str], cwd: Path, log_path: Path, timeout_s: float = 600) -> Iterator[str]:
    """Start a server process, wait until /health reports a model, yield its URL, stop it by pid."""
    import httpx

    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen([*command, "--port", str(port)], cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not come up; last log lines:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=5).json().get("model_loaded"):
                    break
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def measure(url: str, single: bytes, batch: list[bytes], requests: int, batches: int) -> dict:
    """Sequential single-image latency (p50, p95) and batched throughput, from the client's side."""
    import httpx

    def files(payloads: list[bytes]) -> list:
        return [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(payloads)]

    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(10):
            client.post("/predict", files=files([single])).raise_for_status()
        client.post("/predict", files=files(batch)).raise_for_status()
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            client.post("/predict", files=files([single])).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for _ in range(batches):
            client.post("/predict", files=files(batch)).raise_for_status()
        elapsed = time.perf_counter() - started
    return {
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
        "latency_ms_mean": round(float(np.mean(latencies)), 2),
        "batch_images_per_s": round(batches * len(batch) / elapsed, 2),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential single-image requests per server")
    parser.add_argument("--batches", type=int, default=10, help="batched requests per server")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per batched request (<= serve.max_files)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    parser.add_argument("--naive-server", metavar="MODEL_URI", help=argparse.SUPPRESS)  # internal: run the baseline
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.naive_server:
        import uvicorn

        uvicorn.run(naive_app(args.naive_server), host="127.0.0.1", port=args.port, log_level="warning")
        return
    if not (JPEG_DIR.is_dir() and WEIGHTS.exists()):
        sys.exit(f"needs {JPEG_DIR} and {WEIGHTS} (the ../shared folder next to the repository)")
    scratch = Path(tempfile.mkdtemp(prefix="multitag-bench-serve-"))
    keras_home = Path(os.environ.get("KERAS_HOME", ROOT / ".keras"))
    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db",
            "MULTITAG_REGISTRY_LOCK": str(scratch / "registry.lock"),
            "KERAS_HOME": str(keras_home),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    stage_weights(keras_home)
    model_uri = register_champion(scratch)
    (scratch / "params.yaml").write_text(f"registry:\n  model_name: {MODEL_NAME}\nserve:\n  max_files: {max(16, args.batch_size)}\n")

    photos = sorted(JPEG_DIR.glob("*.jpg"))[: args.batch_size]
    single, batch = photos[0].read_bytes(), [p.read_bytes() for p in photos]
    commands = {
        "project": [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "multitag.serving.app:create_app",
            "--host",
            "127.0.0.1",
            "--log-level",
            "warning",
        ],
        "naive": [sys.executable, str(Path(__file__).resolve()), "--naive-server", model_uri],
    }
    results = {}
    for variant, command in commands.items():
        with running(command, scratch, scratch / f"{variant}.log") as url:
            results[variant] = measure(url, single, batch, args.requests, args.batches)
        print(
            f"{variant:8s} p50 {results[variant]['latency_ms_p50']:7.2f} ms  p95 {results[variant]['latency_ms_p95']:7.2f} ms  "
            f"batch of {len(batch)}: {results[variant]['batch_images_per_s']:6.1f} images/s",
            flush=True,
        )

    p50_ratio = results["naive"]["latency_ms_p50"] / results["project"]["latency_ms_p50"]
    throughput_ratio = results["project"]["batch_images_per_s"] / results["naive"]["batch_images_per_s"]
    summary = {
        "model": f"mobilenetv2 {INPUT_SIZE}px imagenet + 20-class head ({model_uri})",
        "single_image": str(photos[0].relative_to(SHARED)),
        "batch_size": len(batch),
        "requests": args.requests,
        "batches": args.batches,
        **results,
        "naive_over_project_p50": round(p50_ratio, 2),
        "project_over_naive_throughput": round(throughput_ratio, 2),
        "targets": {"p50_ms_max": TARGET_P50_MS, "p50_ratio_min": TARGET_RATIO},
        "meets_targets": results["project"]["latency_ms_p50"] <= TARGET_P50_MS and p50_ratio >= TARGET_RATIO,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"naive/project p50: {p50_ratio:.2f}x  project/naive throughput: {throughput_ratio:.2f}x  "
        f"targets (p50 <= {TARGET_P50_MS:.0f} ms, >= {TARGET_RATIO:.0f}x): {'met' if summary['meets_targets'] else 'NOT met'}"
    )
    print(f"results written to {args.out}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
