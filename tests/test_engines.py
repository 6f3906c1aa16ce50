"""Issue 12, part 2: the pipeline, the gate, the registry and the API's hot reload work unchanged
against an MLflow tracking server on PostgreSQL (`mlflow server --backend-store-uri
postgresql+psycopg://... --artifacts-destination DIR`, `MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`).

Real engines (tests/engines.py, fixtures in conftest.py): a private PostgreSQL cluster, an MLflow
server on its own database, a throwaway project copy (tests/project.py) whose every process (the
pipeline, the registry CLI, `multitag serve`) gets the server's URI, and nothing else: no
mlflow.db, no local artefacts. Everything runs on loopback ports and is stopped by pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from engines import ApiServer, MlflowServer, PostgresCluster
from project import make_project, project_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MODEL = "multitag"  # the demo's registered model (`registry.model_name: auto` with the synthetic source)
LOCAL_STORES = ("mlflow.db", "mlruns", "mlartifacts")  # where an embedded MLflow would have written
RELOAD_S = 90


@dataclass(frozen=True)
class ServerProject:
    """A project copy whose pipeline has run once against the tracking server."""

    root: Path
    env: dict[str, str]
    output: str
    registration: dict


def multitag(root: Path, env: dict[str, str], *arguments: str) -> str:
    """`multitag ARGS` in the project as a user types it; fails the test with its output when it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "multitag.cli", *arguments], cwd=root, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"multitag {' '.join(arguments)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> ServerProject:
    """The demo pipeline on tiny shapes, tracked and registered through the server."""
    root = make_project(tmp_path_factory.mktemp("engines") / "project", {"serve.reload_interval_s": 0.5})
    env = {**project_env(root), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    output = multitag(root, env, "pipeline", "--source", "synthetic")
    registration = json.loads((root / "reports" / "registration.json").read_text())
    return ServerProject(root, env, output, registration)


@pytest.fixture
def through_server(project: ServerProject, monkeypatch: pytest.MonkeyPatch) -> ServerProject:
    """This test process's registry calls go to the server as well."""
    for key in ("MLFLOW_TRACKING_URI", "MULTITAG_REGISTRY_LOCK"):
        monkeypatch.setenv(key, project.env[key])
    return project


def assert_nothing_stored_locally(root: Path) -> None:
    written = [name for name in LOCAL_STORES if (root / name).exists()]
    assert not written, f"{written} written in {root}: something bypassed MLFLOW_TRACKING_URI"


def test_pipeline_trains_gates_and_registers_a_champion_through_the_server(through_server: ServerProject, mlflow_server: MlflowServer):
    from multitag.lifecycle import registry

    root, registration = through_server.root, through_server.registration
    gate = json.loads((root / "reports" / "gate.json").read_text())["verdict"]
    assert registration["verdict"] == "passed" and gate["passed"] and gate["smoke"]["ok"], gate["reasons"]
    assert f"Served now: models:/{MODEL}@champion" in through_server.output

    champion = registry.alias_version(MODEL, registry.CHAMPION)
    assert champion is not None and champion.version == str(registration["champion_version"])
    assert champion.tags["gate_verdict"] == "passed" and champion.tags["data_hash"] in (root / "dvc.lock").read_text()
    assert champion.source.startswith("mlflow-artifacts:"), f"artefacts proxied by the server, not a local path: {champion.source}"
    assert list(mlflow_server.artifacts.rglob("MLmodel")), "the logged models are in the server's artifacts destination"
    assert_nothing_stored_locally(root)


def test_mlflow_keeps_runs_and_aliases_in_postgresql(project: ServerProject, mlflow_server: MlflowServer, postgres: PostgresCluster):
    """Read with psycopg from the server's database, not through MLflow: the registry is PostgreSQL."""
    from sqlalchemy.engine import make_url

    with postgres.connect(make_url(mlflow_server.backend_store_uri).database) as connection:
        aliases = dict(connection.execute("SELECT alias, version::text FROM registered_model_aliases WHERE name = %s", (MODEL,)).fetchall())
        (runs,) = connection.execute("SELECT count(*) FROM runs").fetchone()
    assert aliases.get("champion") == str(project.registration["champion_version"])
    assert runs >= 2, "the pipeline's parent run and its architecture's nested run"


def test_served_api_hot_reloads_when_the_champion_moves_through_the_server(through_server: ServerProject):
    """`multitag serve` follows the alias as promotion and rollback move it through the server
    (from this process, as `multitag registry promote|rollback` would), without a restart."""
    from multitag.lifecycle import registry

    root, env = through_server.root, through_server.env
    first = str(through_server.registration["champion_version"])
    image = sorted((root / "data" / "raw" / "synthetic" / "images").glob("*.png"))[0]
    api = ApiServer.start(root, {**os.environ, **env}, root / "api.log")
    try:
        wait_for_version(api, first)
        champion = registry.alias_version(MODEL, registry.CHAMPION)
        second = registry.register(f"runs:/{champion.run_id}/model", MODEL, {**champion.tags, "note": "the same model, registered again"})
        assert second != first

        registry.promote(MODEL, second)
        wait_for_version(api, second)
        predicted = httpx.post(f"{api.url}/predict", files=[("files", (image.name, image.read_bytes(), "image/png"))], timeout=60)
        assert predicted.raise_for_status().json()["predictions"][0]["model_version"] == second

        assert registry.rollback(MODEL) == (second, first)
        wait_for_version(api, first)
    finally:
        api.stop()
    assert_nothing_stored_locally(root)


def wait_for_version(api: ApiServer, version: str) -> None:
    deadline = time.monotonic() + RELOAD_S
    while (health := api.health())["model_version"] != version:
        assert api.process.poll() is None, f"the API exited\n{api.log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, (
            f"the API still serves {health['model_version']} (last error: {health['last_error']}), not {version}"
        )
        time.sleep(0.5)
