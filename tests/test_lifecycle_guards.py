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
    assert train_key() is None, "nothing recorded in this workspace: no cache hit (Prefect's store is machine-wide)"
    write_model(workspace, b"model A")
    t.TRAIN.record({"architecture": "small_cnn", "params_path": "params.yaml", "init_model": None})
    first = train_key()
    assert first is not None, "the same inputs and the model that run made: a cache hit is fine"

    shutil.rmtree(workspace / "models" / "small_cnn")
    assert train_key() != first, "a deleted model folder must not hit the cache (it would return no model)"
    write_model(workspace, b"model B, written by `multitag train` or dvc repro")
    assert train_key() != first, "an overwritten model folder must not hit the cache (it would return the wrong model)"
    write_model(workspace, b"model A")
    assert train_key() == first, "the recorded model back in place: the hit is allowed again"


def test_train_cache_key_follows_the_data_and_the_architecture(workspace):
    write_model(workspace, b"model A")
    t.TRAIN.record({"architecture": "small_cnn", "params_path": "params.yaml", "init_model": None})
    first = train_key()
    assert first is not None and train_key("mobilenetv2") is None, "nothing recorded for that architecture"
    (workspace / "data" / "processed" / "train_x.npy").write_bytes(b"other arrays")
    assert train_key() is None, "new data: the recorded run does not apply"


def test_validate_never_reuses_a_result_whose_outputs_another_dataset_overwrote(workspace):
    """Seen on a user's journey (shapes demo, then VOC): Prefect's cached `validate` of VOC was
    reused while data/validated held the shapes, and VOC's model trained on shapes."""
    validated = workspace / "data" / "validated"
    validated.mkdir(parents=True)
    (validated / "manifest.parquet").write_bytes(b"VOC rows")
    t.VALIDATE.record({"params_path": "params.yaml"})
    context = SimpleNamespace(task=SimpleNamespace(name="validate"))
    voc_key = t.validate.cache_key_fn(context, {"params_path": "params.yaml"})
    assert voc_key is not None
    (validated / "manifest.parquet").write_bytes(b"shapes rows, written by the demo's validate")
    assert t.validate.cache_key_fn(context, {"params_path": "params.yaml"}) is None


def test_validate_never_reuses_a_result_while_a_killed_retraining_owns_the_export(workspace):
    """A nightly killed in training leaves its export (items it never consumed). Its validate had
    recorded a result for exactly that export, so the next pipeline run hit the cache and never ran
    the stage that takes such an export out again: the model trained on unconsumed feedback."""
    from multitag.feedback.retraining import OWNER_FILE, owning_export

    export = workspace / "data" / "feedback" / "export"
    export.mkdir(parents=True)
    (export / "labels.csv").write_text("filename,labels\nfb1.png,cat\n")
    (export / OWNER_FILE).write_text('{"run": "killed-run"}')
    (workspace / "data" / "validated").mkdir(parents=True)
    (workspace / "data" / "validated" / "manifest.parquet").write_bytes(b"rows with the killed run's feedback")
    context = SimpleNamespace(task=SimpleNamespace(name="validate"))
    with owning_export("killed-run"):  # the run itself, before it was killed
        t.VALIDATE.record({"params_path": "params.yaml"})
        assert t.validate.cache_key_fn(context, {"params_path": "params.yaml"}) is not None, "its own export is its data"
    assert t.validate.cache_key_fn(context, {"params_path": "params.yaml"}) is None, "another run: the stage must run"


def test_no_run_slips_in_between_the_stages_of_a_dvc_repro(workspace, monkeypatch):
    """`dvc repro` runs one stage command at a time, each holding the workspace lock only while
    it runs; DVC itself holds its repository lock (zc.lockfile on .dvc/tmp/lock) throughout. A
    nightly started in between is refused; the stage commands DVC starts (DVC_STAGE set) are not."""
    import zc.lockfile

    from multitag.workspace import WorkspaceBusy, exclusive_run

    (workspace / ".dvc" / "tmp").mkdir(parents=True)
    dvc_lock = zc.lockfile.LockFile(str(workspace / ".dvc" / "tmp" / "lock"))  # what `dvc repro` holds
    try:
        with pytest.raises(WorkspaceBusy, match="dvc repro"), exclusive_run("full retraining flow"):
            pass
        monkeypatch.setenv("DVC_STAGE", "preprocess")
        with exclusive_run("multitag data preprocess"):
            pass
        monkeypatch.delenv("DVC_STAGE")
    finally:
        dvc_lock.close()
    with exclusive_run("full retraining flow"):  # DVC done: free again
        pass


def test_two_runs_started_together_one_holds_the_workspace_the_other_is_told_who(tmp_path):
    """Two real `multitag data validate` processes on one workspace: one runs, the other is
    refused at once with a message naming the running one (its pid), and loses nothing."""
    import os
    import subprocess
    import sys

    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["synthetic"] = {"n_images": 120, "image_size": 48, "seed": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MULTITAG_WORKSPACE_RUN", None)
    command = [sys.executable, "-m", "multitag.cli"]
    subprocess.run([*command, "data", "synthesize"], cwd=tmp_path, env=env, check=True, capture_output=True)

    runs = [subprocess.Popen([*command, "data", "validate"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [(run.pid, run.wait(timeout=300), run.stderr.read()) for run in runs]
    succeeded = [pid for pid, code, _ in outcomes if code == 0]
    refused = [" ".join(err.split()) for _, code, err in outcomes if code == 1]
    assert len(succeeded) == 1 and len(refused) == 1, outcomes
    assert "WorkspaceBusy" in refused[0] and f"multitag data validate, pid {succeeded[0]}" in refused[0]
    assert (tmp_path / "data" / "validated" / "manifest.parquet").exists()
    assert not (tmp_path / ".multitag" / "workspace.lock").read_text(), "the holder cleared its name when it finished"
