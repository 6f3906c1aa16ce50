"""params.yaml's `auto` values take the recipe of the data's kind; what the user writes wins."""

from __future__ import annotations

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
