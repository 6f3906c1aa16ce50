"""Guards that keep a run from training or scoring on the wrong thing (issue 11): the Prefect
cache trusts a stage's result only while its outputs are what it made, a lost frozen test split
is never re-drawn silently, and one pipeline run at a time holds a workspace."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks import pipeline as t

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty project folder with the repository's params.yaml, as the working directory."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "processed").mkdir(parents=True)
    (tmp_path / "data" / "processed" / "train_x.npy").write_bytes(b"arrays")
    return tmp_path


def train_key(architecture: str = "small_cnn") -> str | None:
    """What Prefect asks the train task for before it decides between the cache and a run."""
    context = SimpleNamespace(task=SimpleNamespace(name="train"))
    return t.train.cache_key_fn(context, {"architecture": architecture, "params_path": "params.yaml", "init_model": None})


def write_model(workspace: Path, content: bytes) -> None:
    folder = workspace / "models" / "small_cnn"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(content)


def test_train_cache_is_trusted_only_while_the_model_folder_is_what_that_run_made(workspace):
    first = train_key()
    assert first is not None, "a first run may be cached"
    write_model(workspace, b"model A")
    t.TRAIN.record({"architecture": "small_cnn", "params_path": "params.yaml", "init_model": None})
    assert train_key() == first, "the same inputs and the model it made: a cache hit is fine"

    shutil.rmtree(workspace / "models" / "small_cnn")
    assert train_key() != first, "a deleted model folder must not hit the cache (it would return no model)"
    write_model(workspace, b"model B, written by `multitag train` or dvc repro")
    assert train_key() != first, "an overwritten model folder must not hit the cache (it would return the wrong model)"
    write_model(workspace, b"model A")
    assert train_key() == first, "the recorded model back in place: the hit is allowed again"


def test_train_cache_key_follows_the_data_and_the_architecture(workspace):
    first = train_key()
    assert train_key("mobilenetv2") not in (None, first)
    (workspace / "data" / "processed" / "train_x.npy").write_bytes(b"other arrays")
    assert train_key() != first
