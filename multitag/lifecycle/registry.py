"""The MLflow model registry: every candidate is a version; aliases (not stages) say which
version serves. `champion` serves, `previous-champion` is one step back, `challenger` is a
registered candidate that did not pass the gate.

Fails closed: only a "not found" that MLflow confirms means "no such model or alias"; any other
registry failure raises RegistryUnavailableError, so nothing is judged or promoted on a guess.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from multitag.config import QUEUE_URL_ENV
from multitag.errors import RegistryUnavailableError, StaleVerdictError, UsageError

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"
# What MLflow 3.17 raises for a model never registered (RESOURCE_DOES_NOT_EXIST) and for an alias
# never set (INVALID_PARAMETER_VALUE); an alias naming a deleted version also gives
# RESOURCE_DOES_NOT_EXIST, so a "not found" counts only once the model's own alias list confirms it.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
PROMOTION_TAG = "multitag.promotion"  # the journal of a promotion in progress: {"former": ..., "to": ...}
PROMOTION_LOCK_KEY = 0x6D756C7469746167  # "multitag": the PostgreSQL advisory lock every host's promotion takes
ANY_CHAMPION = "any"  # `promote` without a compare-and-set (a person's explicit `registry promote`)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: list[str]
    tags: dict[str, str]
    source: str
    run_id: str | None


def client() -> MlflowClient:
    from multitag.lifecycle.tracking import configure

    configure()
    return MlflowClient()


@contextmanager
def _failing_closed(action: str) -> Iterator[None]:
    """Any registry failure inside becomes RegistryUnavailableError naming what failed and what to do."""
    try:
        yield
    except (MlflowException, SQLAlchemyError) as err:
        detail = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise RegistryUnavailableError(
            f"the model registry at {mlflow.get_tracking_uri()} failed to {action}: {detail}. Nothing was decided on a guess; "
            "check that the registry is reachable and healthy (MLFLOW_TRACKING_URI), then run the same command again "
            "(registration and promotion are safe to repeat)"
        ) from err


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name`, tagged; returns the version number."""
    with _failing_closed(f"register {model_uri} as {name}"):
        client()  # the backend MLFLOW_TRACKING_URI names now, not the one MLflow was last pointed at
        version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}, await_registration_for=60)
    return str(version.version)


def register_run(model_uri: str, name: str, run_id: str, tags: dict[str, str]) -> str:
    """`register`, once per source run: a run already registered under `name` keeps its version
    (tags brought up to date), so a retried or repeated `register` stage never duplicates one."""
    with _failing_closed(f"look up the version of run {run_id} in {name}"):
        mlflow_client = client()
        registered = mlflow_client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not registered:
            return register(model_uri, name, tags)
        version = str(min(int(v.version) for v in registered))
        for key, value in tags.items():
            mlflow_client.set_model_version_tag(name, version, key, str(value))
    return version


def run_uri(info: VersionInfo) -> str:
    """The `runs:/` URI of a version's logged model: where files are added to it (tracking.log_model_files),
    which every version made from it then carries. Its path under the run is the end of its source."""
    path = info.source.rsplit("/artifacts/", 1)[1] if "/artifacts/" in info.source else "model"
    return f"runs:/{info.run_id}/{path}"


def alias_version(name: str, alias: str) -> VersionInfo | None:
    """The version an alias points to, or None when the model or the alias does not exist yet.

    Anything else (an unreachable server, a locked or corrupt database, an alias naming a missing
    version) raises RegistryUnavailableError: "could not tell" must never read as "no champion",
    or the gate would judge a candidate against nothing and promote it.
    """
    with _failing_closed(f"read {name}@{alias}"):
        mlflow_client = client()
        try:
            return _info(mlflow_client.get_model_version_by_alias(name, alias))
        except MlflowException as err:
            if err.error_code not in NOT_FOUND:
                raise
            target = _aliases(mlflow_client, name).get(alias)
            if target is None:
                return None
            return _info(mlflow_client.get_model_version(name, target))  # set meanwhile, or dangling: raises


def _aliases(mlflow_client: MlflowClient, name: str) -> dict[str, str]:
    """Alias -> version of a registered model; {} only when MLflow says the model does not exist."""
    try:
        return {alias: str(version) for alias, version in (mlflow_client.get_registered_model(name).aliases or {}).items()}
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def list_versions(name: str) -> list[VersionInfo]:
    """All versions, newest first, with their aliases and tags ([] only for a model not registered).

    Searching versions does not return their aliases, so they come from the registered model.
    """
    with _failing_closed(f"list the versions of {name}"):
        mlflow_client = client()
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        aliases = _aliases(mlflow_client, name)
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    infos = [
        VersionInfo(str(v.version), sorted(by_version.get(str(v.version), [])), dict(v.tags or {}), v.source, v.run_id) for v in versions
    ]
    return sorted(infos, key=lambda v: -int(v.version))


def _info(version) -> VersionInfo:
    return VersionInfo(str(version.version), list(version.aliases or []), dict(version.tags or {}), version.source, version.run_id)


