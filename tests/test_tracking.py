"""MLflow backend selection: every registry call lands in the database MLFLOW_TRACKING_URI names
at the time of the call, even after the process has pointed MLflow at another one."""

from __future__ import annotations

from pathlib import Path

import pytest
from project import stored_aliases


def test_registry_follows_the_tracking_uri_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from multitag.lifecycle import registry, tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{first}")
    tracking.configure()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{second}")
    model_dir = tmp_path / "model"
    model_dir.mkdir()

    registry.promote("moved", registry.register(model_dir.as_uri(), "moved", {"architecture": "none"}))

    assert stored_aliases(second, "moved") == {registry.CHAMPION: "1"}
    assert stored_aliases(first, "moved") == {}
