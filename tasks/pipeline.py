"""The pipeline's Prefect tasks. Each calls one function of multitag.stages (the same one
`dvc repro` runs) and returns small, JSON-able summaries: paths, hashes, versions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from multitag import stages
from multitag.config import load_params
from multitag.feedback.retraining import unfinished_export_owner
from multitag.layout import Layout
from multitag.lifecycle.gate_record import GateRecord
from multitag.lifecycle.registration import Registration
from tasks.caching import StageCache
from tasks.retrying import RETRIED

CACHED = {"persist_result": True}


@task(**RETRIED)
def apply_overrides(params_path: str, overrides: dict) -> str:
    """Record run parameters in params.yaml first, so DVC sees what this run used."""
    from multitag.params_file import set_params

    if overrides:
        set_params(Path(params_path), overrides)
    return params_path


# Deps, params and outs come from dvc.yaml (tasks/caching.py); only what DVC cannot track is named here.
SYNTHESIZE = StageCache("synthesize")
VALIDATE = StageCache(
    "validate",
    # the feedback export (it may not exist, which DVC refuses in a dep)
    extra_inputs=lambda _: [str(Layout().feedback_export)],
    # an export a killed retraining left behind is no input: only the stage itself takes it out again
    reusable=lambda _: unfinished_export_owner(Layout().feedback_export) is None,
)
PREPROCESS = StageCache("preprocess")
TRAIN = StageCache("train", extra_inputs=lambda p: [p["init_model"]] if p.get("init_model") else [], args=("architecture", "quick"))


@task(**RETRIED, **CACHED, cache_key_fn=SYNTHESIZE.key)
def synthesize(params_path: str) -> str:
    root = str(stages.synthesize_stage(load_params(params_path)))
    SYNTHESIZE.record({"params_path": params_path})
    return root


@task(**RETRIED, **CACHED, cache_key_fn=VALIDATE.key)
def validate(params_path: str) -> dict[str, str]:
    paths = {name: str(path) for name, path in stages.validate_stage(load_params(params_path)).items()}
    VALIDATE.record({"params_path": params_path})
    return paths


@task(**RETRIED, **CACHED, cache_key_fn=PREPROCESS.key)
def preprocess(params_path: str) -> dict:
    summary = stages.preprocess_stage(load_params(params_path))
    PREPROCESS.record({"params_path": params_path})
    return summary.to_json()


@task(**RETRIED, **CACHED, cache_key_fn=TRAIN.key)
def train(architecture: str, params_path: str, init_model: str | None = None, quick: bool = False) -> str:
    """Train in a subprocess so TensorFlow's memory is released after each architecture. A quick
    refit (only the cheap member of `init_model`: its probe, else its head; flows/nightly_retraining.py)
    runs in this process instead: it holds little memory, and the gate loads TensorFlow here anyway,
    so a process of its own would only add a start (about 7 s of a 2-minute target)."""
    if quick:
        stages.train_stage(load_params(params_path), architecture, init_model=Path(init_model) if init_model else None, quick=True)
        model_dir = str(Layout().models / architecture)
    else:
        model_dir = str(stages.train_in_subprocess(architecture, Path(params_path), init_model=Path(init_model) if init_model else None))
    TRAIN.record({"architecture": architecture, "params_path": params_path, "init_model": init_model, "quick": quick})
    return model_dir


@task
def evaluate(params_path: str, run_name: str, extra_tags: dict[str, str] | None = None) -> dict:
    """Evaluate in this process: the gate loads TensorFlow and the same models here right after, so
    a process of its own only added a start and TensorFlow's import (about 7 s a run)."""
    record = stages.evaluate_stage(load_params(params_path), run_name=run_name, extra_tags=extra_tags)
    print(Layout().comparison.read_text())  # the flows log prints: the table `multitag evaluate` shows
    return record.to_json()


@task
def gate(params_path: str) -> GateRecord:
    return stages.gate_stage(load_params(params_path))


@task(**RETRIED)
def register(params_path: str, extra_tags: dict[str, str] | None = None) -> Registration:
    """Retried on I/O errors, which is safe: the stage registers each candidate's run once and
    promoting the champion again changes nothing, so a retry never duplicates or re-promotes."""
    return stages.register_stage(load_params(params_path), extra_tags=extra_tags)


@task(**RETRIED)
def record_data_versions() -> None:
    """`dvc commit` the stages this run executed, so dvc.lock matches what is on disk."""
    subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "--quiet"], check=True)


@task
def publish_report(registration: Registration) -> str:
    """A Prefect markdown artifact with the comparison table and the gate verdict."""
    layout = Layout()
    markdown = "\n".join(
        [
            "# Training pipeline",
            "",
            "## Architectures",
            "",
            layout.comparison.read_text(),
            layout.gate_report.read_text(),
            f"Registered versions: {registration.versions}; champion is version {registration.champion_version}.",
        ]
    )
    create_markdown_artifact(markdown=markdown, key="training-pipeline-report", description="Comparison and gate verdict")
    return markdown
