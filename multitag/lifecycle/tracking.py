"""MLflow tracking: one parent run per pipeline run, a nested run per architecture, and the
model logged with everything needed to serve it from its URI alone. DVCLive writes the same
run's curves and results in the layout `dvc metrics show` and `dvc plots show` read.

Defaults to the embedded backend (`sqlite:///mlflow.db`, artefacts in `mlartifacts/`);
`MLFLOW_TRACKING_URI` points the same code at a tracking server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np

from multitag.errors import UsageError
from multitag.layout import Layout
from multitag.lifecycle import drift
from multitag.modeling import metrics

if TYPE_CHECKING:  # evaluate.py imports Keras (6 s): `registry list` and the server's registry calls need none of it
    from multitag.modeling.evaluate import Evaluation
    from multitag.modeling.train_record import TrainResult

EXPERIMENT = "multitag"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def configure(experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the configured backend and make sure the experiment exists.

    The registry follows the tracking URI unless the user sets `MLFLOW_REGISTRY_URI`. We never
    call `mlflow.set_registry_uri`: it pins a process-wide URI *and* writes it into the
    environment, so a later `configure()` for another backend would keep registering models in
    the first one (seen in the test session: versions landed in another project's database).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None if uri.startswith("http") else Path("mlartifacts").resolve().as_uri()
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return uri


@contextmanager
def pipeline_run(name: str, tags: dict[str, str]) -> Iterator[mlflow.ActiveRun]:
    """The parent run of one pipeline run; nested architecture runs hang under it."""
    configure()
    with mlflow.start_run(run_name=name, tags=tags) as run:
        yield run


def model_metadata(evaluation: Evaluation, input_size: int, resize: str) -> dict:
    """What a server needs besides the weights: classes, thresholds, input contract, and the
    reference its predictions are compared with for drift (per-class positive rates on test)."""
    reference = drift.reference_from_scores(evaluation.scores_test, evaluation.thresholds, evaluation.classes)
    return {
        "architecture": evaluation.architecture,
        "classes": evaluation.classes,
        "thresholds": evaluation.thresholds,
        "default_threshold_classes": evaluation.default_threshold_classes,
        "input_size": input_size,
        drift.METADATA_KEY: reference.as_metadata(),
        "preprocessing": {
            "input": "RGB pixels 0-255 as float32, shape (N, input_size, input_size, 3)",
            "resize": resize,
            "decode": "multitag.data.images.decode (EXIF orientation applied, any mode to RGB)",
            "normalisation": "inside the model graph",
        },
    }


def log_candidate(
    model,
    evaluation: Evaluation,
    train_info: TrainResult,
    history: dict[str, list[float]],
    example: np.ndarray,
    resize: str,
    tags: dict[str, str],
) -> tuple[str, str]:
    """Nested run for one architecture: params, curves, metrics, plots and the model. Returns
    (run_id, model_uri)."""
    with mlflow.start_run(run_name=evaluation.architecture, nested=True, tags={**tags, "architecture": evaluation.architecture}) as run:
        mlflow.log_params({k: v for k, v in train_info.to_json().items() if k not in ("classes", "model_path")})
        for key, values in history.items():
            for step, value in enumerate(values):
                mlflow.log_metric(key, value, step=step)
        for split, result in (("val", evaluation.val), ("test", evaluation.test)):
            mlflow.log_metrics(metrics.flat_metrics(result["tuned"], split))
            mlflow.log_metrics(metrics.flat_metrics(result["at_0.5"], f"{split}_at05"))
        mlflow.log_metrics({"latency_ms_p50": evaluation.latency_ms_p50, "size_mb": evaluation.size_mb})
        _log_plots(evaluation, history, example)
        model_uri = log_keras_model(model, example[:1].astype("float32"), model_metadata(evaluation, int(example.shape[1]), resize))
        mlflow.log_dict({"test": evaluation.test, "val": evaluation.val}, "evaluation.json")
        return run.info.run_id, model_uri.format(run_id=run.info.run_id)


def serving_requirements() -> list[str]:
    """Pinned from this environment: MLflow's inference would re-import TensorFlow in a
    subprocess (10-30 s per logged model) to find the same answer."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("tensorflow-cpu", "keras", "mlflow", "numpy", "pillow"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def log_keras_model(model, batch: np.ndarray, metadata: dict) -> str:
    """Save the MLflow Keras model locally, then upload it under the run's `model/` path.

    `mlflow.keras.log_model` with an input example fails in MLflow 3.17 (it writes the example
    before creating the model folder); saving into an existing folder avoids that. The result is
    an ordinary `runs:/<run_id>/model` URI that loads and registers like any other.
    """
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        path.mkdir()
        mlflow.keras.save_model(
            model,
            str(path),
            signature=infer_signature(batch, model.predict_on_batch(batch)),
            input_example=batch,
            metadata=metadata,
            pip_requirements=serving_requirements(),
        )
        mlflow.log_artifacts(str(path), "model")
    return "runs:/{run_id}/model"


