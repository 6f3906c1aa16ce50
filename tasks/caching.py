"""Task cache keys from file content, never from arrays or models held in memory.

A key covers the stage's params, the content of its deps (both as dvc.yaml declares them, the
one stage table) and its named arguments; a cached result is trusted only while the task's outputs are what that run made
(StageCache), so a deleted or edited output re-runs the task.
"""

from __future__ import annotations

import hashlib
import json
import re
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


@dataclass(frozen=True)
class DvcStage:
    """One stage of dvc.yaml with its `${...}` filled in: what DVC re-runs it for, and what it makes."""

    deps: list[str]
    params: list[str]  # dotted keys of params.yaml, or whole groups
    outs: list[str]


def dvc_stage(stage: str, params: dict, item: str | None = None, dvc_file: Path = DVC_FILE) -> DvcStage:
    """`stage` as dvc.yaml declares it, `${group.key}` read from `params` (params.yaml as loaded)
    and `${item}` (a foreach stage) set to `item`: the one declaration both DVC and the Prefect
    tasks' cache keys read, so the two cannot disagree about a stage's inputs."""
    spec = yaml.safe_load(dvc_file.read_text())["stages"][stage]
    spec = spec.get("do", spec)

    def fill(entry: str | dict) -> str:
        path = entry if isinstance(entry, str) else next(iter(entry))
        path = path.replace("${item}", item or "")
        return re.sub(r"\$\{([\w.]+)\}", lambda m: str(param_value(params, m.group(1))), path)

    return DvcStage([fill(d) for d in spec.get("deps", [])], list(spec.get("params", [])), [fill(o) for o in spec.get("outs", [])])


def param_value(params: dict, dotted: str) -> object:
    """`data.path` or a whole group such as `validate`, from params.yaml as loaded."""
    value = params
    for part in dotted.split("."):
        value = value[part]
    return value


STAMPS = Layout().root / ".multitag" / "stage-outputs"


@dataclass(frozen=True)
class StageCache:
    """A Prefect cache for one dvc.yaml stage, with DVC's rule for outputs: a cached result is
    reused only while the stage's outputs are exactly what the run that made it left on disk.

    The key covers this workspace (Prefect's result store is shared by every project on the
    machine), the stage's params, deps and outs as dvc.yaml declares them (`dvc_stage`), the
    inputs DVC cannot track (`extra_inputs`: a file that may not exist, a run's argument) and the
    named task arguments. Each run records its outputs' content under that key (`record`, in the
    workspace's .multitag/); a later run may take the cached result only when the outputs still
    match that record. With no record (a fresh clone, a first run) or a deleted, overwritten or
    foreign output (from `dvc repro` or the CLI), the key is None: Prefect runs the task and
    caches nothing.
    """

    name: str
    extra_inputs: Callable[[dict], list[str]] = lambda _: []
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

    def stage(self, parameters: dict) -> tuple[DvcStage, dict]:
        params = load_params(parameters.get("params_path", "params.yaml")).model_dump(mode="json", by_alias=True)
        return dvc_stage(self.name, params, parameters.get("architecture")), params

    def inputs_key(self, parameters: dict) -> str:
        stage, params = self.stage(parameters)
        payload = {
            "workspace": str(Path.cwd().resolve()),
            "stage": self.name,
            "params": {key: param_value(params, key) for key in stage.params},
            "inputs": {p: content_hash(Path(p)) for p in [*stage.deps, *self.extra_inputs(parameters)]},
            "args": {name: parameters.get(name) for name in self.args},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def _outputs_now(self, parameters: dict) -> dict[str, str]:
        return {p: content_hash(Path(p)) for p in self.stage(parameters)[0].outs}
