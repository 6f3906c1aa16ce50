"""Real engines for tests, started and stopped by the test itself: a private PostgreSQL cluster,
an MLflow tracking server on it, a Prefect server, and the API as a `multitag serve` process.

Every server listens on 127.0.0.1 on a free port, writes its log beside its data, and is stopped
by the pid this module started (a process group, or the postmaster that `pg_ctl` names), never
by name, so tests never touch a developer's own servers. PostgreSQL comes from Debian's
`postgresql` package (`scripts/install_test_deps.sh`); `initdb` and `postgres` refuse to run as
root, so as root they run as the package's `postgres` user.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

POSTGRES_USER = "postgres"  # the OS user Debian's package creates, and the cluster's superuser
STOP_GRACE_S = 10
PORT_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it: choose again
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(command: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `command` in its own session (so its children can be stopped with it), logging to `log_path`."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def stop_process(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group we created, wait, then SIGKILL whatever is left in it."""
    try:
        os.killpg(process.pid, signal.SIGTERM)  # start_new_session: the group id is the PID we started
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):  # a leader still shutting down, or children it left in its group
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, headed by its name, for error messages."""
    text = path.read_text(errors="replace") if path.exists() else "(no log written)"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def wait_for_process(check: Callable[[], bool], what: str, process: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    """Poll `check()` until true; RuntimeError with the log's tail when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited (code {process.returncode}) first\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout_s:.0f}s\n{log_tail(log_path)}")
        time.sleep(0.5)


def port_taken(log_path: Path) -> bool:
    """Whether a server's log says its port was taken (then it is worth starting on another one)."""
    return log_path.exists() and re.search(r"address already in use|could not bind", log_path.read_text(errors="replace"), re.I) is not None


