"""The deployed path, end to end: a real Prefect server, prefect.yaml deployed with the CLI, a
process worker, and a `training-pipeline` run triggered through the API on tiny synthetic data.

It runs in a throwaway copy of the project (tests/project.py: the working tree's code and
pipeline files, own git and DVC), not in a `git clone`: a clone would test the last commit, not
the files being changed, and would miss untracked ones. Every store (Prefect's database and
results, MLflow, Keras, DVC) lives under that copy, and the server listens on a free loopback
port, so the test never touches the developer's own server or registry. Teardown stops exactly
the processes this test started (each in its own session, so with their children): SIGTERM,
a grace period, SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engines import free_port, log_tail, start_process, stop_process
from project import make_project, project_env, run, stored_aliases

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

POOL = "multitag-process"
DEPLOYMENT = "training-pipeline/training-pipeline"
TINY_DATA = {"data.synthetic": {"n_images": 120, "image_size": 32, "seed": 0}, "train.head_epochs": 1}
RUN_PARAMETERS = {"epochs": 1, "architectures": ["small_cnn"]}
SERVER_START_S = 120
WORKER_READY_S = 90
FLOW_RUN_S = 480
PREFECT = str(Path(sys.executable).parent / "prefect")


@dataclass
class Stack:
    """A started server and worker for one project copy."""

    root: Path
    env: dict[str, str]
    api_url: str
    processes: dict[str, subprocess.Popen]

    def log_tail(self, name: str, lines: int = 40) -> str:
        return log_tail(self.root / ".prefect" / f"{name}.log", lines)


def start(name: str, command: list[str], root: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `command` in its own session (so its children can be stopped with it), logging to .prefect/<name>.log."""
    return start_process(command, root / ".prefect" / f"{name}.log", root, env)


def wait_until(check, what: str, timeout_s: float, stack: Stack, name: str) -> None:
    """Poll `check()` until true; fail with the process's log when it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if stack.processes[name].poll() is not None:
            pytest.fail(f"the {name} exited (code {stack.processes[name].returncode}) before {what}\n{stack.log_tail(name)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s:.0f}s\n{stack.log_tail(name)}")
        time.sleep(1)


def server_healthy(api_url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{api_url}/health", timeout=2).json() is True
    except (httpx.HTTPError, ValueError):
        return False


def pool_ready(api_url: str) -> bool:
    """READY once a worker has sent a heartbeat for the pool."""
    import httpx

    try:
        return httpx.get(f"{api_url}/work_pools/{POOL}", timeout=2).json().get("status") == "READY"
    except (httpx.HTTPError, ValueError):
        return False


def tiny_project(root: Path) -> Path:
    """The project copy with tiny params, written so that the flow's run parameters can be set in it.

    `set_params` rewrites one `key: value` line, so lists must stay on one line: dump leaf
    collections in flow style ([small_cnn], not a block list).
    """
    import yaml

    make_project(root, TINY_DATA)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Server on a free port, process pool, prefect.yaml deployed, a worker polling; all stopped after."""
    from multitag.config import load_params

    root = tiny_project(tmp_path_factory.mktemp("prefect") / "project")
    (root / ".prefect").mkdir()
    api_url = f"http://127.0.0.1:{free_port()}/api"
    env = {
        **os.environ,
        **project_env(root),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick the run up quickly (default 10 s)
        "MULTITAG_PROJECT_DIR": str(root),  # prefect.yaml's pull step
        "MULTITAG_RETRAIN_TIMEZONE": load_params(root / "params.yaml").retrain.timezone,
    }
    stack = Stack(root, env, api_url, {})
    try:
        port = api_url.rsplit(":", 1)[1].split("/")[0]
        stack.processes["server"] = start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port], root, env)
        wait_until(lambda: server_healthy(api_url), "healthy server", SERVER_START_S, stack, "server")
        run([PREFECT, "work-pool", "create", POOL, "--type", "process"], root, env)
        stack.processes["worker"] = start("worker", [PREFECT, "worker", "start", "--pool", POOL], root, env)
        deploy = subprocess.run([sys.executable, "-m", "flows.deploy"], cwd=root, env=env, capture_output=True, text=True, check=False)
        assert deploy.returncode == 0, f"deploying prefect.yaml failed:\n{deploy.stdout[-3000:]}\n{deploy.stderr[-3000:]}"
        wait_until(lambda: pool_ready(api_url), f"worker polling {POOL}", WORKER_READY_S, stack, "worker")
        yield stack
    finally:
        for name in ("worker", "server"):
            if name in stack.processes:
                stop_process(stack.processes[name])


def test_deployed_training_pipeline_runs_on_a_worker_and_registers_a_champion(stack: Stack):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from multitag.config import load_params

    with temporary_settings({PREFECT_API_URL: stack.api_url}):
        flow_run = run_deployment(DEPLOYMENT, parameters=RUN_PARAMETERS, timeout=FLOW_RUN_S, poll_interval=2)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        f"flow run {flow_run.name} ended {flow_run.state!r}\n{stack.log_tail('worker', 80)}"
    )

    # The pull step ran the flow in the project copy, and the run parameters reached params.yaml.
    params = load_params(stack.root / "params.yaml")
    assert (stack.root / "reports" / "registration.json").exists()
    assert params.train.architectures == ["small_cnn"] and params.train.small_cnn_epochs == 1

    # The deployed run registered its candidate in the project's own registry database, read
    # directly (not through MLflow's process-wide URIs), and that version is the champion.
    registration = json.loads((stack.root / "reports" / "registration.json").read_text())
    assert registration["versions"].get("small_cnn") and registration["champion_version"] is not None
    assert stored_aliases(stack.root / "mlflow.db").get("champion") == str(registration["champion_version"])
