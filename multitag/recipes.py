"""Defaults that depend on the kind of data: real photos or the synthetic shapes.

A value written `auto` in params.yaml takes the recipe of `data.source`'s kind; any other value
is the user's and wins. This module is the one home of both recipes, so `params.yaml`, the
README and the code cannot disagree about what "the photo defaults" are.

The photo recipe was chosen on validation photos of ../shared/datasets/voc-real (bench/README.md,
"Transfer learning"); the shapes recipe keeps the demo small and fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multitag.config import Params

PHOTOS, SHAPES = "photos", "shapes"

RECIPES: dict[str, dict[str, Any]] = {
    PHOTOS: {
        "preprocess.image_size": 224,
        "train.architectures": ["mobilenetv2"],
        "train.fine_tune_epochs": 3,
        "train.fine_tune_learning_rate": 1e-4,
        "train.fine_tune_layers": 40,
        "train.dense_units": [],
        "train.class_weighting": "none",
        "train.flip_average": True,
        "train.probe_ensemble": True,
        "train.probe_input_size": 384,
        "train.network_weight": 0.3,
    },
    SHAPES: {
        "preprocess.image_size": 64,
        "train.architectures": ["small_cnn", "mobilenetv2"],
        "train.fine_tune_epochs": 8,
        "train.fine_tune_learning_rate": 3e-4,
        "train.fine_tune_layers": 20,
        "train.dense_units": [128],
        "train.class_weighting": "positive_weights",
        "train.flip_average": False,
        "train.probe_ensemble": False,
        "train.probe_input_size": 64,
        "train.network_weight": 0.5,
    },
}


def kind_of(source: str) -> str:
    """Every source but the generator holds photos (VOC, COCO, YOLO, a folder of your own)."""
    return SHAPES if source == "synthetic" else PHOTOS


def resolve(params: Params) -> None:
    """Set each `auto` field of `params` to its recipe value, in place."""
    for dotted, value in RECIPES[kind_of(params.data.source)].items():
        group_name, key = dotted.split(".")
        group = getattr(params, group_name)
        if getattr(group, key) == "auto":
            setattr(group, key, value)
