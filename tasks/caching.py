"""Task cache keys from file content, never from arrays or models held in memory.

A key covers the task's parameter group, the content of its input files and the current
content of its outputs, so a deleted or edited output re-runs the task instead of trusting
a stale cached result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from multitag.config import load_params
from multitag.lifecycle.versioning import dvc_dir_hash


def content_hash(path: Path) -> str:
    """md5 of a file or DVC-style hash of a directory; 'missing' when absent."""
    if path.is_dir():
        return dvc_dir_hash(path)
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    return "missing"


DVC_FILE = Path(__file__).resolve().parents[1] / "dvc.yaml"


def stage_code(stage: str, dvc_file: Path = DVC_FILE) -> list[str]:
    """The code folders `dvc.yaml` declares for `stage`: a task's cache key covers exactly the
    code DVC would re-run it for (one declaration, read by both)."""
    spec = yaml.safe_load(dvc_file.read_text())["stages"][stage]
    deps = spec.get("do", spec)["deps"]
    return [dep for dep in deps if isinstance(dep, str) and dep.startswith("multitag/")]


def files_key(groups: list[str], inputs: list[str], outputs: list[str], extra: list[str] = ()) -> Callable[[Any, dict], str]:
    """A Prefect cache_key_fn hashing params groups, input and output paths, and named task arguments."""

    def key(context: Any, parameters: dict) -> str:
        params = load_params(parameters.get("params_path", "params.yaml")).model_dump(mode="json", by_alias=True)
        payload = {
            "params": {g: params[g] for g in groups},
            "inputs": {p: content_hash(Path(p)) for p in inputs},
            "outputs": {p: content_hash(Path(p)) for p in outputs},
            "args": {name: parameters.get(name) for name in extra},
            "task": context.task.name,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    return key
