"""training_pipeline: validate -> preprocess -> train (each architecture) -> evaluate -> gate
-> register. Runs in-process with no server (`python -m flows.training_pipeline`) or as the
`training-pipeline` deployment on a process work pool."""

from __future__ import annotations

from prefect import flow, get_run_logger

from multitag import stages
from multitag.config import load_params
from multitag.lifecycle.registration import Registration
from multitag.workspace import exclusive_run
from tasks import pipeline as t


def run_overrides(architectures: list[str] | None, epochs: int | None, data_source: str | None, data_path: str | None) -> dict:
    """Flow parameters as params.yaml keys; only the ones the user set."""
    overrides = {
        "train.architectures": architectures,
        "train.fine_tune_epochs": epochs,
        "train.small_cnn_epochs": epochs,
        "data.source": data_source,
        "data.path": data_path,
    }
    return {key: value for key, value in overrides.items() if value is not None}


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    architectures: list[str] | None = None,
    epochs: int | None = None,
    data_source: str | None = None,
    data_path: str | None = None,
    params_path: str = "params.yaml",
) -> Registration:
    """Train every configured architecture, let the gate judge the best, register them all."""
    with exclusive_run("training-pipeline flow"):
        params_path = t.apply_overrides(params_path, run_overrides(architectures, epochs, data_source, data_path))
        params = load_params(params_path)
        t.synthesize(params_path)  # generates shapes only when they are the data
        t.validate(params_path)
        t.preprocess(params_path)
        for architecture in params.train.architectures:
            t.train(architecture, params_path)
        t.evaluate(params_path, run_name="training-pipeline")
        t.gate(params_path)
        registration = t.register(params_path)
        t.record_data_versions()
    t.publish_report(registration)
    get_run_logger().info(stages.outcome_message(registration))
    return registration


if __name__ == "__main__":
    training_pipeline()
