"""params.yaml's `auto` values take the recipe of the data's kind; what the user writes wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from multitag.config import Params, ParamsError, load_params
from multitag.recipes import PHOTOS, RECIPES, SHAPES


def test_auto_takes_the_photo_recipe_for_photos_and_the_shapes_recipe_for_the_demo():
    photos = Params.model_validate({"data": {"source": "voc", "path": "../shared/datasets/voc-real"}})
    shapes = Params()
    assert photos.preprocess.image_size == RECIPES[PHOTOS]["preprocess.image_size"] != shapes.preprocess.image_size
    assert shapes.preprocess.image_size == RECIPES[SHAPES]["preprocess.image_size"]
    assert photos.train.flip_average is True and shapes.train.flip_average is False
    assert photos.train.class_weighting == RECIPES[PHOTOS]["train.class_weighting"]


def test_a_value_the_user_sets_wins_over_the_recipe():
    params = Params.model_validate(
        {"data": {"source": "coco", "path": "x"}, "preprocess": {"image_size": 160}, "train": {"dense_units": [64]}}
    )
    assert params.preprocess.image_size == 160 and params.train.dense_units == [64]


def test_each_task_gets_its_own_registered_model_name():
    assert Params().registry.model_name == "multitag"
    voc = {"source": "voc", "path": "../shared/datasets/voc-real/"}
    assert Params.model_validate({"data": voc}).registry.model_name == "voc-real"
    assert Params.model_validate({"data": {**voc, "classes": ["cat", "dog"]}}).registry.model_name == "voc-real-cat-dog"
    assert Params.model_validate({"data": voc, "registry": {"model_name": "mine"}}).registry.model_name == "mine"


def test_the_project_params_file_loads_and_a_bad_size_is_refused(tmp_path):
    load_params("params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("preprocess:\n  image_size: 4\n")
    with pytest.raises(ParamsError, match="image_size"):
        load_params(bad)


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """Dotted key -> value of every leaf of a nested dict."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_params_yaml_writes_out_exactly_the_defaults_of_config():
    """config.py is the one home of each default; params.yaml spells every one out (DVC tracks
    params by file) and may not drift from it (it did: small_cnn_epochs 30 against 25)."""
    import yaml

    defaults = _leaves(Params().model_dump(mode="json", by_alias=True))
    written = _leaves(load_params("params.yaml").model_dump(mode="json", by_alias=True))
    stated = _leaves(yaml.safe_load(Path("params.yaml").read_text()))
    assert {k: (defaults[k], written[k]) for k in defaults if defaults[k] != written[k]} == {}
    assert sorted(k for k in defaults if not any(k == s or k.startswith(s + ".") for s in stated)) == []


def test_the_demo_s_dataset_choice_leaves_the_shipped_params_file_as_it_is(tmp_path):
    """`make demo` once rewrote params.yaml with every value it set quoted: a diff with no change in it."""
    import shutil

    from multitag.cli import dataset_choice
    from multitag.params_file import set_params

    shipped = Path(__file__).resolve().parents[1] / "params.yaml"
    params = shutil.copy(shipped, tmp_path / "params.yaml")
    choice = dataset_choice(load_params(params), "synthetic", None, None, None, [])
    assert set_params(params, choice) is False and params.read_text() == shipped.read_text()


def test_a_changed_value_is_written_as_a_person_would_and_keeps_its_comment(tmp_path):
    from multitag.params_file import set_params

    params = tmp_path / "params.yaml"
    params.write_text(
        "data:\n  source: synthetic   # the format\n  path: data/raw/synthetic\ntrain:\n  architectures: [small_cnn]  # list\n"
    )
    assert set_params(params, {"data.source": "voc", "data.path": "/data/voc 2012", "train.architectures": ["mobilenetv2", "resnet50"]})
    assert params.read_text() == (
        "data:\n  source: voc   # the format\n  path: /data/voc 2012\ntrain:\n  architectures: [mobilenetv2, resnet50]  # list\n"
    )
    assert set_params(params, {"data.path": "null"}) and "  path: 'null'\n" in params.read_text(), "the string, not YAML's null"
