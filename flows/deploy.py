"""Deploy every deployment in prefect.yaml and check each one exists on the server.

`prefect deploy` (Prefect 3.8.8) creates a deployment, then asks the server for online workers
with `limit: null`. From FastAPI 0.151 the server's request validation rejects that null with
422 (the same cause made `prefect deployment ls` fail), the CLI exits 1 and `--all` stops there
although the deployment was created. The lock pins FastAPI below 0.151, where it succeeds; this
wrapper still confirms through the API that every deployment exists, and accepts that one known
failure only then, so an environment with a newer FastAPI deploys too.

    python -m flows.deploy        (needs PREFECT_API_URL)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml

KNOWN_CLI_FAILURE = "workers/filter"


def declared(prefect_yaml: Path = Path("prefect.yaml")) -> list[str]:
    """`<flow name>/<deployment name>` of every deployment in prefect.yaml (each flow is named
    after its function: `nightly_retraining` is `nightly-retraining`)."""
    config = yaml.safe_load(prefect_yaml.read_text())
    return [f"{d['entrypoint'].split(':')[1].replace('_', '-')}/{d['name']}" for d in config["deployments"]]


async def _missing(names: list[str]) -> list[str]:
    from prefect.client.orchestration import get_client

    missing = []
    async with get_client() as client:
        for name in names:
            try:
                await client.read_deployment_by_name(name)
            except Exception:
                missing.append(name)
    return missing


def deploy_all() -> list[str]:
    """Deploy one by one (the CLI stops at the first failure), then verify through the API;
    raises with the CLI's output when something is really wrong."""
    prefect = str(Path(sys.executable).parent / "prefect")
    names, output, unexpected = declared(), "", False
    for name in names:
        done = subprocess.run([prefect, "deploy", "--name", name.split("/")[1], "--no-prompt"], capture_output=True, text=True)
        output += done.stdout + done.stderr
        unexpected |= done.returncode != 0 and KNOWN_CLI_FAILURE not in done.stdout + done.stderr
    missing = asyncio.run(_missing(names))
    if missing or unexpected:
        raise RuntimeError(f"prefect deploy failed (missing: {missing or 'none'}):\n{output[-3000:]}")
    return names


if __name__ == "__main__":
    print("deployed:", ", ".join(deploy_all()))
