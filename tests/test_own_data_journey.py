"""The user's journey on a fresh project: `make demo` (the shapes), then `multitag pipeline` on
their own dataset with nothing edited by hand. Their data gets its own frozen test split with no
demo image in it, and its own registered model and champion; the demo's champion stays where it
was and is never what serves their task."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from project import make_project, project_env, run

from multitag.data.splits import read_frozen_test

pytestmark = pytest.mark.slow

OWN_CLASSES = ["circle", "ring", "star"]


def pipeline(root, *arguments: str, prefect_api: str | None = None) -> str:
    """`multitag pipeline ...` in the project, as a user types it; returns what it printed. Without
    `prefect_api` the run starts its own temporary Prefect server, as it does for a user."""
    env = {**project_env(root), **({"PREFECT_API_URL": prefect_api} if prefect_api else {})}
    result = run([sys.executable, "-m", "multitag.cli", "pipeline", *arguments], root, env)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def journey(tmp_path_factory, prefect_api):
    from multitag.data.sources import synthetic

    base = tmp_path_factory.mktemp("journey")
    root = make_project(base / "project")
    demo_output = pipeline(root, "--source", "synthetic")  # `make demo`, with Prefect in-process
    own = synthetic.generate(base / "holiday-photos", 140, 48, seed=11)  # other images, a CSV folder
    own_arguments = ("--source", "csv", "--path", str(own), "--classes", ",".join(OWN_CLASSES), "--arch", "small_cnn")
    own_output = pipeline(root, *own_arguments, prefect_api=prefect_api)
    return root, own, demo_output, own_output


def test_the_demo_ends_by_saying_what_is_served(journey):
    _, _, demo_output, _ = journey
    assert "Served now: models:/multitag@champion" in demo_output


def test_own_data_is_recorded_in_params_and_gets_its_own_registered_model(journey):
    from multitag.config import load_params
    from multitag.lifecycle import registry

    root, own, _, own_output = journey
    recorded = yaml.safe_load((root / "params.yaml").read_text())
    assert recorded["data"]["source"] == "csv" and recorded["data"]["path"] == str(own)
    assert recorded["data"]["classes"] == OWN_CLASSES and recorded["train"]["architectures"] == ["small_cnn"]
    params = load_params(root / "params.yaml")
    name = params.registry.model_name
    assert name == "holiday-photos-circle-ring-star"
    assert f"Served now: models:/{name}@champion" in own_output
    with pytest.MonkeyPatch.context() as patch:
        for key, value in project_env(root).items():
            patch.setenv(key, value)
        own_champion = registry.alias_version(name, registry.CHAMPION)
        demo_champion = registry.alias_version("multitag", registry.CHAMPION)
        assert own_champion is not None and demo_champion is not None
        assert json.loads((root / "reports" / "gate.json").read_text())["verdict"]["task"] == "first model"
        assert [v.version for v in registry.list_versions("multitag")] == [demo_champion.version], "the demo model was not touched"
        from multitag.lifecycle.predictor import Predictor

        assert Predictor.from_uri(f"models:/{name}@champion").classes == OWN_CLASSES


def test_own_data_has_its_own_nonempty_test_split_without_demo_images(journey):
    import pandas as pd

    root, own, _, _ = journey
    frozen = root / "data" / "frozen_test.json"
    demo_test = read_frozen_test(frozen, "synthetic:data/raw/synthetic")
    own_test = read_frozen_test(frozen, f"csv:{own}")
    assert demo_test and own_test and not demo_test & own_test
    processed = pd.read_parquet(root / "data" / "processed" / "manifest.parquet")
    test_rows = processed[processed["split"] == "test"]
    assert len(test_rows) == len(own_test) > 0
    assert all(str(path).startswith(str(own)) for path in processed["path"]), "a demo image is in the own data's splits"
    summary = json.loads((root / "data" / "processed" / "summary.json").read_text())
    assert min(summary["splits"].values()) > 0 and summary["classes"] == OWN_CLASSES


def test_dvc_agrees_with_the_pipeline_run(journey):
    root, _, _, _ = journey
    status = run([sys.executable, "-m", "dvc", "status", "--json"], root, project_env(root))
    assert json.loads(status.stdout) == {}
