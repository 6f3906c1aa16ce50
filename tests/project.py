"""A throwaway multitag project for end-to-end tests: code, dvc.yaml, tiny params, own git,
DVC, MLflow and Prefect state, all under one temporary folder."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COPIED = ["multitag", "flows", "tasks", "params.yaml", "dvc.yaml", "prefect.yaml", ".dvcignore"]

TINY = {
    "data.synthetic": {"n_images": 160, "image_size": 48, "seed": 0},
    "preprocess.image_size": 32,
    "train.architectures": ["small_cnn"],
    "train.head_epochs": 2,
    "train.fine_tune_epochs": 1,
    "train.small_cnn_epochs": 3,
    "train.batch_size": 32,
    "evaluate.latency_runs": 3,
    "gate.min_improvement": -1.0,
    "gate.baselines": ["class_prior"],  # a 3-epoch small_cnn on 160 shapes need not beat a probe
    "retrain.min_feedback": 3,
}


def make_project(root: Path, overrides: dict | None = None) -> Path:
    """Copy the project's code and pipeline files to `root` with tiny params; git + dvc init."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in {**TINY, **(overrides or {})}.items():
        group, key = dotted.split(".", 1)
        params[group][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text((REPO / ".gitignore").read_text())
    run(["git", "init", "-q"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "test project"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    return root


def project_env(root: Path) -> dict[str, str]:
    """Environment that keeps every store of the run inside the project folder."""
    keras_home = root / ".keras"
    (keras_home / "models").mkdir(parents=True, exist_ok=True)
    for weights in (SHARED / "weights").glob("*.h5"):
        target = keras_home / "models" / weights.name
        if not target.exists():
            os.symlink(weights, target)
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MULTITAG_REGISTRY_LOCK": str(root / ".multitag-registry.lock"),  # the default name, which .gitignore lists
        "KERAS_HOME": str(keras_home),
        "PREFECT_HOME": str(root / ".prefect"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, check=True, capture_output=True, text=True)


def stored_aliases(database: Path, model_name: str = "multitag") -> dict[str, str]:
    """Alias -> version of `model_name` as stored in an MLflow SQLite file, read with sqlite3.

    Deliberately not through MLflow: its tracking and registry URIs are process-wide, so a test
    that asks MLflow can be answered by another database than the one it means to check.
    """
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT alias, version FROM registered_model_aliases WHERE name = ?", (model_name,))
        return {alias: str(version) for alias, version in rows}
