"""Shared fixtures.

Serving fixtures: `tiny_champion` (an untrained 32px small_cnn registered and promoted in a
throwaway MLflow registry, built in seconds: behaviour tests need a model, not a good one),
`registry_env` (points this test's registry calls at it), `fresh_model_name` (a registered model
of its own for tests that move aliases), `serve_params` and `live_server` (the API on a free
loopback port, in a thread of the test process, stopped in teardown).

Engine fixtures (tests/engines.py): `postgres` (a private PostgreSQL cluster for the session),
`postgres_url` (a fresh database on it per test), `mlflow_server` (an MLflow tracking server
on its own database of that cluster, per module) and `prefect_api` (a Prefect server per test
worker, for the flow runs of the tests that ask for it).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from engines import MlflowServer, PostgresCluster, PrefectServer, postgres_bindir


def one_thread_per_worker_when_workers_fill_the_cores() -> None:
    """With as many xdist workers as cores (make test: 2 on 2), each worker's TensorFlow, and every
    process a test starts, computes on one thread: TensorFlow's default of a thread per core in
    each worker oversubscribed the cores (measured: 10% longer on the training tests). Before any
    test imports TensorFlow, which reads these once."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers >= (os.cpu_count() or 1):
        for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
            os.environ.setdefault(name, "1")


one_thread_per_worker_when_workers_fill_the_cores()

TINY_CLASSES = ["cat", "dog", "person"]
TINY_THRESHOLDS = [0.3, 0.5, 0.7]
TINY_INPUT = 32


@dataclass(frozen=True)
class TinyChampion:
    """A registered, promoted tiny model; register `model_uri` again to make more versions."""

    env: dict[str, str]
    model_uri: str
    name: str
    version: str
    classes: list[str]
    thresholds: list[float]
    input_size: int


@pytest.fixture(scope="session")
def tiny_champion(tmp_path_factory: pytest.TempPathFactory) -> TinyChampion:
    """Build, log, register and promote an untrained small_cnn (32px, 3 classes) in a tmp registry."""
    import keras
    import mlflow
    import numpy as np

    from multitag.lifecycle import registry, tracking
    from multitag.modeling import models

    root = tmp_path_factory.mktemp("registry")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "MULTITAG_REGISTRY_LOCK": str(root / "registry.lock")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.chdir(root)  # the experiment's artefacts go to ./mlartifacts, i.e. under root
        # MLflow infers pip requirements by importing TensorFlow in a subprocess (10-30 s); this model
        # never leaves the test, so its default requirements will do.
        patch.setattr("mlflow.keras.save.infer_pip_requirements", lambda path, flavor, fallback=None, **_: fallback)
        keras.utils.set_random_seed(0)
        features = models.build_feature_extractor("small_cnn", TINY_INPUT, None)
        model = models.with_sigmoid(models.assemble(features, models.build_head(features.output_shape[-1], len(TINY_CLASSES), [], 0.0)))
        metadata = {
            "architecture": "small_cnn",
            "classes": TINY_CLASSES,
            "thresholds": TINY_THRESHOLDS,
            "input_size": TINY_INPUT,
            "preprocessing": {"resize": "stretch", "normalisation": "inside the model graph"},
        }
        tracking.configure()
        with mlflow.start_run(run_name="tiny-champion") as run:
            batch = np.zeros((1, TINY_INPUT, TINY_INPUT, 3), dtype="float32")
            model_uri = tracking.log_keras_model(model, batch, metadata).format(run_id=run.info.run_id)
        name = "tiny"
        version = registry.register(model_uri, name, {"architecture": "small_cnn", "test_mAP": "0.5", "gate_verdict": "passed"})
        registry.promote(name, version)
    return TinyChampion(env, model_uri, name, version, TINY_CLASSES, TINY_THRESHOLDS, TINY_INPUT)


@pytest.fixture
def registry_env(tiny_champion: TinyChampion, monkeypatch: pytest.MonkeyPatch) -> TinyChampion:
    """Point registry calls (the test's and the in-thread server's) at the tiny champion's registry."""
    for key, value in tiny_champion.env.items():
        monkeypatch.setenv(key, value)
    return tiny_champion


_model_names = itertools.count()


@pytest.fixture
def fresh_model_name(registry_env: TinyChampion) -> str:
    """A registered model name no other test uses (no versions yet), for tests that move aliases."""
    return f"isolated-{next(_model_names)}-{time.time_ns()}"


def server_params(root: Path, model_name: str, **serve: object):
    """Params for a test server: its own feedback queue under `root`, fast alias polling, any serve overrides."""
    from multitag.config import Params

    return Params.model_validate(
        {
            "registry": {"model_name": model_name},
            "serve": {"reload_interval_s": 0.2, **serve},
            "feedback": {"db_path": str(root / "feedback" / "queue.db"), "images_dir": str(root / "feedback" / "images")},
        }
    )


@pytest.fixture
def serve_params(tmp_path: Path) -> Callable[..., object]:
    """`serve_params(model_name, **serve)`: server_params under this test's tmp_path."""
    return lambda model_name, **serve: server_params(tmp_path, model_name, **serve)


