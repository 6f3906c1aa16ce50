"""The MLflow model registry: every candidate is a version; aliases (not stages) say which
version serves. `champion` serves, `previous-champion` is one step back, `challenger` is a
registered candidate that did not pass the gate."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from multitag.errors import UsageError

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"


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


def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    """Register `model_uri` as a new version of `name`, tagged; returns the version number."""
    client()  # the backend MLFLOW_TRACKING_URI names now, not the one MLflow was last pointed at
    version = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()}, await_registration_for=60)
    return str(version.version)


def alias_version(name: str, alias: str) -> VersionInfo | None:
    """The version an alias points to, or None (no such alias or model yet)."""
    try:
        version = client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return _info(version)


def list_versions(name: str) -> list[VersionInfo]:
    """All versions, newest first, with their aliases and tags.

    Searching versions does not return their aliases, so they come from the registered model.
    """
    mlflow_client = client()
    try:
        versions = mlflow_client.search_model_versions(f"name = '{name}'")
        aliases = mlflow_client.get_registered_model(name).aliases or {}
    except MlflowException:
        return []
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    infos = [
        VersionInfo(str(v.version), sorted(by_version.get(str(v.version), [])), dict(v.tags or {}), v.source, v.run_id) for v in versions
    ]
    return sorted(infos, key=lambda v: -int(v.version))


def _info(version) -> VersionInfo:
    return VersionInfo(str(version.version), list(version.aliases or []), dict(version.tags or {}), version.source, version.run_id)


@contextmanager
def _promotion_lock() -> Iterator[None]:
    """Serialise alias moves: two concurrent promotions cannot interleave their two steps.

    A file lock covers every process on this machine (the embedded default); with a remote
    registry shared by several machines, run promotions from one orchestrator.
    """
    lock_path = Path(os.environ.get("MULTITAG_REGISTRY_LOCK", ".multitag-registry.lock"))
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote(name: str, version: str) -> VersionInfo | None:
    """Make `version` the champion; the former champion becomes previous-champion.

    The champion alias is moved, never deleted, so there is always exactly one champion once
    there has been one. Returns the former champion (None if there was none).
    """
    mlflow_client = client()
    with _promotion_lock():
        former = alias_version(name, CHAMPION)
        if former is not None and former.version == str(version):
            return None
        if former is not None:
            mlflow_client.set_registered_model_alias(name, PREVIOUS, former.version)
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
        challenger = alias_version(name, CHALLENGER)
        if challenger is not None and challenger.version == str(version):
            mlflow_client.delete_registered_model_alias(name, CHALLENGER)
        return former


def mark_challenger(name: str, version: str) -> None:
    client().set_registered_model_alias(name, CHALLENGER, str(version))


def rollback(name: str) -> tuple[str, str]:
    """Move champion back to previous-champion in one step; returns (from_version, to_version).

    The rolled-back version is tagged `rolled_back=true` and previous-champion is cleared, so a
    second rollback asks for an explicit `promote VERSION` instead of flipping back and forth.
    """
    mlflow_client = client()
    with _promotion_lock():
        current, previous = alias_version(name, CHAMPION), alias_version(name, PREVIOUS)
        if previous is None or current is None:
            raise UsageError(f"model {name!r} has no previous-champion to roll back to; use `multitag registry promote VERSION`")
        mlflow_client.set_registered_model_alias(name, CHAMPION, previous.version)
        mlflow_client.delete_registered_model_alias(name, PREVIOUS)
        mlflow_client.set_model_version_tag(name, current.version, "rolled_back", "true")
        return current.version, previous.version
