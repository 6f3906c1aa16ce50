"""The registry and the promotion fail closed, on a real MLflow registry: an unreachable or corrupt
registry stops the gate instead of reading as "no champion"; `register` applies a verdict only to
the candidate it judged and only while the champion it judged against still serves; a retried
`register` neither duplicates versions nor promotes again."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from project import stored_aliases

from multitag.errors import RegistryUnavailableError, StaleVerdictError


@dataclass(frozen=True)
class Registry:
    """A sqlite registry of this module's own, one run logged in it, and a model name per test."""

    env: dict[str, str]
    database: Path
    model_uri: str  # runs:/<run_id>/model: a source run id that registering can key on
    run_id: str
    name: str


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """(env, run id) of a run with a `model` folder: no real model, since these tests never load one."""
    import mlflow

    from multitag.lifecycle import tracking

    root = tmp_path_factory.mktemp("fail-closed")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "MULTITAG_REGISTRY_LOCK": str(root / "registry.lock")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.chdir(root)
        tracking.configure()
        with mlflow.start_run(run_name="candidate") as run:
            mlflow.log_text("flavors: {}\n", "model/MLmodel")
    return env, run.info.run_id


@pytest.fixture
def registry_of(logged_run, monkeypatch: pytest.MonkeyPatch) -> Registry:
    env, run_id = logged_run
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    database = Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))
    return Registry(env, database, f"runs:/{run_id}/model", run_id, f"fail-closed-{time.time_ns()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _file_model(tmp_path: Path, name: str) -> str:
    """A model URI that is not a run's: another version for the registry to hold."""
    folder = tmp_path / name
    folder.mkdir()
    return folder.as_uri()


def test_a_model_or_alias_that_does_not_exist_yet_means_none(registry_of, tmp_path):
    from multitag.lifecycle import registry

    name = registry_of.name
    assert registry.alias_version(name, registry.CHAMPION) is None, "model never registered"
    assert registry.list_versions(name) == []
    registry.register(_file_model(tmp_path, "m"), name, {})
    assert registry.alias_version(name, registry.CHAMPION) is None, "registered, alias never set"


def test_an_unreachable_registry_raises_instead_of_reading_as_no_champion(tmp_path, monkeypatch):
    from multitag.lifecycle import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MULTITAG_REGISTRY_LOCK", str(tmp_path / "registry.lock"))
    with pytest.raises(RegistryUnavailableError, match=r"127\.0\.0\.1"):
        registry.alias_version("multitag", registry.CHAMPION)
    with pytest.raises(RegistryUnavailableError, match="list the versions"):
        registry.list_versions("multitag")
    with pytest.raises(RegistryUnavailableError, match="promote version 2"):
        registry.promote("multitag", "2")


def test_a_corrupt_registry_stops_the_gate_before_it_judges(tmp_path, monkeypatch):
    """Without the aliases table MLflow answers TEMPORARILY_UNAVAILABLE; the gate must not go on
    to judge the candidate against no champion (baselines only) and let `register` promote it."""
    from multitag import stages
    from multitag.config import Params
    from multitag.layout import Layout
    from multitag.lifecycle import registry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.register(_file_model(tmp_path, "champion"), "multitag", {})
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        connection.execute("DROP TABLE registered_model_aliases")
    layout = Layout(tmp_path)
    _write_candidates(layout, [_candidate("run-a", "runs:/run-a/model")])
    with pytest.raises(RegistryUnavailableError, match="read multitag@champion"):
        stages.gate_stage(Params(), layout)
    assert not (layout.reports / "gate.json").exists()
    with pytest.raises(RegistryUnavailableError, match="list the versions"):
        registry.list_versions("multitag")  # not [], which reads as "nothing registered"


def test_a_champion_alias_naming_a_missing_version_stops_promotion(registry_of, tmp_path):
    """MLflow reports such an alias as RESOURCE_DOES_NOT_EXIST, like a model never registered; read
    as "no champion", promote would move champion and leave previous-champion behind."""
    from multitag.lifecycle import registry

    name = registry_of.name
    versions = [registry.register(_file_model(tmp_path, f"m{i}"), name, {}) for i in range(3)]
    registry.promote(name, versions[0])
    registry.promote(name, versions[1])
    database = registry_of.database
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE registered_model_aliases SET version = 99 WHERE name = ? AND alias = 'champion'", (name,))
    with pytest.raises(RegistryUnavailableError, match="version=99"):
        registry.alias_version(name, registry.CHAMPION)
    with pytest.raises(RegistryUnavailableError):
        registry.promote(name, versions[2])
    assert stored_aliases(database, name) == {registry.CHAMPION: "99", registry.PREVIOUS: versions[0]}


def _candidate(run_id: str, model_uri: str):
    from multitag.lifecycle.candidates import Candidate

    scores = {k: 0.5 for k in ("val_mAP", "test_mAP", "test_macro_f1", "latency_ms", "size_mb")}
    return Candidate("small_cnn", run_id, model_uri, scores)


def _write_candidates(layout, candidates: list, data_hash: str = "data-1"):
    """metrics/candidates.json as `multitag evaluate` writes it."""
    from multitag.lifecycle.candidates import Candidates

    record = Candidates("parent", data_hash, "abc", candidates)
    record.write(layout.candidates)
    return record


def _write_verdict(layout, record, passed: bool, champion_version: str | None) -> None:
    """reports/gate.json as `multitag gate` writes it, for the record's first candidate."""
    from multitag import stages
    from multitag.lifecycle.gate import Verdict

    best = record.candidates[0]
    verdict = Verdict(
        passed=passed,
        candidate_uri=best.model_uri,
        champion_version=champion_version,
        primary_metric="mAP",
        candidate={"mAP": 0.6},
        champion=None,
        checks={"smoke_test": passed},
        reasons=[],
    )
    layout.reports.mkdir(parents=True, exist_ok=True)
    stages.gate_record(record, best, verdict).write(layout.gate_record)


@pytest.fixture
def project_of(registry_of, tmp_path):
    """(params, layout) of a project registering under the test's own model name."""
    from multitag.config import Params
    from multitag.layout import Layout

    return Params.model_validate({"registry": {"model_name": registry_of.name}}), Layout(tmp_path)


def test_register_refuses_a_verdict_left_from_other_candidates(registry_of, project_of, tmp_path):
    """A gate that crashed leaves the previous gate.json; a new `evaluate` then wrote other candidates."""
    from multitag import stages
    from multitag.lifecycle import registry

    params, layout = project_of
    gated = _write_candidates(layout, [_candidate(registry_of.run_id, registry_of.model_uri)])
    _write_verdict(layout, gated, passed=True, champion_version=None)
    _write_candidates(layout, [_candidate("new-run", _file_model(tmp_path, "never-gated"))], data_hash="data-2")
    with pytest.raises(StaleVerdictError, match="Run `multitag gate`"):
        stages.register_stage(params, layout)
    assert registry.list_versions(params.registry.model_name) == []


def test_register_refuses_to_promote_when_the_champion_moved_since_the_gate(registry_of, project_of, tmp_path):
    from multitag import stages
    from multitag.lifecycle import registry

    params, layout = project_of
    name = params.registry.model_name
    summary = _write_candidates(layout, [_candidate(registry_of.run_id, registry_of.model_uri)])
    _write_verdict(layout, summary, passed=True, champion_version=None)  # judged as the first model
    meanwhile = registry.register(_file_model(tmp_path, "promoted-meanwhile"), name, {})
    registry.promote(name, meanwhile)
    with pytest.raises(StaleVerdictError, match=f"champion is now {meanwhile}"):
        stages.register_stage(params, layout)
    assert stored_aliases(registry_of.database, name) == {registry.CHAMPION: meanwhile}


def test_a_retried_register_reuses_the_versions_and_does_not_promote_again(registry_of, project_of):
    """Prefect retries `register` after a partial success; the retry must change nothing."""
    from multitag import stages
    from multitag.lifecycle import registry

    params, layout = project_of
    name = params.registry.model_name
    summary = _write_candidates(layout, [_candidate(registry_of.run_id, registry_of.model_uri)])
    _write_verdict(layout, summary, passed=True, champion_version=None)
    first = stages.register_stage(params, layout)
    again = stages.register_stage(params, layout)
    assert again == first and first.champion_version == first.selected_version
    assert [v.version for v in registry.list_versions(name)] == [first.selected_version]
    assert stored_aliases(registry_of.database, name) == {registry.CHAMPION: first.selected_version}


def three_versions(registry_of: Registry) -> list[str]:
    from multitag.lifecycle import registry

    return [registry.register(registry_of.model_uri, registry_of.name, {"n": str(n)}) for n in range(3)]


def test_a_promotion_killed_between_its_alias_moves_is_finished_before_the_next_one(registry_of):
    """Killed after previous-champion moved and before champion did, a promotion left both on the
    same version, and the rollback target it overwrote was lost. Its journal (a model tag) lets the
    next promotion or rollback finish it first: the rollback then goes back to the right version."""
    from mlflow import MlflowClient

    from multitag.lifecycle import registry

    first, second, third = three_versions(registry_of)
    registry.promote(registry_of.name, first)
    registry.promote(registry_of.name, second)
    assert registry.PROMOTION_TAG not in MlflowClient().get_registered_model(registry_of.name).tags, (
        "a finished promotion leaves no journal"
    )
    # what `promote(third)` leaves when killed between its two alias writes
    client = MlflowClient()
    client.set_registered_model_tag(registry_of.name, registry.PROMOTION_TAG, json.dumps({"former": second, "to": third}))
    client.set_registered_model_alias(registry_of.name, registry.PREVIOUS, second)

    assert registry.rollback(registry_of.name) == (third, second), "finished first, then rolled back one step"
    assert registry.alias_version(registry_of.name, registry.CHAMPION).version == second
    assert registry.PROMOTION_TAG not in client.get_registered_model(registry_of.name).tags


def test_promotions_on_two_hosts_sharing_the_postgresql_queue_take_turns(registry_of, postgres_url, monkeypatch, tmp_path):
    """Each host's file lock covers only that host: with the queue on PostgreSQL, promotion takes
    a PostgreSQL advisory lock that every host shares. Another host holding it (this test's own
    connection) keeps a promotion waiting, with no alias moved, until it lets go."""
    import threading

    from sqlalchemy import create_engine, text

    from multitag.lifecycle import registry

    first, second, _ = three_versions(registry_of)
    registry.promote(registry_of.name, first)
    monkeypatch.setenv("MULTITAG_FEEDBACK_DB_URL", postgres_url)
    monkeypatch.setenv("MULTITAG_REGISTRY_LOCK", str(tmp_path / "this-host-only.lock"))
    other_host = create_engine(postgres_url).connect()
    other_host.execute(text("SELECT pg_advisory_lock(:key)"), {"key": registry.PROMOTION_LOCK_KEY})
    promoting = threading.Thread(target=registry.promote, args=(registry_of.name, second))
    promoting.start()
    try:
        promoting.join(timeout=3)
        assert promoting.is_alive(), "the promotion went ahead while another host held the lock"
        assert registry.alias_version(registry_of.name, registry.CHAMPION).version == first
    finally:
        other_host.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": registry.PROMOTION_LOCK_KEY})
        other_host.close()
    promoting.join(timeout=30)
    assert not promoting.is_alive() and registry.alias_version(registry_of.name, registry.CHAMPION).version == second


def test_registry_list_reads_in_an_80_column_terminal(registry_of, tmp_path, monkeypatch):
    """It once showed `0.516201487…` and `previous-ch…`."""
    from typer.testing import CliRunner

    from multitag.cli import app
    from multitag.lifecycle import registry

    first, second, _ = three_versions(registry_of)
    for version in (first, second):
        registry.client().set_model_version_tag(registry_of.name, version, "test_mAP", "0.503579234924")
        registry.promote(registry_of.name, version)
    (tmp_path / "params.yaml").write_text(f"registry:\n  model_name: {registry_of.name}\n")
    monkeypatch.setenv("COLUMNS", "80")
    listed = CliRunner().invoke(app, ["registry", "list", "--params", str(tmp_path / "params.yaml")])
    assert listed.exit_code == 0, listed.output
    assert "0.5036" in listed.output and "previous-champion" in listed.output and "…" not in listed.output, listed.output