def http_ok(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_http_server(
    command: Callable[[int], list[str]], what: str, log: Path, cwd: Path, env: dict[str, str], timeout_s: float, health: str = "/health"
) -> tuple[str, subprocess.Popen]:
    """Start `command(port)` on a free loopback port and wait until its `health` path answers; returns
    (http://127.0.0.1:PORT, process). A port taken between choosing and binding it is chosen again."""
    for attempt in itertools.count(1):
        port = free_port()
        url, process = f"http://127.0.0.1:{port}", start_process(command(port), log, cwd, env)
        try:
            wait_for_process(functools.partial(http_ok, f"{url}{health}"), f"{what} on {url}", process, log, timeout_s)
            return url, process
        except RuntimeError:
            stop_process(process)
            if attempt == PORT_ATTEMPTS or not port_taken(log):
                raise


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's server binaries (initdb, pg_ctl), or None when not installed.

    `pg_config --bindir` (Debian's postgresql-common names the newest server's), else the newest
    /usr/lib/postgresql/<version>/bin, else wherever `initdb` on PATH points; the same search as
    scripts/install_test_deps.sh. The client package alone has no initdb, so it does not count.
    """
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        answer = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if answer.returncode == 0:
            candidates.append(Path(answer.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0, reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    return next((path for path in candidates if (path / "initdb").is_file() and (path / "pg_ctl").is_file()), None)


def _as_cluster_owner(command: list[str]) -> list[str]:
    """`command` as the user that owns the cluster: `postgres` when we are root, ourselves otherwise."""
    return ["runuser", "-u", POSTGRES_USER, "--", *command] if os.geteuid() == 0 else command


@dataclass
class PostgresCluster:
    """A private PostgreSQL cluster (initdb + pg_ctl) on a free loopback port, for tests that need
    a real server: the feedback queue's SQL and the MLflow tracking server run on it unchanged.

    Everything lives under `root` (data, unix socket, logs), so the fixture that creates the
    folder removes it all; `stop` stops exactly this cluster's postmaster. Trust authentication
    on 127.0.0.1 only and no fsync: a throwaway cluster that no other host can reach.
    """

    root: Path
    bindir: Path
    port: int
    pid: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @classmethod
    def start(cls, root: Path, timeout_s: float = 60) -> PostgresCluster:
        """initdb a cluster under `root` (created if missing) and start it; returns once it answers queries.

        As root, `root` is handed to the `postgres` user, so it must be a folder that user can
        reach (not under pytest's mode-700 tmp_path): the fixture makes one with tempfile.mkdtemp.
        """
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl not found: run `bash scripts/install_test_deps.sh` as root")
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(POSTGRES_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root, PostgreSQL needs the `{POSTGRES_USER}` user that Debian's postgresql package creates"
                ) from None
            os.chown(root, owner.pw_uid, owner.pw_gid)
        initdb = [str(bindir / "initdb"), "-D", str(root / "data"), "--auth=trust", f"--username={POSTGRES_USER}"]
        initdb += ["--encoding=UTF8", "--locale=C", "--no-sync"]
        created = subprocess.run(_as_cluster_owner(initdb), cwd=root, capture_output=True, text=True, check=False)
        if created.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {created.returncode}) in {root}; as root the `{POSTGRES_USER}` user must be able to "
                f"reach that folder:\n{created.stdout[-2000:]}{created.stderr[-2000:]}"
            )
        cluster = cls(root, bindir, 0, 0)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            cluster.port = free_port()
            if cluster._pg_ctl_start(timeout_s):
                break
            cluster.stop()  # a postmaster that did come up too late to count
            if attempt == PORT_ATTEMPTS or not port_taken(cluster.log):
                raise RuntimeError(f"PostgreSQL did not start in {root} (port {cluster.port})\n{log_tail(cluster.log)}")
        cluster.pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
        with cluster.connect() as connection:  # pg_ctl -w waited for "accepting connections"; prove it
            connection.execute("SELECT 1")
        return cluster

    def _pg_ctl_start(self, timeout_s: float) -> bool:
        settings = {"listen_addresses": "127.0.0.1", "fsync": "off", "full_page_writes": "off", "max_connections": "200"}
        options = ["-p", str(self.port), "-k", str(self.root), *(f"--{key}={value}" for key, value in settings.items())]
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", shlex.join(options)]
        started = subprocess.run(
            _as_cluster_owner([*command, "-w", "-t", str(int(timeout_s)), "start"]),
            cwd=self.root,
            capture_output=True,
            text=True,
            check=False,
        )
        return started.returncode == 0

    def connect(self, database: str = "postgres"):
        """A psycopg connection (autocommit) to one of this cluster's databases, as its superuser."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=POSTGRES_USER, dbname=database, autocommit=True, connect_timeout=10)

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of a database here (the psycopg 3 driver; psycopg2 is not installed)."""
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    def create_database(self, name: str) -> str:
        """Create database `name`; returns its SQLAlchemy URL."""
        from psycopg import sql

        with self.connect() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, ending any connection a test left open to it."""
        from psycopg import sql

        with self.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        """Stop this cluster's postmaster (fast shutdown: open sessions are ended); safe to call twice."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"]
        stopped = subprocess.run(_as_cluster_owner(command), cwd=self.root, capture_output=True, text=True, check=False)
        if stopped.returncode == 0 or self.pid <= 0:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGQUIT)  # the postmaster's immediate shutdown
        deadline = time.monotonic() + STOP_GRACE_S
        while pid_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL (pid {self.pid}) did not stop: {stopped.stderr.strip()}\n{log_tail(self.log)}")
            time.sleep(0.2)


@dataclass
class StartedServer:
    """A server process a test started: its pid, and stopping exactly it (with its process group)."""

    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Stop the process and its children (the process group it was started in), by pid."""
        stop_process(self.process)


@dataclass
class MlflowServer(StartedServer):
    """`mlflow server` on a free loopback port with a SQL backend store and proxied artefacts, so
    tests run the pipeline, the registry and the API against a tracking server the way a team
    does (`MLFLOW_TRACKING_URI=http://...`), not only against the embedded SQLite file.

    One uvicorn worker is enough for a test. The server's job runner (MLflow's GenAI jobs, a
    huey consumer) is switched off: multitag uses no jobs, and it is one process less.
    """

    uri: str
    backend_store_uri: str
    artifacts: Path
    log: Path

    @classmethod
    def start(cls, backend_store_uri: str, artifacts: Path, log: Path, timeout_s: float = 180) -> MlflowServer:
        """Start the server (artefacts under `artifacts`, output in `log`); returns once /health answers."""
        artifacts.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"

        def command(port: int) -> list[str]:
            return [
                *(str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ]

        uri, process = start_http_server(command, "MLflow server", log, artifacts.parent, env, timeout_s)
        return cls(process=process, uri=uri, backend_store_uri=backend_store_uri, artifacts=artifacts, log=log)


@dataclass
class PrefectServer(StartedServer):
    """`prefect server start` on a free loopback port, with a PREFECT_HOME (database, log) of its
    own: the API that the flow runs of one test worker report to, in-process and in the
    processes they start. One per worker instead of a temporary server per flow process, which
    cost 13 s each on 2 cores, half of it migrating a fresh database."""

    api_url: str

    @classmethod
    def start(cls, home: Path, services: bool = False, timeout_s: float = 180) -> PrefectServer:
        """Start it (database and server.log under `home`); returns once /api/health answers.
        Without `services` it is the API alone, no UI or scheduler: enough for flow runs to report
        to; a work pool's worker and deployments need `services`."""
        home.mkdir(parents=True, exist_ok=True)
        env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        options = [] if services else ["--no-ui", "--no-services"]

        def command(port: int) -> list[str]:
            return [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), *options]

        url, process = start_http_server(command, "Prefect server", home / "server.log", home, env, timeout_s, health="/api/health")
        return cls(process=process, api_url=f"{url}/api")


@contextlib.contextmanager
def flows_reporting_to(api_url: str) -> Iterator[None]:
    """Flow runs in this process, and in the processes it starts, report to the Prefect API at
    `api_url` for the block (no temporary server of their own)."""
    import pytest
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch, temporary_settings({PREFECT_API_URL: api_url}):
        patch.setenv("PREFECT_API_URL", api_url)
        yield


@dataclass
class ApiServer(StartedServer):
    """The API as users run it, `multitag serve` in a process of its own (unlike conftest's
    in-thread LiveServer): its own environment (tracking URI, queue), so replicas and hot
    reload are tested across processes the way they are deployed."""

    url: str
    log: Path

    @classmethod
    def start(cls, project: Path, env: dict[str, str], log: Path, timeout_s: float = 180) -> ApiServer:
        """`multitag serve` in `project` (its params.yaml) with `env`; returns once /health answers."""

        def command(port: int) -> list[str]:
            return [sys.executable, "-m", "multitag.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]

        url, process = start_http_server(command, "multitag serve", log, project, env, timeout_s)
        return cls(process=process, url=url, log=log)

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/health", timeout=10).raise_for_status().json()