@contextmanager
def _promotion_lock() -> Iterator[None]:
    """Serialise alias moves: two concurrent promotions cannot interleave their steps.

    With the queue on PostgreSQL ($MULTITAG_FEEDBACK_DB_URL, as every host of a scaled-out set-up
    has it) a PostgreSQL advisory lock on that database covers every host, and dies with its
    holder; otherwise a file lock covers every process on this machine (the embedded default).
    """
    url = os.environ.get(QUEUE_URL_ENV, "")
    if url.startswith("postgresql"):
        with _advisory_lock(url):
            yield
        return
    lock_path = Path(os.environ.get("MULTITAG_REGISTRY_LOCK", ".multitag-registry.lock"))
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock PROMOTION_LOCK_KEY, held on one connection while inside."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PROMOTION_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PROMOTION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def promote(name: str, version: str, expected_champion: str | None = ANY_CHAMPION) -> VersionInfo | None:
    """Make `version` the champion; the former champion becomes previous-champion.

    The champion alias is moved, never deleted, so there is always exactly one champion once
    there has been one. The former champion is read under the lock and a failed read stops the
    promotion, so previous-champion is never skipped. With `expected_champion` (the version the
    gate judged against, None for none) it is a compare-and-set: if the champion has moved since,
    StaleVerdictError and no alias moves. Promoting the champion again changes nothing, so a
    retry is safe. Returns the former champion (None if there was none or nothing changed).

    The two alias moves are journalled (a model tag written before, deleted after): a promotion
    killed between them left previous-champion equal to champion, and the rollback target lost;
    the next promotion or rollback now finishes it first (`_finish_interrupted`).
    """
    version = str(version)
    with _promotion_lock(), _failing_closed(f"promote version {version} of {name}"):
        mlflow_client = client()
        _finish_interrupted(mlflow_client, name)
        former = alias_version(name, CHAMPION)
        if former is not None and former.version == version:
            return None
        if expected_champion != ANY_CHAMPION and (former.version if former else None) != expected_champion:
            raise StaleVerdictError(
                f"the gate judged version {version} of {name} against champion {expected_champion or '(none)'}, but the champion is "
                f"now {former.version if former else '(none)'}: another run promoted meanwhile, so no alias was moved. "
                "Run `multitag gate` and `multitag register` again to judge it against the current champion"
            )
        mlflow_client.set_registered_model_tag(
            name, PROMOTION_TAG, json.dumps({"former": former.version if former else None, "to": version})
        )
        _move_aliases(mlflow_client, name, former.version if former else None, version)
        return former


def _move_aliases(mlflow_client: MlflowClient, name: str, former: str | None, version: str) -> None:
    """The journalled steps of a promotion, safe to repeat: previous-champion, champion, challenger, journal."""
    if former is not None:
        mlflow_client.set_registered_model_alias(name, PREVIOUS, former)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    challenger = alias_version(name, CHALLENGER)
    if challenger is not None and challenger.version == version:
        mlflow_client.delete_registered_model_alias(name, CHALLENGER)
    mlflow_client.delete_registered_model_tag(name, PROMOTION_TAG)


def _finish_interrupted(mlflow_client: MlflowClient, name: str) -> None:
    """Complete a promotion that was killed between its alias moves (its journal tag is still there)."""
    try:
        journal = mlflow_client.get_registered_model(name).tags.get(PROMOTION_TAG)
    except MlflowException as err:
        if err.error_code in NOT_FOUND:
            return  # no model yet: nothing was ever promoted
        raise
    if journal:
        step = json.loads(journal)
        _move_aliases(mlflow_client, name, step["former"], step["to"])


def describe(name: str, version: str, description: str) -> None:
    """Set a version's description (its model card, markdown; the MLflow UI shows it)."""
    with _failing_closed(f"describe {name} version {version}"):
        client().update_model_version(name, str(version), description=description)


def mark_challenger(name: str, version: str) -> None:
    with _failing_closed(f"mark version {version} of {name} as challenger"):
        client().set_registered_model_alias(name, CHALLENGER, str(version))


def rollback(name: str) -> tuple[str, str]:
    """Move champion back to previous-champion in one step; returns (from_version, to_version).

    The rolled-back version is tagged `rolled_back=true` and previous-champion is cleared, so a
    second rollback asks for an explicit `promote VERSION` instead of flipping back and forth.
    """
    with _promotion_lock(), _failing_closed(f"roll back {name}"):
        mlflow_client = client()
        _finish_interrupted(mlflow_client, name)
        current, previous = alias_version(name, CHAMPION), alias_version(name, PREVIOUS)
        if previous is None or current is None:
            raise UsageError(f"model {name!r} has no previous-champion to roll back to; use `multitag registry promote VERSION`")
        mlflow_client.set_registered_model_alias(name, CHAMPION, previous.version)
        mlflow_client.delete_registered_model_alias(name, PREVIOUS)
        mlflow_client.set_model_version_tag(name, current.version, "rolled_back", "true")
        return current.version, previous.version
