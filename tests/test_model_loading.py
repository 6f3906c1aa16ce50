"""A champion that fails to load (issue 22): the server keeps serving the old one, says why on
/health, and does not download the broken version again on every poll (it once filled the disk
with a new temporary copy every 10 s): it backs off, tries at once when the alias moves or an
admin asks, and forgets the failure when the alias moves on."""

from __future__ import annotations

from pathlib import Path

from multitag.lifecycle import registry, tracking
from multitag.serving.watcher import ChampionWatcher


def register_unloadable(name: str, folder: Path) -> str:
    """A version whose artefact folder holds no model at all (no MLmodel, no multitag metadata)."""
    folder.mkdir()
    (folder / "readme.txt").write_text("not a model")
    return registry.register(folder.as_uri(), name, {"architecture": "small_cnn"})


def test_a_version_that_fails_to_load_is_downloaded_again_only_after_a_back_off(registry_env, fresh_model_name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    downloads: list[str] = []
    download = tracking.download_model
    monkeypatch.setattr(tracking, "download_model", lambda uri: downloads.append(uri) or download(uri))
    good = registry.register(registry_env.model_uri, fresh_model_name, {"architecture": "small_cnn"})
    registry.promote(fresh_model_name, good)
    watcher = ChampionWatcher(fresh_model_name, interval_s=60)
    assert watcher.refresh_logged() and watcher.current.version.version == good

    broken = register_unloadable(fresh_model_name, tmp_path / "broken")
    registry.promote(fresh_model_name, broken)
    for _ in range(5):  # five polls
        assert not watcher.refresh_logged()
    assert downloads.count(f"models:/{fresh_model_name}/{broken}") == 1, "one try, then the back-off"
    assert watcher.current.version.version == good, "the old champion keeps serving"
    assert watcher.last_error, "/health says why"

    assert not watcher.refresh_logged(force=True)  # /admin/reload
    assert downloads.count(f"models:/{fresh_model_name}/{broken}") == 2
    assert watcher.last_error, "still failing: the error stays on /health"

    registry.promote(fresh_model_name, good)  # a rollback to the version served
    assert not watcher.refresh_logged()
    assert watcher.last_error is None, "the alias moved on: the failure is forgotten"


def test_retraining_keeps_one_downloaded_champion_per_version_and_only_the_current_one(
    registry_env, fresh_model_name, monkeypatch, tmp_path
):
    """Each nightly once downloaded the champion into a new .multitag/champion/<run> and never
    deleted it: now runs share the version's copy and older versions' copies go."""
    import mlflow.artifacts

    from multitag.feedback.retraining import download_champion

    downloads: list[str] = []
    download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: downloads.append(kw["artifact_uri"]) or download(**kw))
    cache = tmp_path / "champion"
    for _ in range(2):
        version = registry.register(registry_env.model_uri, fresh_model_name, {"architecture": "small_cnn"})
        registry.promote(fresh_model_name, version)
        for _ in range(2):  # two runs warm-start from this version
            keras_file, served, architecture = download_champion(fresh_model_name, cache)
            assert keras_file.exists() and served == version and architecture == "small_cnn"
        assert sorted(p.name for p in cache.iterdir()) == [f"v{version}"]
    assert len(downloads) == 2, "one download per version"


def test_models_from_a_remote_store_are_downloaded_once_per_uri_and_the_cache_is_bounded(mlflow_server, monkeypatch, tmp_path):
    """From a tracking server's artefact store every load once left a new temporary copy, never
    deleted: now one folder per model URI, reused, and at most MODEL_CACHE_KEEP of them."""
    import mlflow
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.chdir(tmp_path)
    tracking.configure()
    uris = []
    for n in range(tracking.MODEL_CACHE_KEEP + 2):
        with mlflow.start_run(run_name=f"model-{n}") as run:
            mlflow.log_text(f"flavors: {{}}\nrun: {n}\n", "model/MLmodel")
        uris.append(f"runs:/{run.info.run_id}/model")
    downloads: list[str] = []
    download = mlflow.artifacts.download_artifacts
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", lambda **kw: downloads.append(kw["artifact_uri"]) or download(**kw))
    cache = tmp_path / "cache"

    first = tracking.download_model(uris[0], cache)
    assert (first / "MLmodel").read_text().endswith("run: 0\n") and tracking.download_model(uris[0], cache) == first
    assert downloads == [uris[0]], "the second load reuses the copy"
    for uri in uris[1:]:
        tracking.download_model(uri, cache)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == tracking.MODEL_CACHE_KEEP, "the least recently used go"