def _log_plots(evaluation: Evaluation, history: dict[str, list[float]], example: np.ndarray) -> None:
    from multitag.modeling import plots  # matplotlib: only where plots are drawn

    tuned = evaluation.test["tuned"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if history:  # a quick refit of the probe trains no epoch: no curve to draw
            plots.training_curves(history, folder / "training_curves.png")
        plots.per_class_ap_bar({name: c["ap"] for name, c in tuned["per_class"].items()}, folder / "per_class_ap.png")
        plots.precision_recall_curves(evaluation.y_test, evaluation.scores_test, evaluation.classes, folder / "precision_recall.png")
        plots.confusion_counts(tuned["per_class"], folder / "confusion_counts.png")
        count = min(16, len(example))
        plots.prediction_grid(
            example[:count],
            evaluation.y_test[:count],
            evaluation.scores_test[:count],
            np.asarray(evaluation.thresholds),
            evaluation.classes,
            folder / "predictions.png",
        )
        mlflow.log_artifacts(str(folder), "plots")


MODEL_CACHE_KEEP = 4  # downloaded models kept: the champion, the challenger, a candidate and one more


def download_model(model_uri: str, cache: Path | None = None) -> Path:
    """The logged model's folder on this machine, from any MLflow model URI (runs:/, models:/, m-...):
    the folder itself for a local artefact store; from a remote one, a copy per URI under `cache`
    (Layout().model_cache) that every later load reuses, the least recently used beyond
    MODEL_CACHE_KEEP deleted (a server once left a new temporary copy per load, never deleted).
    A URI through an alias (`@champion`) or `latest` names no fixed model: it is downloaded anew,
    into the cache all the same. One download serves the metadata, the Keras model and any export."""
    if _local_store(model_uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    cache = cache or Layout().model_cache
    fixed = "@" not in model_uri and not model_uri.rstrip("/").endswith("/latest")
    target = cache / hashlib.sha256(model_uri.encode()).hexdigest()[:24]
    if not fixed or not (target / "MLmodel").exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as partial:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=partial))
            shutil.rmtree(target, ignore_errors=True)
            os.replace(downloaded, target)  # whole or not at all: a reader never sees half a model
    os.utime(target)  # recently used
    for stale in sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)[
        :-MODEL_CACHE_KEEP
    ]:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def _local_store(model_uri: str) -> bool:
    """Whether the model's artefacts are files on this machine already (the embedded default)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    repository = get_artifact_repository(model_uri)
    return isinstance(getattr(repository, "repo", repository), LocalArtifactRepository)


def logged_metadata(folder: Path) -> dict:
    """The multitag metadata (classes, thresholds, input size, preprocessing) of a downloaded model."""
    return mlflow.models.Model.load(str(folder)).metadata or {}


def load_keras(folder: Path):
    """The Keras model of a downloaded model folder."""
    import multitag.modeling.models  # noqa: F401  registers custom layers before deserialising

    return mlflow.keras.load_model(str(folder))


def log_model_files(model_uri: str, files: list[Path], folder: str) -> None:
    """Add `files` under `folder` inside a logged model, so that its URI alone, and every registry
    version made from it (their source is the same folder), carries them. `model_uri` is a
    `runs:/<run_id>/<path>` URI, as `log_candidate` returns."""
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if not RunsArtifactRepository.is_runs_uri(model_uri):
        raise UsageError(f"{model_uri} is not a runs:/ URI: files can only be added to a model logged under a run")
    run_id, path = RunsArtifactRepository.parse_runs_uri(model_uri)
    client = mlflow.MlflowClient()
    for file in files:
        client.log_artifact(run_id, str(file), f"{path}/{folder}")


def log_dvc_metrics(directory: Path, histories: dict[str, dict[str, list[float]]], results: dict[str, dict]) -> Path:
    """Each architecture's training curves and evaluation results in DVCLive's layout; returns
    its `metrics.json`.

    Curves: `plots/metrics/<arch>/train/loss.tsv` and `.../eval/mAP.tsv` (DVCLive's names for
    Keras' `loss` and `val_mAP`), one step per epoch, the head phase then fine-tuning. Results:
    `metrics.json` holds `results[arch]` beside the last epoch's values. dvc.yaml declares both,
    so DVCLive writes no dvc.yaml of its own, and the pipeline's commit is the record: no DVC
    experiment is saved.
    """
    from dvclive import Live

    curves = {architecture: _epoch_curves(history) for architecture, history in histories.items()}
    epochs = max((len(values) for curve in curves.values() for values in curve.values()), default=0)
    with Live(str(directory), save_dvc_exp=False, dvcyaml=None) as live:
        for epoch in range(epochs):
            for architecture, curve in curves.items():
                for name, values in curve.items():
                    if epoch < len(values):
                        live.log_metric(f"{architecture}/{name}", values[epoch])
            live.next_step()
        for architecture, result in results.items():
            live.summary.setdefault(architecture, {}).update(result)  # None and lists too, as JSON
    return Path(live.metrics_file)


def _epoch_curves(history: dict[str, list[float]]) -> dict[str, list[float]]:
    """`head_loss` + `fine_tune_loss` -> `train/loss` (and `val_mAP` -> `eval/mAP`): both phases
    in a row, under the names DVCLive's Keras callback gives."""
    from dvclive.utils import standardize_metric_name

    from multitag.modeling.train import PHASES

    curves: dict[str, list[float]] = {}
    for phase in PHASES:
        for key, values in history.items():
            if key.startswith(f"{phase}_"):
                name = standardize_metric_name(key.removeprefix(f"{phase}_"), "dvclive.keras")
                curves.setdefault(name, []).extend(values)
    return curves
