"""dvc.yaml is the one stage table (issue 24): the Prefect tasks' cache keys read each stage's
deps, params and outs from it, so a setting or a file DVC re-runs a stage for re-runs the task
too, and one it ignores does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from multitag.params_file import set_params
from tasks.caching import DVC_FILE, dvc_stage
from tasks.pipeline import PREPROCESS, TRAIN, VALIDATE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "params.yaml"


@pytest.mark.parametrize(
    ("cache", "parameters", "theirs", "not_theirs"),
    [
        (VALIDATE, {}, ("validate.min_side", 16), ("data.synthetic", {"n_images": 10, "image_size": 48, "seed": 1})),
        (PREPROCESS, {}, ("data.path", "data/raw/elsewhere"), ("gate.min_improvement", 0.01)),
        (TRAIN, {"architecture": "small_cnn", "quick": False}, ("train.seed", 7), ("preprocess.seed", 7)),
    ],
)
def test_a_task_s_key_follows_the_params_dvc_yaml_gives_its_stage(workspace, cache, parameters, theirs, not_theirs):
    parameters = {"params_path": str(workspace), **parameters}
    before = cache.inputs_key(parameters)
    set_params(workspace, dict([not_theirs]))
    assert cache.inputs_key(parameters) == before, f"{not_theirs[0]} is no param of {cache.name} in dvc.yaml"
    set_params(workspace, dict([theirs]))
    assert cache.inputs_key(parameters) != before, f"{theirs[0]} is a param of {cache.name} in dvc.yaml"


def test_a_task_s_key_follows_the_code_dvc_yaml_names_for_its_stage(workspace):
    """Every code dep of the stage is read for the key: the stage functions and the settings' recipes too."""
    deps = dvc_stage("preprocess", {"data": {"path": "x"}}).deps
    assert {"multitag/data", "multitag/stages/preprocess.py", "multitag/config.py", "multitag/recipes.py"} <= set(deps)
    assert "multitag/feedback" in dvc_stage("validate", {"data": {"path": "x"}}).deps, "validate reads the feedback export"
    (workspace.parent / "multitag").mkdir()
    before = PREPROCESS.inputs_key({"params_path": str(workspace)})
    (workspace.parent / "multitag" / "recipes.py").write_text("# another recipe\n")
    assert PREPROCESS.inputs_key({"params_path": str(workspace)}) != before


def test_every_path_dvc_yaml_names_exists():
    """A moved module would leave a dep DVC refuses (and a key that no longer covers the code)."""
    stages = yaml.safe_load(DVC_FILE.read_text())["stages"]
    code = {dep for spec in stages.values() for dep in spec.get("do", spec).get("deps", []) if dep.startswith("multitag/")}
    missing = sorted(dep for dep in code if not (REPO / dep).exists())
    assert code and not missing, missing


def test_each_stage_names_its_own_module_and_that_module_holds_the_stage():
    """From dvc.yaml one hop to a stage's code: multitag/stages/<stage>.py, defining `<stage>_stage`."""
    import importlib

    stages = yaml.safe_load(DVC_FILE.read_text())["stages"]
    for name, spec in stages.items():
        assert f"multitag/stages/{name}.py" in spec.get("do", spec)["deps"], name
        assert callable(getattr(importlib.import_module(f"multitag.stages.{name}"), f"{name}_stage")), name


def test_the_records_the_last_stages_hand_on_are_where_dvc_yaml_says():
    """Layout is the code's one home for the records' names; dvc.yaml declares them as outs of
    the stage that writes them and deps of the stages that read them."""
    from multitag.layout import Layout

    layout = Layout(Path("."))
    stage = lambda name: dvc_stage(name, yaml.safe_load((REPO / "params.yaml").read_text()))  # noqa: E731
    written = {"evaluate": [layout.candidates, layout.comparison], "gate": [layout.gate_record, layout.gate_report]}
    written["register"] = [layout.registration]
    for name, records in written.items():
        assert sorted(stage(name).outs) == sorted(str(record) for record in records), name
    assert str(layout.candidates) in stage("gate").deps and str(layout.candidates) in stage("register").deps
    assert str(layout.gate_record) in stage("register").deps