NETWORK_CLIENT = ("203.0.113.7", 50000)  # a documentation address: a client on the network
LOCAL_CLIENT = ("127.0.0.1", 50000)  # a client on the server's own machine


@pytest.fixture
def app_for(registry_env, tmp_path, monkeypatch) -> Iterator:
    """`app_for(client, **serve)`: the API with its lifespan running in Starlette's TestClient, called
    from `client`'s address (NETWORK_CLIENT or LOCAL_CLIENT); no token is set unless a test sets one."""
    from fastapi.testclient import TestClient

    from multitag.serving.app import create_app

    monkeypatch.delenv("MULTITAG_REVIEWER_TOKEN", raising=False)
    monkeypatch.delenv("MULTITAG_ADMIN_TOKEN", raising=False)
    opened: list = []

    def open_app(client: tuple[str, int], **serve: object):
        app = create_app(server_params(tmp_path, registry_env.name, **serve))
        opened.append(TestClient(app, base_url="http://127.0.0.1:8000", client=client).__enter__())
        return opened[-1]

    yield open_app
    for client in opened:
        client.__exit__(None, None, None)


@dataclass
class LiveServer:
    """The API served by uvicorn in a thread of the test process, on its own loopback port."""

    url: str
    app: object
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_live_server(app: object, timeout_s: float = 60) -> LiveServer:
    """Serve `app` on a free port (the bound socket is handed to uvicorn, so no other process can take it)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server did not start; see the log above")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{sock.getsockname()[1]}", app, server, thread)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Start API servers with `live_server(params, retrain_trigger=None)`; all are stopped in teardown."""
    from multitag.serving.app import create_app

    started: list[LiveServer] = []

    def start(params: object, retrain_trigger: Callable | None = None) -> LiveServer:
        started.append(start_live_server(create_app(params, retrain_trigger=retrain_trigger)))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_champion: TinyChampion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per test module on the tiny champion (whose alias never moves), with small limits
    (4 files, 200 kB each) so that limit tests stay cheap; tests that move aliases start their own."""
    from multitag.serving.app import create_app

    with pytest.MonkeyPatch.context() as patch:
        for key, value in tiny_champion.env.items():
            patch.setenv(key, value)
        params = server_params(tmp_path_factory.mktemp("tiny-server"), tiny_champion.name, max_files=4, max_upload_bytes=200_000)
        server = start_live_server(create_app(params))
        try:
            yield server
        finally:
            server.stop()


# The longest modules first, longest first (minutes each on 2 cores; from `make test`'s --durations):
# with `--dist loadfile --no-loadscope-reorder` (the Makefile) xdist hands modules out in collection
# order, so these start at once instead of being the run's tail. (Without --no-loadscope-reorder
# xdist sorts modules by their number of tests, and these few-test modules came last.)
LONGEST_FIRST = (
    "test_pipeline_e2e.py",
    "test_scaled_out.py",
    "test_own_data_journey.py",
    "test_real_data.py",
    "test_export_architectures.py",
    "test_export.py",
    "test_api_reliability.py",
    "test_architectures.py",
    "test_warm_start.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the longest modules to the front, each kept whole and in order (a stable sort)."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CI=true a skip (no ../shared dataset, no browser, no database) is a failure: CI must
    prove what a developer's machine may lack, not pass by leaving it out."""

    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the session, in a folder of its own under the system's
    temporary folder (one the `postgres` user can reach, unlike pytest's mode-700 tmp_path),
    stopped and removed after. Skips with the reason when PostgreSQL is not installed; under
    CI=true that skip is a failure (pytest_runtest_makereport above)."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl missing: run `bash scripts/install_test_deps.sh` as root (Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="multitag-postgres-"))
    try:
        cluster = PostgresCluster.start(root)
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> Iterator[str]:
    """A fresh, empty database for this test: its SQLAlchemy URL (postgresql+psycopg://...); dropped after."""
    name = f"test_{next(_databases)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(scope="module")
def mlflow_server(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """An MLflow tracking server for the module: backend store on a database of its own in
    `postgres`, artefacts and log under a tmp folder. Point a process at it with
    MLFLOW_TRACKING_URI=mlflow_server.uri."""
    name = f"mlflow_{next(_databases)}"
    folder = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer.start(postgres.create_database(name), folder / "artifacts", folder / "mlflow-server.log")
    try:
        yield server
    finally:
        server.stop()
        postgres.drop_database(name)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server for this test worker's flow runs: its API URL. Use it with
    engines.flows_reporting_to; the user's default, a temporary server per process, is what
    test_own_data_journey's demo run starts."""
    server = PrefectServer.start(tmp_path_factory.mktemp("prefect-server"))
    try:
        yield server.api_url
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The feedback database on both engines (tests using it run twice): an embedded SQLite file,
    and a fresh database on the private PostgreSQL cluster."""
    from multitag.feedback.database import sqlite_url

    if request.param == "sqlite":
        return sqlite_url(tmp_path / "queue.db")
    return request.getfixturevalue("postgres_url")
