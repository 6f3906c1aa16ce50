"""Benchmark serving: the project's /predict against a naive handler, on one MobileNetV2 224 model.

- project: `uvicorn --factory multitag.serving.app:create_app` serving `models:/bench@champion` from a throwaway registry:
  JPEG draft-mode decode (`multitag.data.images.decode`) in the threadpool, the model calls
  micro-batched (`multitag.serving.batching`: requests arriving together share one
  `predict_on_batch`), each image stored for /feedback.
- unbatched: the same server with `serve.batch_max_size: 1`, the path before micro-batching:
  every request decodes and makes its own `predict_on_batch` call in the threadpool.
- naive: a FastAPI handler in the same style as most tutorials, but fair: per request, a full PIL
  decode and resize of each file, then ONE `predict_on_batch` for its files (not `model.predict`,
  whose per-call set-up costs tens of ms), on the event loop.

All servers load the same registered version (ImageNet MobileNetV2 backbone + an untrained
20-class head: speed, not accuracy), run at the same time as their own uvicorn processes on
loopback (idle while another is measured), and get the same requests, in interleaved rounds
(A B C, A B C, ...) so that a slow spell of a shared machine hits every variant alike:

1. sequential (project, naive): one client, a warm-up, single-image requests (p50 / p95 latency,
   client-side, HTTP included), then requests carrying a batch of distinct photos (images/s);
2. concurrent load (project, unbatched, naive): 1, 8 and 32 clients each sending single photos
   back to back (requests/s, p50 / p95), against the issue's target at 8 clients: at least 2x the
   unbatched throughput with a p95 at most 2x the unbatched single-client p95.

Beside them, the model alone (in this process, no HTTP) at batch 1, 8 and 16: the most any
server can reach here, and how much batching can give on this machine.
Photos: real VOC JPEGs from ../shared/datasets/voc-real.

    .venv/bin/python bench/serve.py                      # 200 single requests, 10 batches of 16, load at 1/8/32 clients
    .venv/bin/python bench/serve.py --requests 50 --batches 3 --load-clients 8 --rounds 1

Writes bench/results/serve.json.

Runtime section, on its own (`--runtime`, no servers): the same model's TFLite export, as the API
serves a version the gate logged one for, against Keras `predict_on_batch`, single-photo p50 / p95
and a batch of 8, in interleaved rounds (`runtime_section`). Writes bench/results/runtime.json.

    .venv/bin/python bench/serve.py --runtime            # 200 single-photo calls per runtime, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
SEQUENTIAL_VARIANTS = ("project", "naive")
LOAD_VARIANTS = ("project", "batched-keras", "unbatched", "naive")  # project: micro-batching + the TFLite export, as served
LOAD_PHOTOS = 64  # distinct photos the load clients cycle through
LOAD_TARGET_SPEEDUP = 2.0  # at 8 clients: project req/s over unbatched req/s, at least
LOAD_TARGET_P95_FACTOR = 2.0  # at 8 clients: project p95 over the unbatched single-client p95, at most


def stage_weights(keras_home: Path) -> None:
    """Keras looks in $KERAS_HOME/models/ before downloading: put the verified offline file there."""
    target = keras_home / "models" / WEIGHTS.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(WEIGHTS, target)


def throwaway_workspace(prefix: str) -> Path:
    """A scratch folder holding this process's registry (MLflow on SQLite, its lock), with the
    offline ImageNet weights where Keras looks; returns the folder."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
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
    return scratch


def build_model():
    """MobileNetV2 224 (ImageNet) + an untrained 20-class head: the served graph's cost, not its accuracy."""
    from multitag.modeling import models

    features = models.build_feature_extractor("mobilenetv2", INPUT_SIZE, "imagenet")
    return models.with_sigmoid(models.assemble(features, models.build_head(features.output_shape[-1], len(VOC_CLASSES), [128], 0.2)))


def register_champion(scratch: Path, model, photos: list[bytes]) -> str:
    """Log `model` the project's way, export it behind the gate's parity check (on `photos`, with
    seeded labels: parity compares two runtimes on the same labels), register it, promote it."""
    import mlflow
    import mlflow.keras.save

    from multitag.data.images import decode
    from multitag.lifecycle import registry, tracking
    from multitag.lifecycle.export import export_for_serving

    # Requirements inference imports TensorFlow again in a subprocess (~30 s); a bench model
    # never leaves this machine, so MLflow's default requirements are enough.
    mlflow.keras.save.infer_pip_requirements = lambda path, flavor, fallback=None, **_: fallback
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
        uri = tracking.log_keras_model(model, np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), "float32"), metadata)
    uri = uri.format(run_id=run.info.run_id)
    images = np.stack([decode(photo, INPUT_SIZE, "stretch") for photo in photos])
    reference = np.asarray(model.predict_on_batch(images.astype("float32")), dtype="float64")
    y_true = np.random.default_rng(0).random(reference.shape) < 0.3
    parity = export_for_serving(model, uri, images, y_true, reference, VOC_CLASSES)
    print(parity.summary(), flush=True)
    version = registry.register(uri, MODEL_NAME, {"architecture": "mobilenetv2"})
    registry.promote(MODEL_NAME, version)
    return f"models:/{MODEL_NAME}/{version}"


