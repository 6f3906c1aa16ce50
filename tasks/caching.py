"""Task cache keys from file content, never from arrays or models held in memory.

A key covers the task's parameter groups, the content of its input files and its named
arguments; a cached result is trusted only while the task's outputs are what that run made
(StageCache), so a deleted or edited output re-runs the task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from multitag.config import load_params
from multitag.layout import Layout
from multitag.lifecycle.versioning import dvc_dir_hash
from multitag.reports import write_json


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


STAMPS = Layout().root / ".multitag" / "stage-outputs"


@dataclass(frozen=True)
class StageCache:
    """A Prefect cache for one stage, with DVC's rule for outputs: a cached result is reused
    only while the stage's outputs are exactly what the run that made it left on disk.

    The key covers this workspace (Prefect's result store is shared by every project on the
    machine), the params groups, the content of the inputs and the named task arguments. Each
    run records its outputs' content under that key (`record`, in the workspace's .multitag/); a
    later run may take the cached result only when the outputs still match that record. With no
    record (a fresh clone, a first run) or a deleted, overwritten or foreign output (from `dvc
    repro` or the CLI), the key is None: Prefect runs the task and caches nothing.
    """

    name: str
    groups: list[str]
    inputs: Callable[[dict], list[str]]
    outputs: Callable[[dict], list[str]]
    args: tuple[str, ...] = ()
    reusable: Callable[[dict], bool] = lambda _: True  # False: run the task whatever the cache holds

    def key(self, context: Any, parameters: dict) -> str | None:
        """The Prefect cache_key_fn."""
        if not self.reusable(parameters):
            return None
        inputs_key = self.inputs_key(parameters)
        stamp = STAMPS / f"{inputs_key}.json"
        if not stamp.exists():
            return None
        return inputs_key if json.loads(stamp.read_text()) == self._outputs_now(parameters) else None

    def record(self, parameters: dict) -> None:
        """Call at the end of the task body: what this run left on disk, under its key."""
        STAMPS.mkdir(parents=True, exist_ok=True)
        write_json(STAMPS / f"{self.inputs_key(parameters)}.json", self._outputs_now(parameters))

    def inputs_key(self, parameters: dict) -> str:
        params = load_params(parameters.get("params_path", "params.yaml")).model_dump(mode="json", by_alias=True)
        payload = {
            "workspace": str(Path.cwd().resolve()),
            "stage": self.name,
            "params": {g: params[g] for g in self.groups},
            "inputs": {p: content_hash(Path(p)) for p in self.inputs(parameters)},
            "args": {name: parameters.get(name) for name in self.args},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _outputs_now(self, parameters: dict) -> dict[str, str]:
        return {p: content_hash(Path(p)) for p in self.outputs(parameters)}
