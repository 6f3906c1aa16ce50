"""How `/retrain` starts the retraining flow without waiting for it: a Prefect deployment run
when one is named, else a detached local flow process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

RETRAIN_DEPLOYMENT_ENV = "MULTITAG_RETRAIN_DEPLOYMENT"
RETRAIN_MODULE = "flows.nightly_retraining"

RetrainTrigger = Callable[[], dict[str, str]]


def retrain_trigger_from_env(log_path: Path, params_path: Path | str = "params.yaml") -> RetrainTrigger:
    """A Prefect deployment run when MULTITAG_RETRAIN_DEPLOYMENT names one, else a detached local flow process.

    Either way the flow reads the params file this server was started with, so a server on a
    custom params file retrains on that file's data, queue and registry, not on the defaults.
    """
    deployment = os.environ.get(RETRAIN_DEPLOYMENT_ENV)
    if deployment:
        return lambda: run_prefect_deployment(deployment, str(params_path))
    return lambda: start_flow_process([sys.executable, "-m", RETRAIN_MODULE, str(params_path)], log_path)


def run_prefect_deployment(name: str, params_path: str) -> dict[str, str]:
    """Schedule the deployment and return at once (timeout=0): a Prefect worker runs it."""
    # Imported here, not at the top: Prefect takes seconds to import.
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name, parameters={"params_path": params_path}, timeout=0)
    return {"via": "prefect", "deployment": name, "flow_run_id": str(flow_run.id)}


def start_flow_process(command: list[str], log_path: Path) -> dict[str, str]:
    """Start the flow in its own session (it outlives a server restart); output appends to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends, without blocking
    return {"via": "subprocess", "command": " ".join(command), "pid": str(process.pid), "log": str(log_path)}
