"""The `train` stage: one architecture on the processed arrays (modeling/train.py), in a process of
its own when the flows call it."""

from __future__ import annotations

from pathlib import Path

from multitag.config import Params
from multitag.layout import Layout


def train_stage(params: Params, architecture: str, layout: Layout = Layout(), init_model: Path | None = None, quick: bool = False) -> dict:
    """Train one architecture on the processed arrays (a warm start from `init_model`; `quick`:
    only its probe, else its head); writes models/<arch>/."""
    from dataclasses import asdict

    from multitag.modeling.train import train_architecture

    result = train_architecture(
        architecture, layout.processed, layout.models / architecture, params.train, init_model, layout.feature_cache, quick
    )
    return asdict(result)


def train_in_subprocess(
    architecture: str, params_path: Path, root: Path = Path("."), init_model: Path | None = None, quick: bool = False
) -> Path:
    """Train in a fresh process so TensorFlow's memory goes back to the OS when it ends."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "multitag.cli", "train", "--arch", architecture, "--params", str(params_path)]
    if init_model is not None:
        command += ["--init-model", str(init_model)] + (["--quick"] if quick else [])
    subprocess.run(command, cwd=root, check=True)
    return Layout(root).models / architecture