def naive_app(model_uri: str):
    """The baseline: per file a full PIL decode + resize, then one `predict_on_batch` per request, on the event loop."""
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
        photos = []
        for upload in files:
            image = Image.open(io.BytesIO(await upload.read())).convert("RGB").resize((INPUT_SIZE, INPUT_SIZE))
            photos.append(np.asarray(image, dtype="float32"))
        scores = np.asarray(model.predict_on_batch(np.stack(photos)))
        return {
            "predictions": [
                {"filename": upload.filename, "probabilities": dict(zip(VOC_CLASSES, row.tolist()))} for upload, row in zip(files, scores)
            ]
        }

    return app


@contextlib.contextmanager
def running(command: list[str], cwd: Path, log_path: Path, timeout_s: float = 600, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start a server process (with `env` added to ours), wait until /health reports a model, yield its URL, stop it by pid."""
    import httpx

    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
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


def as_files(payloads: list[bytes]) -> list:
    """A /predict form: one `files` part per photo."""
    return [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(payloads)]


def latency_summary(latencies_ms: list[float]) -> dict:
    return {
        "latency_ms_p50": round(float(np.percentile(latencies_ms, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(latencies_ms, 95)), 2),
        "latency_ms_mean": round(float(np.mean(latencies_ms)), 2),
    }


def measure(url: str, single: bytes, batch: list[bytes], requests: int, batches: int) -> dict:
    """One round: sequential single-image latencies and the time of batched requests, from the client's side."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(10):
            client.post("/predict", files=as_files([single])).raise_for_status()
        client.post("/predict", files=as_files(batch)).raise_for_status()
        latencies = []
        for _ in range(requests):
            started = time.perf_counter()
            client.post("/predict", files=as_files([single])).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for _ in range(batches):
            client.post("/predict", files=as_files(batch)).raise_for_status()
        elapsed = time.perf_counter() - started
    return {"latencies_ms": latencies, "batch_images": batches * len(batch), "batch_seconds": elapsed}


def sequential_summary(rounds: list[dict]) -> dict:
    """Latency percentiles over every round's requests, images/s over every round's batches."""
    return {
        **latency_summary([ms for one in rounds for ms in one["latencies_ms"]]),
        "batch_images_per_s": round(sum(one["batch_images"] for one in rounds) / sum(one["batch_seconds"] for one in rounds), 2),
    }


def interleaved(rounds: int, cases: list, measure_one: Callable[[object], dict]) -> dict[object, list[dict]]:
    """`measure_one(case)` for every case in turn, `rounds` times over (A B C, A B C, ...), so a slow
    spell of the shared machine hits every case alike rather than one block of runs."""
    samples: dict[object, list[dict]] = {case: [] for case in cases}
    for _ in range(rounds):
        for case in cases:
            samples[case].append(measure_one(case))
    return samples


# The project's API in a uvicorn process of its own (`running` adds --port); PARAMS_ENV picks its params.
PROJECT_SERVER = [
    sys.executable,
    "-m",
    "uvicorn",
    "--factory",
    "multitag.serving.app:create_app",
    "--host",
    "127.0.0.1",
    "--log-level",
    "warning",
]


def server_commands(scratch: Path, model_uri: str, max_files: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each variant's server: its command and extra environment. The project servers differ only in
    `serve.batch_max_size` and `serve.runtime`; `unbatched` is the path before micro-batching and the
    export (one Keras call per request). Each has its own feedback store."""
    from multitag.serving.app import PARAMS_ENV

    project = PROJECT_SERVER
    return {
        "project": (project, {PARAMS_ENV: str(write_params(scratch, "project", max_files))}),
        "batched-keras": (project, {PARAMS_ENV: str(write_params(scratch, "batched-keras", max_files, runtime="keras"))}),
        "unbatched": (project, {PARAMS_ENV: str(write_params(scratch, "unbatched", max_files, batch_max_size=1, runtime="keras"))}),
        "naive": ([sys.executable, str(Path(__file__).resolve()), "--naive-server", model_uri], {}),
    }


def write_params(scratch: Path, variant: str, max_files: int, **serve: object) -> Path:
    """A params file for one project server: the bench model, its own feedback store, any serve settings."""
    import yaml

    params = {
        "registry": {"model_name": MODEL_NAME},
        "serve": {"max_files": max_files, **serve},
        "feedback": {"db_path": f"data/{variant}/queue.db", "images_dir": f"data/{variant}/images"},
    }
    path = scratch / f"params-{variant}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def model_alone(model, sizes: tuple[int, ...] = (1, 8, 16)) -> dict[str, float]:
    """Images/s of the model alone (this process: no HTTP, no decode) per batch size: the most any
    server reaches on this machine, and how much batching can give here at all."""
    rates = {}
    for size in sizes:
        photos = np.random.default_rng(0).integers(0, 256, (size, INPUT_SIZE, INPUT_SIZE, 3)).astype("float32")
        for _ in range(2):  # the first call of a new batch size traces the graph
            model.predict_on_batch(photos)
        calls = max(3, 32 // size)
        started = time.perf_counter()
        for _ in range(calls):
            model.predict_on_batch(photos)
        rates[str(size)] = round(calls * size / (time.perf_counter() - started), 1)
    print("model alone, images/s by batch size: " + ", ".join(f"{size}: {rate}" for size, rate in rates.items()), flush=True)
    return rates


RUNTIME_RESULTS_PATH = RESULTS_DIR / "runtime.json"
RUNTIME_BATCH = 8  # photos per batched call in the runtime section


def timed_ms(call: Callable[[], object], runs: int) -> list[float]:
    """Wall time (ms) of `runs` calls after one untimed call (tracing, tensor allocation)."""
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def runtime_section(model, photos: list[bytes], scratch: Path, runs: int, rounds: int) -> dict:
    """Serving runtime, in this process (no HTTP): the model's TFLite export as the API serves it
    (`multitag.lifecycle.tflite`, XNNPACK, image by image under a lock) against Keras
    `predict_on_batch`. Single photo: p50 / p95 and the ratio. A batch of RUNTIME_BATCH photos:
    Keras in one call, the export image by image (what serves), and the export's input resized to
    the batch (the alternative: one call, but a reallocation whenever the batch size changes).
    Interleaved rounds, so a slow spell of the shared machine hits every variant alike."""
    import tensorflow as tf

    from multitag.data.images import decode
    from multitag.lifecycle.export import to_tflite
    from multitag.lifecycle.tflite import TFLiteModel

    started = time.perf_counter()
    path = to_tflite(model, scratch / "model.tflite")
    print(f"exported to TFLite in {time.perf_counter() - started:.0f} s ({path.stat().st_size / 1e6:.1f} MB)", flush=True)
    exported = TFLiteModel(path)
    batch = np.stack([decode(data, INPUT_SIZE, "stretch") for data in photos[:RUNTIME_BATCH]]).astype("float32")
    resized = tf.lite.Interpreter(model_path=str(path))
    resized.resize_tensor_input(resized.get_input_details()[0]["index"], list(batch.shape))
    resized.allocate_tensors()

    def resized_call() -> None:
        resized.set_tensor(resized.get_input_details()[0]["index"], batch)
        resized.invoke()

    calls = {
        "keras_single": lambda: model.predict_on_batch(batch[:1]),
        "tflite_single": lambda: exported.predict_on_batch(batch[:1]),
        "keras_batch": lambda: model.predict_on_batch(batch),
        "tflite_batch_per_image": lambda: exported.predict_on_batch(batch),
        "tflite_batch_resized": resized_call,
    }
    per_round = max(1, -(-runs // rounds))
    samples = interleaved(rounds, list(calls), lambda name: {"ms": timed_ms(calls[name], per_round if "single" in name else 3)})
    results = {name: latency_summary([ms for one in measured for ms in one["ms"]]) for name, measured in samples.items()}
    for name, result in results.items():
        if "batch" in name:
            result["images_per_s"] = round(RUNTIME_BATCH * 1000 / result["latency_ms_p50"], 1)
    ratio = results["keras_single"]["latency_ms_p50"] / results["tflite_single"]["latency_ms_p50"]
    max_difference = float(np.abs(exported.predict_on_batch(batch) - model.predict_on_batch(batch)).max())
    for name, result in results.items():
        print(f"{name:24s} p50 {result['latency_ms_p50']:7.2f} ms  p95 {result['latency_ms_p95']:7.2f} ms", flush=True)
    print(f"single photo, Keras p50 / TFLite p50: {ratio:.2f}x  (max |score difference| on {RUNTIME_BATCH} photos: {max_difference:.1e})")
    return {
        "single_runs": per_round * rounds,
        "batch_size": RUNTIME_BATCH,
        **results,
        "keras_over_tflite_single_p50": round(ratio, 2),
        "max_score_difference": max_difference,
        "tflite_mb": round(path.stat().st_size / 1e6, 1),
    }


def sequential_section(urls: dict[str, str], single: bytes, batch: list[bytes], requests: int, batches: int, rounds: int) -> dict:
    """One client: single-image latency and batched images/s of the project against naive, with the issue's targets."""
    share = lambda total: max(1, -(-total // rounds))  # noqa: E731  (per round, rounded up)
    samples = interleaved(rounds, list(SEQUENTIAL_VARIANTS), lambda v: measure(urls[v], single, batch, share(requests), share(batches)))
    results = {variant: sequential_summary(runs) for variant, runs in samples.items()}
    for variant, result in results.items():
        print(
            f"{variant:8s} p50 {result['latency_ms_p50']:7.2f} ms  p95 {result['latency_ms_p95']:7.2f} ms  "
            f"batch of {len(batch)}: {result['batch_images_per_s']:6.1f} images/s",
            flush=True,
        )
    p50_ratio = results["naive"]["latency_ms_p50"] / results["project"]["latency_ms_p50"]
    throughput_ratio = results["project"]["batch_images_per_s"] / results["naive"]["batch_images_per_s"]
    meets = results["project"]["latency_ms_p50"] <= TARGET_P50_MS and p50_ratio >= TARGET_RATIO
    print(
        f"naive/project p50: {p50_ratio:.2f}x  project/naive throughput: {throughput_ratio:.2f}x  "
        f"targets (p50 <= {TARGET_P50_MS:.0f} ms, >= {TARGET_RATIO:.0f}x): {'met' if meets else 'NOT met'}",
        flush=True,
    )
    return {
        "batch_size": len(batch),
        "requests": share(requests) * rounds,
        "batches": share(batches) * rounds,
        **results,
        "naive_over_project_p50": round(p50_ratio, 2),
        "project_over_naive_throughput": round(throughput_ratio, 2),
        "targets": {"p50_ms_max": TARGET_P50_MS, "p50_ratio_min": TARGET_RATIO},
        "meets_targets": meets,
    }


async def closed_loop(url: str, photos: list[bytes], clients: int, requests: int) -> dict:
    """`clients` clients at once, each sending single photos back to back, `requests` in all after a
    warm-up of two each: every latency (ms, client-side) and the wall time of the measured part."""
    import httpx

    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def one_client(first: int, count: int, record: bool) -> None:
            for index in range(first, first + count):
                started = time.perf_counter()
                (await client.post("/predict", files=as_files([photos[index % len(photos)]]))).raise_for_status()
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one_client(2 * c, 2, record=False) for c in range(clients)))  # connections open, threads awake
        per_client = max(1, requests // clients)
        started = time.perf_counter()
        await asyncio.gather(*(one_client(c * per_client, per_client, record=True) for c in range(clients)))
        return {"latencies_ms": latencies, "seconds": time.perf_counter() - started}


def load_section(urls: dict[str, str], photos: list[bytes], levels: list[int], requests: int, rounds: int) -> dict:
    """Concurrent single-photo clients against micro-batching, the unbatched path and naive; the issue's target at 8 clients."""
    cases = [(clients, variant) for clients in levels for variant in LOAD_VARIANTS]
    samples = interleaved(rounds, cases, lambda case: asyncio.run(closed_loop(urls[case[1]], photos, case[0], requests)))
    table: dict[int, dict[str, dict]] = {}
    for (clients, variant), runs in samples.items():
        latencies = [ms for run in runs for ms in run["latencies_ms"]]
        rate = len(latencies) / sum(run["seconds"] for run in runs)
        table.setdefault(clients, {})[variant] = {"requests_per_s": round(rate, 2), **latency_summary(latencies)}
    print(f"{'clients':>7}  {'variant':10s} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8}  req/s vs unbatched", flush=True)
    for clients, row in table.items():
        for variant, result in row.items():
            result["throughput_over_unbatched"] = round(result["requests_per_s"] / row["unbatched"]["requests_per_s"], 2)
            print(
                f"{clients:>7}  {variant:10s} {result['requests_per_s']:7.1f} {result['latency_ms_p50']:8.1f} "
                f"{result['latency_ms_p95']:8.1f}  {result['throughput_over_unbatched']:.2f}x",
                flush=True,
            )
    return {"requests_per_run": requests, "rounds": rounds, "photos": len(photos), "clients": table, "target": load_verdict(table)}


def load_verdict(table: dict[int, dict[str, dict]]) -> dict:
    """The issue's target: at 8 clients, at least 2x the unbatched req/s, with a p95 at most 2x the
    unbatched single-client p95. Printed as PASS or MISS, each part with its number."""
    if not {1, 8} <= set(table):
        print("target not checked: it needs runs at 1 and 8 clients (--load-clients)")
        return {"checked": False}
    batched, unbatched_alone = table[8]["project"], table[1]["unbatched"]
    p95_max = LOAD_TARGET_P95_FACTOR * unbatched_alone["latency_ms_p95"]
    verdict = {
        "checked": True,
        "throughput_over_unbatched": batched["throughput_over_unbatched"],
        "throughput_over_unbatched_min": LOAD_TARGET_SPEEDUP,
        "p95_ms": batched["latency_ms_p95"],
        "p95_ms_max": round(p95_max, 2),
    }
    verdict["throughput_met"] = verdict["throughput_over_unbatched"] >= LOAD_TARGET_SPEEDUP
    verdict["p95_met"] = verdict["p95_ms"] <= p95_max
    verdict["meets_target"] = verdict["throughput_met"] and verdict["p95_met"]
    print(
        f"target at 8 clients: throughput {verdict['throughput_over_unbatched']:.2f}x unbatched (>= {LOAD_TARGET_SPEEDUP:.0f}x: "
        f"{'met' if verdict['throughput_met'] else 'missed'}), p95 {verdict['p95_ms']:.1f} ms (<= {p95_max:.1f} ms, "
        f"{LOAD_TARGET_P95_FACTOR:.0f}x the unbatched single-client p95: {'met' if verdict['p95_met'] else 'missed'}): "
        f"{'PASS' if verdict['meets_target'] else 'MISS'}",
        flush=True,
    )
    return verdict


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential single-image requests per server (over all rounds)")
    parser.add_argument("--batches", type=int, default=10, help="batched requests per server (over all rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every measurement")
    parser.add_argument(
        "--load-clients", type=int, nargs="*", default=[1, 8, 32], help="concurrent clients per load run (none: no load runs)"
    )
    parser.add_argument("--load-requests", type=int, default=160, help="single-photo requests per load run")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per batched request (<= serve.max_files)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    parser.add_argument(
        "--runtime",
        action="store_true",
        help=f"only the runtime section: the TFLite export against Keras in this process, no servers (writes {RUNTIME_RESULTS_PATH.name})",
    )
    parser.add_argument("--runtime-runs", type=int, default=200, help="single-photo calls per runtime (over all rounds)")
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
    scratch = throwaway_workspace("multitag-bench-serve-")
    model = build_model()
    if args.runtime:
        photos = [p.read_bytes() for p in sorted(JPEG_DIR.glob("*.jpg"))[:RUNTIME_BATCH]]
        runtime = runtime_section(model, photos, scratch, args.runtime_runs, args.rounds)
        RUNTIME_RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        RUNTIME_RESULTS_PATH.write_text(json.dumps({**runtime, "rounds": args.rounds, "machine": machine_info()}, indent=1) + "\n")
        print(f"results written to {RUNTIME_RESULTS_PATH}")
        shutil.rmtree(scratch, ignore_errors=True)
        return
    photos = sorted(JPEG_DIR.glob("*.jpg"))
    model_uri = register_champion(scratch, model, [p.read_bytes() for p in photos[:LOAD_PHOTOS]])
    alone = model_alone(model)

    single, batch = photos[0].read_bytes(), [p.read_bytes() for p in photos[: args.batch_size]]
    load_photos = [p.read_bytes() for p in photos[:LOAD_PHOTOS]]
    with contextlib.ExitStack() as servers:
        urls = {
            variant: servers.enter_context(running(command, scratch, scratch / f"{variant}.log", env=env))
            for variant, (command, env) in server_commands(scratch, model_uri, max(16, args.batch_size)).items()
        }
        sequential = sequential_section(urls, single, batch, args.requests, args.batches, args.rounds)
        load = load_section(urls, load_photos, args.load_clients, args.load_requests, args.rounds) if args.load_clients else None
    summary = {
        "model": f"mobilenetv2 {INPUT_SIZE}px imagenet + 20-class head ({model_uri})",
        "single_image": str(photos[0].relative_to(SHARED)),
        "rounds": args.rounds,
        **sequential,
        "model_alone_images_per_s": alone,
        "concurrent_load": load,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"results written to {args.out}")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
